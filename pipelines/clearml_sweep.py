"""`make enqueue-sweep`: one pipeline per model x dataset on ClearML, then a summary task.

    make enqueue-sweep QUEUE=gpu MODELS=smollm2_360m,qwen3_0.6b DATASETS=nq_open \\
        ARGS="storage.endpoint=http://minio:9000"

How many pipelines run at once is up to the agents listening on the queues, not this
package: one GPU agent runs them one by one, forty run them forty at a time. A combination
whose last completed pipeline recorded the same config fingerprint and dataset sha256 (read
from its results.json in S3) is reused unless ``force=true``. The summary pipeline's one CPU
step waits for every pipeline, then shows the leaderboard (table, plot, files) and links
each run.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from components.storage import StorageSettings
from pipelines.config import ConfigError, require_storage
from pipelines.sweep import Combination, normalize_overrides, plan, split_names, sweep_name

FINAL = ("completed", "failed", "stopped", "closed", "published")


def fetch_run_files(
    settings: StorageSettings,
    experiment: str,
    run_id: str,
    dest: Path,
    names: tuple[str, ...] = ("results.json", "predictions.json"),
) -> list[Any]:
    """A finished pipeline's artifacts (JSON), sha256-checked, in the order named."""
    from components.storage import client, fetch_object

    s3 = client(settings)
    loaded = []
    for name in names:
        key = settings.artifact_key(experiment, run_id, name)
        path = fetch_object(s3, settings.bucket, key, dest / f"{experiment}.{run_id}" / name)
        loaded.append(json.loads(path.read_text(encoding="utf-8")))
    return loaded


def reusable_run(combo: Combination, settings: StorageSettings) -> dict[str, Any] | None:
    """The newest completed pipeline of this experiment whose results match the config
    fingerprint and the dataset's content (when the dataset file is readable here)."""
    from clearml import Task

    from components.artifacts import sha256_file
    from components.results import config_fingerprint

    path = Path(str(combo.cfg["dataset"]["path"]))
    if not path.is_file():
        return None
    digest, fingerprint = sha256_file(path), config_fingerprint(combo.cfg)
    experiment = str(combo.cfg["experiment"]["name"])
    tasks = Task.get_tasks(
        project_name=str(combo.cfg["clearml"]["project"]),
        task_name=f"^{re.escape(experiment)}$",
        task_filter={"status": ["completed"], "type": ["controller"], "order_by": ["-last_update"]},
    )
    for task in tasks[:5]:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                (results,) = fetch_run_files(
                    settings, experiment, task.id, Path(tmp), ("results.json",)
                )
            except Exception:  # no readable results: not reusable
                continue
        if (
            results.get("config_fingerprint") == fingerprint
            and results["dataset"]["sha256"] == digest
        ):
            return {"id": task.id, "experiment": experiment, "url": task.get_output_log_web_page()}
    return None


def enqueue_combination(
    combo: Combination, overrides: list[str], gpu_queue: str | None, dry_run: bool
) -> dict[str, Any]:
    """One `make enqueue` in a child process: `start()` ends the process that calls it."""
    with tempfile.TemporaryDirectory() as tmp:
        record = Path(tmp) / "pipeline.json"
        command = [sys.executable, "-m", "pipelines.clearml_pipeline", "--record", str(record)]
        if gpu_queue:
            command += ["--gpu-queue", gpu_queue]
        if dry_run:
            command.append("--dry-run")
        command += [f"model={combo.model}", f"dataset={combo.dataset}", *overrides]
        proc = subprocess.run(command, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0 or not record.is_file():
            raise ConfigError(
                f"{combo.model} x {combo.dataset}: enqueue failed: {proc.stderr.strip()[-2000:]}"
            )
        entry = json.loads(record.read_text(encoding="utf-8"))
    dag = next((x[4:] for x in proc.stdout.splitlines() if x.startswith("DAG=")), None)
    if dag:
        entry["dag"] = json.loads(dag)
    return entry


def build_summary_pipeline(cfg: dict[str, Any], name: str, runs: list[dict[str, Any]]):
    """A one-step pipeline on the CPU queue: wait for the runs, then the leaderboard."""
    from clearml import PipelineController

    from pipelines import clearml_steps
    from pipelines.clearml_server import prepare_sdk

    prepare_sdk()
    clearml_cfg = cfg["clearml"]
    settings = StorageSettings.from_config(cfg["storage"])
    pipe = PipelineController(
        name=f"sweep {name}",
        project=str(clearml_cfg["project"]),
        version=str(clearml_cfg["pipeline_version"]),
        add_pipeline_tags=True,
        docker=clearml_cfg["images"]["cpu"],
        packages=[],
        output_uri=settings.output_uri if settings else None,
    )
    pipe.set_default_execution_queue(clearml_cfg["queues"]["cpu"])
    pipe.add_parameter("cpu_queue", clearml_cfg["queues"]["cpu"], description="summary step")
    pipe.add_function_step(
        name="leaderboard",
        function=clearml_steps.sweep_summary,
        function_kwargs={
            "runs_json": json.dumps(runs, sort_keys=True),
            "config_json": json.dumps(
                {k: cfg[k] for k in ("storage", "sweep", "clearml")}, sort_keys=True
            ),
            "name": name,
        },
        function_return=["result"],
        execution_queue="${pipeline.cpu_queue}",
        docker=clearml_cfg["images"]["cpu"],
        task_type="qc",
        packages=[],
    )
    return pipe


def enqueue_sweep(
    models: list[str],
    datasets: list[str],
    overrides: list[str],
    gpu_queue: str | None = None,
    dry_run: bool = False,
) -> dict[str, Any]:
    from clearml import Task

    from pipelines.clearml_server import check_server

    overrides = normalize_overrides(overrides)
    combos = plan(models, datasets, overrides, check_paths=False)
    cfg = combos[0].cfg  # storage, clearml, sweep: the same for every combination
    settings = require_storage(
        cfg["storage"],
        "the pipelines exchange files through S3 (MinIO); set it, e.g. "
        'ARGS="storage.endpoint=http://minio:9000"',
    )
    if not dry_run:
        check_server(float(cfg["clearml"]["ping_timeout_s"]))
    name = sweep_name(cfg, models, datasets)
    runs = []
    for number, combo in enumerate(combos, 1):
        label = f"[{number}/{len(combos)}] {combo.model} x {combo.dataset}"
        reused = None if dry_run or cfg["sweep"]["force"] else reusable_run(combo, settings)
        if reused is not None:
            print(f"{label}: reused pipeline {reused['id']} {reused['url']}", flush=True)
            runs.append({**reused, "model": combo.model, "dataset": combo.dataset, "reused": True})
            continue
        entry = enqueue_combination(combo, overrides, gpu_queue, dry_run)
        print(f"{label}: {'built' if dry_run else 'enqueued'} {entry['id']} {entry['url']}")
        runs.append({**entry, "model": combo.model, "dataset": combo.dataset, "reused": False})
    pipe = build_summary_pipeline(cfg, name, [{k: r[k] for k in r if k != "dag"} for r in runs])
    summary = {"name": name, "runs": runs}
    if dry_run:
        from pipelines.clearml_pipeline import describe

        summary["summary_dag"] = describe(pipe)
        return summary
    task = Task.current_task()
    print(f"summary {name}: {task.get_output_log_web_page()}", flush=True)
    pipe.start(queue=cfg["clearml"]["queues"]["services"])
    return summary


def wait_for_runs(run_ids: list[str], timeout_s: float, poll_s: float = 30.0) -> dict[str, str]:
    """Each pipeline's final status (or its status when the wait timed out)."""
    from clearml import Task

    deadline = time.monotonic() + timeout_s
    status: dict[str, str] = {}
    while True:
        for run_id in run_ids:
            if status.get(run_id) not in FINAL:
                status[run_id] = str(Task.get_task(task_id=run_id).get_status())
        pending = [r for r in run_ids if status[r] not in FINAL]
        if not pending or time.monotonic() > deadline:
            return status
        print(f"waiting for {len(pending)} of {len(run_ids)} pipelines", flush=True)
        time.sleep(poll_s)


def summarize(
    runs: list[dict[str, Any]], cfg: dict[str, Any], name: str, out_dir: Path
) -> dict[str, Any]:
    """Leaderboard files from the runs' results in S3; runs without results are listed."""
    from components.leaderboard import leaderboard_row, write_leaderboard
    from components.stats import bootstrap_options

    settings = StorageSettings.from_config(cfg["storage"])
    assert settings is not None
    stats = bootstrap_options(cfg["sweep"])
    rows, missing = [], []
    for run in runs:
        try:
            results, predictions = fetch_run_files(
                settings, run["experiment"], run["id"], out_dir / "runs"
            )
        except Exception as exc:  # a failed or stopped pipeline has no results: listed
            missing.append({**run, "error": f"{exc.__class__.__name__}: {exc}"})
            continue
        rows.append(leaderboard_row(results, predictions, reused=run["reused"], **stats))
    paths = write_leaderboard(rows, out_dir, f"sweep {name}", stats["confidence"]) if rows else {}
    return {"rows": rows, "missing": missing, "paths": paths}


def report_summary(task: Any, summary: dict[str, Any], runs: list[dict[str, Any]]) -> None:
    """The leaderboard as a table and a plot, every run linked, the files as artifacts."""
    from components.leaderboard import COLUMNS, plot, sort_rows

    logger = task.get_logger()
    rows = sort_rows(summary["rows"])
    logger.report_table(
        "leaderboard",
        "runs",
        iteration=0,
        table_plot=[list(COLUMNS)] + [[r[c] for c in COLUMNS] for r in rows],
    )
    if rows:
        logger.report_matplotlib_figure(
            "leaderboard", "token recall", figure=plot(rows, task.name), iteration=0
        )
    links = [["model", "dataset", "pipeline", "reused", "results"]]
    failed = {m["id"]: m["error"] for m in summary["missing"]}
    for run in runs:
        links.append(
            [
                run["model"],
                run["dataset"],
                run.get("url") or run["id"],
                run["reused"],
                failed.get(run["id"], "ok"),
            ]
        )
    logger.report_table("leaderboard", "pipelines", iteration=0, table_plot=links)
    for key, path in summary["paths"].items():
        task.upload_artifact(f"leaderboard_{key}", artifact_object=Path(path), wait_on_upload=True)


def summary_step(runs_json: str, config_json: str, name: str) -> str:
    """The summary pipeline's step, on an agent: wait, fetch, tabulate, report."""
    from clearml import Task

    runs, cfg = json.loads(runs_json), json.loads(config_json)
    status = wait_for_runs([r["id"] for r in runs], float(cfg["sweep"]["wait_timeout_s"]))
    for run in runs:
        run["status"] = status.get(run["id"])
    out_dir = Path(tempfile.mkdtemp(prefix="slm-sweep-"))
    summary = summarize(runs, cfg, name, out_dir)
    task = Task.current_task()
    if task is not None:
        report_summary(task, summary, runs)
    return json.dumps({"rows": summary["rows"], "missing": summary["missing"]})


def main(argv: list[str] | None = None) -> int:
    from components.storage import StorageError
    from pipelines.clearml_server import ServerNotConfigured

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", required=True)
    parser.add_argument("--datasets", required=True)
    parser.add_argument("--gpu-queue", default=None)
    parser.add_argument("--dry-run", action="store_true", help="build every DAG, enqueue nothing")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    try:
        summary = enqueue_sweep(
            split_names(args.models, "model"),
            split_names(args.datasets, "dataset"),
            args.overrides,
            args.gpu_queue,
            args.dry_run,
        )
    except (ConfigError, StorageError, ServerNotConfigured) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        print("SWEEP=" + json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

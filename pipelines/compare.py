"""`make compare A=... B=...`: two runs question by question.

    python -m pipelines.compare smollm2_135m_sample gemma3_270m_sample
    python -m pipelines.compare outputs/a outputs/b
    python -m pipelines.compare TASK_ID_A TASK_ID_B storage.endpoint=http://minio:9000

A and B are run folders, experiment names under experiment.output_dir, or ClearML task ids
(their files are fetched from S3 and checked against their sha256). Writes compare.md and
compare.csv under ``<output_dir>/compare/<A>_vs_<B>/``; with clearml.mode=offline|server, or
task ids, the comparison is also recorded as a ClearML task with the table.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from pipelines.config import ConfigError, compose, to_container

TASK_ID = re.compile(r"[0-9a-f]{32}")


def resolve_run(ref: str, cfg: dict[str, Any]) -> Path:
    """The folder holding the run's results.json and predictions.json."""
    output_dir = Path(cfg["experiment"]["output_dir"])
    for candidate in (Path(ref), output_dir / ref):
        if (candidate / "predictions.json").is_file():
            return candidate
    if TASK_ID.fullmatch(ref):
        return _fetch_task(ref, cfg, output_dir / "compare" / ".runs" / ref)
    raise ConfigError(
        f"{ref!r}: no predictions.json in {ref} or {output_dir / ref}, and not a ClearML task "
        "id; give a run folder, an experiment name under experiment.output_dir, or a task id"
    )


def _fetch_task(task_id: str, cfg: dict[str, Any], dest: Path) -> Path:
    from components.storage import ARTIFACT_NAMES, download_verified
    from pipelines.artifacts_cli import task_prefix
    from pipelines.clearml_server import check_server, prepare_sdk
    from pipelines.config import require_storage

    settings = require_storage(cfg["storage"], "needed to fetch a task's files from S3")
    prepare_sdk()
    check_server(float(cfg["clearml"]["ping_timeout_s"]))
    # Only the run's artifacts (not its steps' intermediate files), in ClearML's layout
    # <artifact name>/<file>; the two that matter are gathered side by side.
    download_verified(settings, f"{task_prefix(task_id)}/artifacts", dest)
    run = dest / "run"
    run.mkdir(parents=True, exist_ok=True)
    for name in ("predictions.json", "results.json"):
        source = dest / ARTIFACT_NAMES[name] / name
        if not source.is_file():
            raise ConfigError(f"task {task_id}: no {name} among its artifacts in S3")
        (run / name).write_bytes(source.read_bytes())
    return run


def _identity(run_dir: Path) -> tuple[str, str, str | None]:
    """(experiment, label, dataset sha256) from results.json; the folder name without it."""
    results = run_dir / "results.json"
    if results.is_file():
        data = json.loads(results.read_text(encoding="utf-8"))
        sha = (data.get("dataset") or {}).get("sha256")
        return data["experiment"], f"{data['experiment']}.{data['run_id']}", sha
    return run_dir.name, run_dir.name, None


def compare(ref_a: str, ref_b: str, overrides: list[str]) -> dict[str, Any]:
    from components.artifacts import write_json_atomic, write_text_atomic
    from components.compare import compare_predictions, to_csv, to_markdown
    from components.stats import bootstrap_options
    from components.storage import safe_name

    cfg = to_container(compose(overrides))
    dir_a, dir_b = resolve_run(ref_a, cfg), resolve_run(ref_b, cfg)
    (exp_a, label_a, sha_a), (exp_b, label_b, sha_b) = _identity(dir_a), _identity(dir_b)
    preds_a = json.loads((dir_a / "predictions.json").read_text(encoding="utf-8"))
    preds_b = json.loads((dir_b / "predictions.json").read_text(encoding="utf-8"))
    comparison = compare_predictions(preds_a, preds_b, **bootstrap_options(cfg["sweep"]))
    comparison["same_dataset_file"] = None if not (sha_a and sha_b) else sha_a == sha_b
    name = safe_name(f"{exp_a}_vs_{exp_b}")
    out = Path(cfg["experiment"]["output_dir"]) / "compare" / name
    paths = {
        "md": write_text_atomic(out / "compare.md", to_markdown(comparison, label_a, label_b)),
        "csv": write_text_atomic(out / "compare.csv", to_csv(comparison)),
        "json": write_json_atomic(out / "compare.json", {"a": label_a, "b": label_b, **comparison}),
    }
    mode = str(cfg["clearml"].get("mode") or "off")
    tracked = mode != "off" or TASK_ID.fullmatch(ref_a) or TASK_ID.fullmatch(ref_b)
    session = _report(cfg, comparison, label_a, label_b, paths) if tracked else None
    return {
        "comparison": comparison,
        "paths": paths,
        "labels": (label_a, label_b),
        "session": session,
    }


def _report(cfg, comparison, label_a: str, label_b: str, paths) -> str | None:
    """A ClearML task (offline: a session zip) with the numbers, the table and the files."""
    from pipelines.clearml_tracking import close_task, open_task

    task = open_task(cfg["clearml"], f"compare {label_b} vs {label_a}", "qc")
    task.connect({"a": label_a, "b": label_b}, name="Args")
    logger = task.get_logger()
    diff = comparison["difference"]
    for key, value in (
        ("recall_a", comparison["mean_a"]),
        ("recall_b", comparison["mean_b"]),
        ("difference_b_minus_a", diff["mean"]),
        ("difference_ci_low", diff["ci_low"]),
        ("difference_ci_high", diff["ci_high"]),
        ("questions_differing", len(comparison["rows"])),
    ):
        if value is not None:
            logger.report_single_value(key, float(value))
    header = ["question_id", "question", "A", "B", "recall A", "recall B", "B - A"]
    table = [header] + [
        [
            r["question_id"],
            r["question"],
            r["prediction_a"],
            r["prediction_b"],
            r["recall_a"],
            r["recall_b"],
            r["difference"],
        ]
        for r in comparison["rows"][:500]
    ]
    logger.report_table("comparison", "differing questions", iteration=0, table_plot=table)
    for key, path in paths.items():
        task.upload_artifact(f"compare_{key}", artifact_object=Path(path), wait_on_upload=True)
    return close_task(task)


def main(argv: list[str] | None = None) -> int:
    from components.storage import StorageError
    from pipelines.clearml_server import ServerNotConfigured

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", help="run folder, experiment name or ClearML task id")
    parser.add_argument("b", help="run folder, experiment name or ClearML task id")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides (storage.endpoint=...)")
    args = parser.parse_args(argv)
    try:
        done = compare(args.a, args.b, args.overrides)
    except (ValueError, StorageError, ServerNotConfigured) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from components.compare import MARKDOWN_ROWS

    text = done["paths"]["md"].read_text(encoding="utf-8").splitlines()
    shown = 8 + min(10, MARKDOWN_ROWS)
    print("\n".join(text[:shown]))
    if len(text) > shown:
        print(f"... ({len(done['comparison']['rows'])} differing questions in all)")
    print("wrote")
    for path in done["paths"].values():
        print(f"  {path}")
    if done["session"]:
        print(f"  {done['session']}  (ClearML offline session)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

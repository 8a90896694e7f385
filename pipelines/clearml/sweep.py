"""`make enqueue-sweep`: one pipeline per model x dataset on ClearML, then a summary.

    make enqueue-sweep QUEUE=gpu MODELS=smollm2_360m,qwen3_0.6b DATASETS=nq_open \\
        ARGS="storage.endpoint=http://minio:9000"

How many pipelines run at once is up to the agents on the queues, not this package. A
combination whose newest completed pipeline recorded the same config fingerprint and
dataset sha256 (read from its results.json in S3) is reused unless ``sweep.force``. The
summary is a pipeline of its own: its controller (on the services queue, which runs
controllers side by side) waits for every run, then one CPU step, ``leaderboard``, builds
the table, the plot and the files (pipelines/clearml/summary.py). Nothing waits on a CPU
or GPU agent.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any

from components.atomic import sha256_file
from components.results import config_fingerprint
from components.storage import S3, StorageError
from pipelines.clearml.submit import check_ready, create_pipeline, enqueue_pipeline, enqueue_run
from pipelines.config import require_storage
from pipelines.sweep import Combination, plan, sweep_name

SUMMARY_MODULE = "pipelines.clearml.summary"


def reusable_run(combo: Combination, s3: S3) -> dict[str, Any] | None:
    """The newest completed pipeline of this experiment whose results match the config
    fingerprint and the dataset's content (when the dataset file is readable here)."""
    from clearml import Task

    path = Path(str(combo.cfg["dataset"]["path"]))
    if not path.is_file():
        return None
    digest, fingerprint = sha256_file(path), config_fingerprint(combo.cfg)
    experiment = str(combo.cfg["experiment"]["name"])
    tasks = Task.get_tasks(
        # A PipelineController's task lives in its own hidden sub-project.
        project_name=f"{combo.cfg['clearml']['project']}/.pipelines/{experiment}",
        task_name=f"^{re.escape(experiment)}( #\\d+)?$",
        task_filter={
            "status": ["completed"],
            "type": ["controller"],
            "order_by": ["-last_update"],
            "search_hidden": True,  # ... which ClearML hides from a plain search
            "_allow_extra_fields_": True,
        },
    )
    for task in tasks[:5]:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                key = s3.run_key(experiment, task.id)
                files = s3.fetch_artifacts(key, tmp, ("results.json",))
                results = json.loads(files["results.json"].read_text(encoding="utf-8"))
            except (StorageError, ValueError):
                continue
        if (
            results.get("config_fingerprint") == fingerprint
            and (results.get("dataset") or {}).get("sha256") == digest
        ):
            return {"id": task.id, "experiment": experiment, "url": task.get_output_log_web_page()}
    return None


def enqueue_sweep(
    models: list[str],
    datasets: list[str],
    overrides: list[str],
    modes: list[str | None] | None = None,
) -> dict[str, Any]:
    """Checks every combination first (nothing is created if one fails), then enqueues."""
    combos = plan(models, datasets, overrides, check_paths=False, modes=modes)
    check_ready([combo.cfg for combo in combos])
    cfg = combos[0].cfg  # storage, clearml, sweep: the same for every combination
    clearml_cfg = cfg["clearml"]
    s3 = require_storage(cfg["storage"], "the pipelines hand files on through S3")
    name = sweep_name(cfg, models, datasets, modes)
    services = clearml_cfg["queues"]["services"]
    runs = []
    for number, combo in enumerate(combos, 1):
        label = f"[{number}/{len(combos)}] {combo.label}"
        reused = None if cfg["sweep"]["force"] else reusable_run(combo, s3)
        if reused is not None:
            print(f"{label}: reused pipeline {reused['id']} {reused['url']}", flush=True)
            runs.append({**reused, **combo.entry, "reused": True})
            continue
        entry = enqueue_run(combo.cfg, combo.node)
        print(f"{label}: enqueued {entry['id']} {entry['url']}", flush=True)
        runs.append({**entry, **combo.entry, "reused": False})
    summary_config = {
        "name": name,
        "runs": runs,
        **{k: cfg[k] for k in ("storage", "sweep", "clearml")},
    }
    pipe = create_pipeline(f"sweep {name}", clearml_cfg, SUMMARY_MODULE, summary_config, {})
    url = enqueue_pipeline(pipe, services)
    print(f"summary sweep {name} ({pipe.task.id}): {url}", flush=True)
    return {"name": name, "runs": runs, "summary": {"id": pipe.task.id, "url": url}}

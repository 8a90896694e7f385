"""A run's files after the fact: download them back, or upload a run whose upload failed."""

from __future__ import annotations

import json
from pathlib import Path

from components.storage import StorageError, StorageSettings


def publish_again(settings: StorageSettings, run_dir: Path, cleanup: bool) -> list[str]:
    """Uploads a finished run under its original run id, after checking the local files
    still match the sizes and sha256 recorded in results.json."""
    from components.artifacts import file_info
    from components.storage import publish_run

    results_path = run_dir / "results.json"
    if not results_path.is_file():
        raise StorageError(f"{results_path}: not found; finish the run first (make run)")
    results = json.loads(results_path.read_text(encoding="utf-8"))
    for name, recorded in results["artifacts"].items():
        if not (run_dir / name).is_file():
            raise StorageError(
                f"{run_dir / name}: missing (deleted after an upload that verified, with "
                "experiment.cleanup_local_artifacts=true?); nothing to publish again"
            )
        now = file_info(run_dir / name)
        if (now["bytes"], now["sha256"]) != (recorded["bytes"], recorded["sha256"]):
            raise StorageError(f"{run_dir / name}: changed since the run recorded it; not uploaded")
    uploaded = publish_run(
        settings, run_dir, results["experiment"], results["run_id"], cleanup_local=cleanup
    )
    return [info["url"] for info in uploaded.values()]


def fetch_source(source: str | None, task_id: str | None) -> str:
    """What `make fetch` downloads: a URL or key prefix, or a ClearML task's run prefix."""
    if bool(source) == bool(task_id):
        raise StorageError("fetch needs SRC=s3://... or TASK=<task id> (one of them)")
    if source:
        return source
    from pipelines.clearml.runs import task_prefix
    from pipelines.clearml.sdk import connect

    connect()
    return task_prefix(str(task_id))

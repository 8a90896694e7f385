"""Finished pipelines on the server, as the tools that read results back see them: a task's
run prefix in S3, its files, and waiting for it to end."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from components.storage import S3, StorageError
from pipelines.clearml.sdk import connect
from pipelines.config import require_storage


def task_prefix(task_id: str) -> str:
    """The run's S3 prefix (``s3://host/bucket/<prefix>/<experiment>.<id>``), from the
    artifact links the pipeline's publish step left on its controller."""
    from clearml import Task

    task = Task.get_task(task_id=task_id)
    for artifact in task.artifacts.values():
        url = artifact.url or ""
        if "/artifacts/" in url:
            return url.split("/artifacts/")[0]
    raise StorageError(f"task {task_id} has no artifacts in S3 (did its pipeline complete?)")


def task_source(task_id: str) -> str:
    """What `make fetch TASK=<id>` downloads: the task's run prefix (the server is asked)."""
    connect()
    return task_prefix(task_id)


def fetch_task_run(s3: S3, task_id: str, dest: Path, names: tuple[str, ...]) -> dict[str, Path]:
    """A pipeline's artifacts by its task id, each checked against its sha256."""
    _, key = s3.key_of(task_prefix(task_id))
    return s3.fetch_artifacts(key, dest, names)


def task_fetcher(cfg: dict[str, Any]) -> Callable[[str, Path], None]:
    """For pipelines.runs.resolve_run: a run named by its ClearML task id, fetched from S3."""

    def fetch(task_id: str, dest: Path) -> None:
        s3 = require_storage(cfg["storage"], "needed to fetch a task's files from S3")
        connect(float(cfg["clearml"]["ping_timeout_s"]))
        fetch_task_run(s3, task_id, dest, ("predictions.json", "results.json"))

    return fetch


def wait_for(task_id: str, poll_s: float) -> str:
    """The task's final status; waits without holding any worker but the caller's."""
    from clearml import Task

    final = ("completed", "failed", "stopped", "closed", "published")
    task = Task.get_task(task_id=task_id)
    task.wait_for_status(status=final, raise_on_status=None, check_interval_sec=poll_s)
    return str(task.status)

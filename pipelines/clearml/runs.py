"""Finished pipelines on the server, as the tools that read results back see them."""

from __future__ import annotations

from pathlib import Path

from components.storage import StorageError, StorageSettings, fetch_artifacts


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


def fetch_task_run(
    settings: StorageSettings, task_id: str, dest: Path, names: tuple[str, ...]
) -> dict[str, Path]:
    """A pipeline's artifacts by its task id, each checked against its sha256."""
    _, key = settings.key_of(task_prefix(task_id))
    return fetch_artifacts(settings, key, dest, names)


def wait_for(task_id: str, poll_s: float) -> str:
    """The task's final status; waits without holding any worker but the caller's."""
    from clearml import Task

    final = ("completed", "failed", "stopped", "closed", "published")
    task = Task.get_task(task_id=task_id)
    task.wait_for_status(status=final, raise_on_status=None, check_interval_sec=poll_s)
    return str(task.status)

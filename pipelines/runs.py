"""Finished runs, wherever they are: a run folder, an experiment name under
``experiment.output_dir``, or a ClearML pipeline's task id (its files fetched by the fetcher
the CLI hands in, checked against their sha256). What `make compare` and `make leaderboard`
read, and what `make publish` uploads again."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from components.atomic import file_info
from components.run_upload import publish_run
from components.storage import S3, StorageError
from pipelines.config import ConfigError

TASK_ID = re.compile(r"[0-9a-f]{32}")
TaskFetcher = Callable[[str, Path], None]  # (task id, folder): its results.json, predictions.json


def resolve_run(ref: str, cfg: dict[str, Any], fetch_task: TaskFetcher | None = None) -> Path:
    """The folder holding the run's results.json and predictions.json."""
    output_dir = Path(cfg["experiment"]["output_dir"])
    for candidate in (Path(ref), output_dir / ref):
        if (candidate / "predictions.json").is_file():
            if not (candidate / "results.json").is_file():
                raise ConfigError(
                    f"{candidate}: not a finished run (no results.json); run it again to the "
                    "end (it resumes from its checkpoint)"
                )
            return candidate
    if TASK_ID.fullmatch(ref) and fetch_task is not None:
        dest = output_dir / ".runs" / ref
        fetch_task(ref, dest)
        return dest
    raise ConfigError(
        f"{ref!r}: no finished run in {ref} or {output_dir / ref}, and not a ClearML task id; "
        "give a run folder, an experiment name under experiment.output_dir, or a task id"
    )


def publish_again(s3: S3, run_dir: Path, cleanup: bool) -> list[str]:
    """Uploads a finished run under its original run id, after checking the local files
    still match the sizes and sha256 recorded in results.json."""
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
        s3, run_dir, results["experiment"], results["run_id"], cleanup_local=cleanup
    )
    return [info["url"] for info in uploaded.values()]

"""Finished runs, wherever they are: a run folder, an experiment name under
``experiment.output_dir``, or a ClearML pipeline's task id (its files fetched from S3 and
checked against their sha256). What `make compare` and `make leaderboard` read."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pipelines.config import ConfigError

TASK_ID = re.compile(r"[0-9a-f]{32}")


def resolve_run(ref: str, cfg: dict[str, Any]) -> Path:
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
    if TASK_ID.fullmatch(ref):
        return _fetch_task(ref, cfg, output_dir / ".runs" / ref)
    raise ConfigError(
        f"{ref!r}: no finished run in {ref} or {output_dir / ref}, and not a ClearML task id; "
        "give a run folder, an experiment name under experiment.output_dir, or a task id"
    )


def _fetch_task(task_id: str, cfg: dict[str, Any], dest: Path) -> Path:
    from pipelines.clearml.runs import fetch_task_run
    from pipelines.clearml.sdk import connect
    from pipelines.config import require_storage

    settings = require_storage(cfg["storage"], "needed to fetch a task's files from S3")
    connect(float(cfg["clearml"]["ping_timeout_s"]))
    fetch_task_run(settings, task_id, dest, ("predictions.json", "results.json"))
    return dest

"""Runs the pipeline definition in-process on one machine: no server, no ClearML."""

from __future__ import annotations

import contextlib
import logging
import uuid
from pathlib import Path
from typing import Any

from components.artifacts import write_json_atomic, write_text_atomic
from components.backends.pool import keep_loaded
from components.memory import IDLE, MemoryMonitor, stage
from components.results import environment, utc_now
from components.secrets import redact
from components.storage import safe_name
from pipelines.config import PROJECT_ROOT, validate
from pipelines.definition import resolve_inputs, steps_for

log = logging.getLogger(__name__)


def _close_run(monitor: MemoryMonitor, run_dir: Path, cfg: dict[str, Any]) -> dict[str, Any]:
    """Before publish: stop sampling, write memory_usage.json and the config as run."""
    import yaml

    monitor.stop()
    memory = monitor.report()
    memory_path = write_json_atomic(run_dir / "memory_usage.json", memory)
    write_text_atomic(
        run_dir / "config.yaml", yaml.safe_dump(redact(cfg), sort_keys=False, allow_unicode=True)
    )
    return {
        "finished_at": utc_now(),
        "memory": memory,
        "memory_path": str(memory_path),
        "stage_seconds": {k: v["seconds"] for k, v in memory["stages"].items() if k != IDLE},
    }


def run_dir_of(cfg: dict[str, Any]) -> Path:
    """``<output_dir>/<experiment>``; the name never makes a path out of output_dir."""
    return Path(cfg["experiment"]["output_dir"]) / safe_name(str(cfg["experiment"]["name"]))


def run_local(
    cfg: dict[str, Any], cache_dir: str | None = None, run_id: str | None = None
) -> dict[str, Any]:
    """Executes every step in order; returns the step outputs (paths and metrics).

    Nothing is written to the run folder before the dataset has been validated.
    """
    validate(cfg)
    run_dir = run_dir_of(cfg)
    experiment = run_dir.name
    run: dict[str, Any] = {
        "dir": str(run_dir),
        "cache_dir": cache_dir,
        "meta": {
            "experiment": experiment,
            "run_id": run_id or uuid.uuid4().hex[:12],
            "started_at": utc_now(),
            "environment": environment(PROJECT_ROOT),
        },
    }
    monitor = MemoryMonitor().start()
    outputs: dict[str, dict[str, Any]] = {}
    steps = steps_for(cfg)
    # Local shards run one after another on one loaded model; a lone run frees it at once.
    keep = (
        keep_loaded() if int(cfg["inference"].get("shards") or 1) > 1 else contextlib.nullcontext()
    )
    try:
        with keep:
            for spec in steps:
                if spec.name == "publish":
                    run["meta"].update(_close_run(monitor, run_dir, cfg))
                log.info("step %s", spec.name)
                with stage(spec.name):
                    outputs[spec.name] = spec.function(**resolve_inputs(spec, cfg, outputs, run))
    finally:
        monitor.stop()
    return outputs

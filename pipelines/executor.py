"""Runs one step of the pipeline definition, the same way on a laptop and on an agent.

The executor turns a step's input references into arguments (parents' files fetched from
the run's store; a config section as the settings class the step's signature names),
samples memory while the step runs, keeps the step's output files in the
store and returns its outputs: small JSON-able values that its children receive. The local
runner calls it for every step in order; on ClearML each step's task calls it once.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.atomic import write_json_atomic
from components.memory import MemoryMonitor, stage
from components.provenance import code_identity, utc_now
from components.storage import S3
from pipelines.config import PROJECT_ROOT, lookup, section
from pipelines.dag import StepSpec
from pipelines.stores import Store

Reporter = Callable[..., None]  # report(results=..., ...) or report(leaderboard=..., ...)
MEMORY = "memory_path"


@dataclass
class RunContext:
    """What a step may use of the run it belongs to (``run`` in the definition)."""

    experiment: str
    run_id: str
    started_at: str
    dir: Path  # where the step writes its files
    store: Store
    storage: S3 | None = None  # where publish uploads the run's artifacts
    cleanup_local: bool = False
    report: Reporter | None = None  # ClearML reporting of the finished run, if any
    batch_cap: int | None = None  # an earlier attempt ran out of memory above this batch


def resolve_inputs(
    spec: StepSpec,
    config: Mapping[str, Any],
    parents: Mapping[str, Mapping[str, Any]],
    context: RunContext,
) -> dict[str, Any]:
    """The step function's keyword arguments."""

    def value(ref: str) -> Any:
        source, _, path = ref.partition(".")
        if source == "cfg":
            return lookup(config, path)
        if source == "run":
            return getattr(context, path) if path else context
        step, _, field = path.partition(".")
        outputs = parents[step]
        if not field:
            return dict(outputs)
        if field in outputs.get("files", {}):
            folder, sha256 = context.dir / "inputs" / step, outputs["files"][field]
            return str(context.store.fetch(outputs[field], folder, sha256))
        return outputs[field]

    hints = typing.get_type_hints(spec.load())
    kwargs = dict(spec.fixed)
    for name, ref in spec.inputs.items():
        kwargs[name] = [value(r) for r in ref] if isinstance(ref, tuple) else value(ref)
        schema = hints.get(name)
        if dataclasses.is_dataclass(schema) and isinstance(ref, str) and ref.startswith("cfg."):
            kwargs[name] = section(schema, kwargs[name], ref[4:])  # the typed part it reads
    return kwargs


def execute(
    spec: StepSpec,
    config: Mapping[str, Any],
    parents: Mapping[str, Mapping[str, Any]],
    context: RunContext,
) -> dict[str, Any]:
    """Runs the step; its outputs name which of them are files, each with its sha256
    (``files``), its memory report (``memory_path``) and what ran it, where and when
    (``ran``)."""
    started = utc_now("milliseconds")
    kwargs = resolve_inputs(spec, config, parents, context)
    monitor = MemoryMonitor().start()
    try:
        with stage(spec.name):
            outputs = spec.load()(**kwargs)
    finally:
        monitor.stop()
    report = {"step": spec.name, **monitor.report()}
    memory_file = write_json_atomic(context.dir / "steps" / f"{spec.name}.memory.json", report)
    outputs[MEMORY] = memory_file
    files = {}
    for field in (*spec.files, MEMORY):
        outputs[field], files[field] = context.store.put(Path(outputs[field]), spec.name)
    outputs["files"] = files
    outputs["ran"] = {
        "step": spec.name,
        "started_at": started,
        "finished_at": utc_now("milliseconds"),
        "code": code_identity(PROJECT_ROOT),
    }
    json.dumps(outputs)  # outputs travel between machines: JSON or nothing
    return outputs

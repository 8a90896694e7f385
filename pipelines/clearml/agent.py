"""A pipeline step on its agent: the step's definition, config and parents' outputs in, the
executor over the run's S3 prefix, its outputs out.

Each step's generated script imports this module before it creates its task, so the SDK
settings of ``prepare_sdk`` apply to it too.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from components.provenance import code_identity
from components.storage import S3
from pipelines.clearml import credentials, failures, inputs
from pipelines.clearml.failures import CodeSkew
from pipelines.clearml.report import reporter
from pipelines.clearml.sdk import prepare_sdk
from pipelines.config import PROJECT_ROOT
from pipelines.dag import StepSpec
from pipelines.executor import RunContext, execute
from pipelines.stores import S3Store

prepare_sdk()
credentials.register()
inputs.register()


def check_code(controller: dict[str, Any]) -> None:
    """This step's code must be the controller's: an agent whose image was built from
    another commit would silently produce other results."""
    mine = code_identity(PROJECT_ROOT)
    if mine["source_sha256"] != controller.get("source_sha256"):
        raise CodeSkew(
            f"this step runs slm-qa-eval {describe(mine)}, its controller {describe(controller)}; "
            "build the worker images from one commit (make docker-build), restart the agents, "
            "and enqueue again"
        )


def describe(code: dict[str, Any]) -> str:
    git = code.get("git") or {}
    commit = (git.get("commit") or "")[:12] or "no git"
    dirty = ", uncommitted changes" if git.get("dirty") else ""
    return f"{code.get('version')} ({commit}{dirty}, source {str(code.get('source_sha256'))[:12]})"


def run_on_agent(spec: str, config: str, run: str, parents: dict[str, str]) -> str:
    """What every step task runs; returns its outputs as JSON (its ``return/outputs``)."""
    from clearml import Task

    task = Task.current_task()
    step = StepSpec.from_dict(json.loads(spec))
    settings = json.loads(run)
    pipeline_id = str(task.parent or task.id)
    try:
        check_code(settings["code"])
        storage = S3.from_config(settings["storage"])
        assert storage is not None, "the controller checks storage.endpoint"
        with tempfile.TemporaryDirectory(prefix=f"slm-{step.name}-") as work:
            context = RunContext(
                experiment=settings["experiment"],
                run_id=pipeline_id,
                started_at=settings["started_at"],
                dir=Path(work),
                store=S3Store(storage, settings["experiment"], pipeline_id),
                storage=storage,
                report=reporter(task) if step.reports else None,
                batch_cap=failures.batch_cap(task),
            )
            parent_outputs = {name: json.loads(text) for name, text in parents.items()}
            outputs = execute(step, json.loads(config), parent_outputs, context)
    except BaseException as exc:
        failures.record(task, exc)
        raise
    return json.dumps(outputs)

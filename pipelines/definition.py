"""The pipeline, defined once: four steps, their parents, queue kind and inputs.

Inputs are references, resolved by whichever runner executes the DAG:
``cfg.<key>`` a config value or subtree, ``step.<name>`` a parent step's output,
``run.<key>`` something the runner provides (``dir``, ``cache_dir``, ``meta``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pipelines.steps import inference_step, load_dataset_step, publish_step, score_step


@dataclass(frozen=True)
class StepSpec:
    name: str
    function: Callable[..., dict[str, Any]]
    queue: str  # "cpu" or "gpu": which configured queue runs it
    parents: tuple[str, ...] = ()
    inputs: dict[str, str] = field(default_factory=dict)


STEPS: tuple[StepSpec, ...] = (
    StepSpec(
        "load_dataset",
        load_dataset_step,
        queue="cpu",
        inputs={
            "dataset_path": "cfg.dataset.path",
            "limit": "cfg.dataset.limit",
            "on_error": "cfg.dataset.on_error",
            "run_dir": "run.dir",
        },
    ),
    StepSpec(
        "inference",
        inference_step,
        queue="gpu",
        parents=("load_dataset",),
        inputs={
            "model": "cfg.model",
            "inference": "cfg.inference",
            "examples_path": "step.load_dataset.examples_path",
            "run_dir": "run.dir",
            "cache_dir": "run.cache_dir",
        },
    ),
    StepSpec(
        "score",
        score_step,
        queue="cpu",
        parents=("inference",),
        inputs={
            "examples_path": "step.load_dataset.examples_path",
            "generations_path": "step.inference.generations_path",
            "run_dir": "run.dir",
        },
    ),
    StepSpec(
        "publish",
        publish_step,
        queue="cpu",
        parents=("score",),
        inputs={
            "config": "cfg",
            "dataset": "step.load_dataset",
            "inference": "step.inference",
            "scores": "step.score",
            "run": "run.meta",
            "run_dir": "run.dir",
        },
    ),
)

STEP_BY_NAME = {spec.name: spec for spec in STEPS}


def _lookup(tree: Any, dotted: str) -> Any:
    for part in dotted.split(".") if dotted else []:
        tree = tree[part]
    return tree


def resolve_inputs(spec: StepSpec, cfg: dict, outputs: dict, run: dict) -> dict[str, Any]:
    """Turns a step's input references into the keyword arguments of its function."""
    kwargs = {}
    for name, ref in spec.inputs.items():
        source, _, path = ref.partition(".")
        tree = {"cfg": cfg, "step": outputs, "run": run}[source]
        kwargs[name] = _lookup(tree, path)
    return kwargs

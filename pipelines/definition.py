"""The pipeline, defined once: four steps, their parents, queue kind and inputs.

With ``inference.shards=N`` the inference step becomes N shard steps and a merge step.

Inputs are references, resolved by whichever runner executes the DAG:
``cfg.<key>`` a config value or subtree, ``step.<name>`` a parent step's output,
``run.<key>`` something the runner provides (``dir``, ``cache_dir``, ``meta``);
a tuple of references becomes a list.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pipelines.steps import (
    inference_step,
    load_dataset_step,
    merge_shards_step,
    publish_step,
    score_step,
)


@dataclass(frozen=True)
class StepSpec:
    name: str
    function: Callable[..., dict[str, Any]]
    queue: str  # "cpu" or "gpu": which configured queue runs it
    parents: tuple[str, ...] = ()
    inputs: dict[str, str | tuple[str, ...]] = field(default_factory=dict)
    fixed: dict[str, Any] = field(default_factory=dict)  # constant arguments (shard index)
    files: tuple[str, ...] = ()  # outputs that are files the next steps read


LOAD = StepSpec(
    "load_dataset",
    load_dataset_step,
    queue="cpu",
    inputs={
        "dataset_path": "cfg.dataset.path",
        "limit": "cfg.dataset.limit",
        "on_error": "cfg.dataset.on_error",
        "run_dir": "run.dir",
    },
    files=("examples_path",),
)
INFERENCE_INPUTS = {
    "model": "cfg.model",
    "inference": "cfg.inference",
    "examples_path": "step.load_dataset.examples_path",
    "run_dir": "run.dir",
    "cache_dir": "run.cache_dir",
}
SHARD_PREFIX = "inference_shard_"
MERGE = "merge_shards"


def pipeline_steps(shards: int = 1) -> tuple[StepSpec, ...]:
    """The DAG for ``inference.shards``: one inference step, or N shard steps side by side
    (one GPU agent each) and a CPU step that merges them in order before scoring."""
    if shards <= 1:
        generation = [
            StepSpec(
                "inference",
                inference_step,
                "gpu",
                ("load_dataset",),
                INFERENCE_INPUTS,
                files=("generations_path",),
            )
        ]
    else:
        names = tuple(f"{SHARD_PREFIX}{i}" for i in range(shards))
        generation = [
            StepSpec(
                name,
                inference_step,
                "gpu",
                ("load_dataset",),
                INFERENCE_INPUTS,
                fixed={"shard": i, "shards": shards},
                files=("generations_path",),
            )
            for i, name in enumerate(names)
        ]
        generation.append(
            StepSpec(
                MERGE,
                merge_shards_step,
                "cpu",
                names,
                {
                    "examples_path": "step.load_dataset.examples_path",
                    "shard_outputs": tuple(f"step.{n}" for n in names),
                    "run_dir": "run.dir",
                },
                files=("generations_path",),
            )
        )
    generated = generation[-1].name
    score = StepSpec(
        "score",
        score_step,
        queue="cpu",
        parents=(generated,),
        inputs={
            "examples_path": "step.load_dataset.examples_path",
            "generations_path": f"step.{generated}.generations_path",
            "run_dir": "run.dir",
        },
        files=("predictions_path",),
    )
    publish = StepSpec(
        "publish",
        publish_step,
        queue="cpu",
        parents=("score",),
        inputs={
            "config": "cfg",
            "dataset": "step.load_dataset",
            "inference": f"step.{generated}",
            "scores": "step.score",
            "run": "run.meta",
            "run_dir": "run.dir",
        },
    )
    return (LOAD, *generation, score, publish)


def steps_for(cfg: dict[str, Any]) -> tuple[StepSpec, ...]:
    return pipeline_steps(int(cfg["inference"].get("shards") or 1))


def _lookup(tree: Any, dotted: str) -> Any:
    for part in dotted.split(".") if dotted else []:
        tree = tree[part]
    return tree


def resolve_inputs(spec: StepSpec, cfg: dict, outputs: dict, run: dict) -> dict[str, Any]:
    """Turns a step's input references into the keyword arguments of its function."""
    trees = {"cfg": cfg, "step": outputs, "run": run}

    def value(ref: str) -> Any:
        source, _, path = ref.partition(".")
        return _lookup(trees[source], path)

    kwargs = dict(spec.fixed)
    for name, ref in spec.inputs.items():
        kwargs[name] = [value(r) for r in ref] if isinstance(ref, tuple) else value(ref)
    return kwargs

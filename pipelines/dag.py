"""The pipeline, defined once: which steps, what each reads, what it hands on.

    load_dataset -> [retrieve] -> inference -> score -> publish
    (experiment_mode=retriever_context: retrieve, on the cpu queue, finds each question's
    passages; inference.shards=N: N inference_shard_<i> steps side by side, then merge_shards)

A step's inputs are references, resolved by the executor wherever the step runs:
``cfg.<key>`` a config value or subtree (``cfg``: the whole config), ``step.<name>.<field>``
a field of a parent's outputs (``step.<name>``: all of them), ``run.<attribute>`` something
of the run context (its folder, store, reporter); a tuple of references becomes a list.
A step's parents are exactly the steps its inputs name, so the local runner and the ClearML
controller (and its graph in the web UI) follow the real data flow.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

Ref = str | tuple[str, ...]
STEPS_MODULE = "pipelines.steps"
SHARD_PREFIX = "inference_shard_"
MERGE = "merge_shards"


@dataclass(frozen=True)
class StepSpec:
    name: str
    function: str  # a function of pipelines.steps: it travels to agents by name
    queue: str  # "cpu" or "gpu": which configured queue runs it
    inputs: Mapping[str, Ref] = field(default_factory=dict)
    fixed: Mapping[str, Any] = field(default_factory=dict)  # constant arguments (shard index)
    files: tuple[str, ...] = ()  # outputs that are files (stored, then fetched by children)
    task_type: str = "data_processing"  # how ClearML labels the step's task
    reports: bool = False  # reports the run's metrics and artifacts (the pipeline monitors them)

    @property
    def _refs(self) -> list[str]:
        return [
            r for ref in self.inputs.values() for r in (ref if isinstance(ref, tuple) else (ref,))
        ]

    @property
    def parents(self) -> tuple[str, ...]:
        names = [r.split(".")[1] for r in self._refs if r.startswith("step.")]
        return tuple(dict.fromkeys(names))

    @property
    def config_keys(self) -> tuple[str, ...]:
        """The config subtrees the step reads ("" for the whole config)."""
        keys = (r[4:] for r in self._refs if r == "cfg" or r.startswith("cfg."))
        return tuple(dict.fromkeys(keys))

    def load(self) -> Callable[..., dict[str, Any]]:
        return getattr(importlib.import_module(STEPS_MODULE), self.function)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "function": self.function,
            "queue": self.queue,
            "inputs": {k: list(v) if isinstance(v, tuple) else v for k, v in self.inputs.items()},
            "fixed": dict(self.fixed),
            "files": list(self.files),
            "task_type": self.task_type,
            "reports": self.reports,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StepSpec:
        inputs = {k: tuple(v) if isinstance(v, list) else v for k, v in data["inputs"].items()}
        files = tuple(data.get("files", ()))
        return cls(**{**data, "inputs": inputs, "files": files})


def pipeline_steps(shards: int = 1, retrieve: bool = False) -> tuple[StepSpec, ...]:
    """The evaluation DAG for ``inference.shards`` (and a retrieval mode or not)."""
    load = StepSpec(
        "load_dataset",
        "load_dataset_step",
        "cpu",
        {"dataset": "cfg.dataset", "mode": "cfg.experiment_mode", "run": "run"},
        files=("examples_path",),
    )
    examples = "step.load_dataset.examples_path"
    before = [load]
    if retrieve:
        before.append(
            StepSpec(
                "retrieve",
                "retrieve_step",
                "cpu",
                {
                    "mode": "cfg.experiment_mode",
                    "dataset": "cfg.dataset",
                    "examples_path": examples,
                    "run": "run",
                },
                files=("examples_path",),
            )
        )
        examples = "step.retrieve.examples_path"
    generate = {
        "model": "cfg.model",
        "inference": "cfg.inference",
        "mode": "cfg.experiment_mode",
        "examples_path": examples,
        "run": "run",
    }
    sharded = shards > 1
    names = tuple(f"{SHARD_PREFIX}{i}" for i in range(shards)) if sharded else ("inference",)
    generation = [
        StepSpec(
            name,
            "inference_step",
            "gpu",
            generate,
            fixed={"shard": i, "shards": shards} if sharded else {},
            files=("generations_path",),
            task_type="inference",
        )
        for i, name in enumerate(names)
    ]
    if sharded:
        generation.append(
            StepSpec(
                MERGE,
                "merge_shards_step",
                "cpu",
                {
                    "examples_path": examples,
                    "shard_outputs": tuple(f"step.{n}" for n in names),
                    "generations_paths": tuple(f"step.{n}.generations_path" for n in names),
                    "run": "run",
                },
                files=("generations_path",),
            )
        )
    generated = generation[-1].name
    score = StepSpec(
        "score",
        "score_step",
        "cpu",
        {
            "examples_path": examples,
            "generations_path": f"step.{generated}.generations_path",
            "mode": "cfg.experiment_mode",
            "run": "run",
        },
        files=("predictions_path",),
        task_type="qc",
    )
    earlier = [*(s.name for s in before), *(s.name for s in generation), "score"]
    publish = StepSpec(
        "publish",
        "publish_step",
        "cpu",
        {
            "config": "cfg",
            "dataset": "step.load_dataset",
            "retrieval": ("step.retrieve.retrieval",) if retrieve else (),
            "inference": f"step.{generated}",
            "scores": "step.score",
            "predictions_path": "step.score.predictions_path",
            "memory_paths": tuple(f"step.{s}.memory_path" for s in earlier),
            "ran": tuple(f"step.{s}.ran" for s in earlier),
            "run": "run",
        },
        reports=True,
    )
    return (*before, *generation, score, publish)


def summary_steps() -> tuple[StepSpec, ...]:
    """A ClearML sweep's summary pipeline: one CPU step once every run has finished."""
    return (
        StepSpec(
            "leaderboard",
            "leaderboard_step",
            "cpu",
            {"runs": "cfg.runs", "sweep": "cfg.sweep", "name": "cfg.name", "run": "run"},
            files=("csv_path", "md_path", "png_path"),
            task_type="qc",
            reports=True,
        ),
    )


def steps_for(cfg: Mapping[str, Any]) -> tuple[StepSpec, ...]:
    """The DAG a validated config runs: its shape depends on ``inference.shards`` and on
    whether ``experiment_mode`` retrieves."""
    mode = cfg.get("experiment_mode") or {}
    return pipeline_steps(cfg["inference"]["shards"], mode.get("name") == "retriever_context")


def config_for(spec: StepSpec, cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Only the config a step reads: what it shows, and what ClearML hashes, is its own."""
    if "" in spec.config_keys:
        return dict(cfg)
    part: dict[str, Any] = {}
    for key in spec.config_keys:
        source, target = cfg, part
        *heads, leaf = key.split(".")
        for head in heads:
            source, target = source[head], target.setdefault(head, {})
        target[leaf] = source[leaf]
    return part

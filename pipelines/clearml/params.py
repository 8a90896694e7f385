"""The pipeline's parameters on ClearML (its ``Args``, what users edit in the web UI): which
settings they are, their text form, and how an edited clone's Args and config object settle
into the config its pipeline runs with."""

from __future__ import annotations

import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from components.inputs import is_remote
from components.secrets import redact
from pipelines.clearml.containers import check_containers, deployment_allowlist
from pipelines.config import (
    DEFAULT_EXPERIMENT_NAME,
    GROUPS,
    PROJECT_ROOT,
    RESOLVERS,
    ConfigError,
    compose,
    group_choices,
    lookup,
    to_container,
    validate,
)


@dataclass(frozen=True)
class Knob:
    name: str  # the Args/<name> parameter
    key: str  # the config key it sets
    help: str
    group: bool = False  # names a config group file (conf/<group>/<value>.yaml)

    @property
    def nullable(self) -> bool:
        """An empty value means null (else: the configured value stays)."""
        schema: Any = GROUPS[self.key.split(".")[0]]
        *heads, leaf = self.key.split(".")[1:]
        for head in heads:
            schema = typing.get_type_hints(schema)[head]
        return type(None) in typing.get_args(typing.get_type_hints(schema)[leaf])


KNOBS: tuple[Knob, ...] = (
    Knob("eval_model", "model.name", "model config name (conf/model/)", group=True),
    Knob("eval_dataset", "dataset.name", "dataset config name (conf/dataset/)", group=True),
    Knob(
        "eval_dataset_path",
        "dataset.path",
        "dataset file as the agents see it; empty: as configured",
    ),
    Knob("eval_limit", "dataset.limit", "first N; empty: all"),
    Knob(
        "eval_mode",
        "experiment_mode.name",
        "context mode (conf/experiment_mode/): no_context, oracle_context, "
        "oracle_long_context, retriever_context",
        group=True,
    ),
    Knob("eval_top_k", "experiment_mode.top_k", "retriever_context: passages per question"),
    Knob("eval_batch_size", "inference.batch_size", "prompts per batch, or auto"),
    Knob("eval_max_new_tokens", "inference.max_new_tokens", "per answer"),
    Knob("eval_temperature", "inference.temperature", "0 = greedy"),
    Knob("cpu_queue", "clearml.queues.cpu", "queue of the CPU steps"),
    Knob("gpu_queue", "clearml.queues.gpu", "queue of the inference steps"),
)


def knob_values(cfg: dict[str, Any]) -> dict[str, Any]:
    """The knobs' current values, read from a resolved config."""
    return {k.name: lookup(cfg, k.key) for k in KNOBS}


def args_text(values: dict[str, Any]) -> dict[str, str]:
    """``Args`` as ClearML stores them, text with None as empty: the form settle() compares
    an edit against, so every writer of Args and of their baseline must use it."""
    return {k: "" if v is None else str(v) for k, v in values.items()}


def pipeline_args(cfg: dict[str, Any], given: dict[str, Any] | None = None) -> dict[str, Any]:
    """A pipeline's ``Args``: the knobs' values, except the dataset path, which stays as
    given (empty: the config's own, resolved on the agents' machines)."""
    values = knob_values(cfg)
    values["eval_dataset_path"] = (given or {}).get("eval_dataset_path") or ""
    return values


def portable_config(cfg: DictConfig) -> dict[str, Any]:
    """The config as attached to a pipeline (and edited in the ClearML UI): resolved, but
    for values the controller resolves on its own machine: the default experiment name (so
    an edited model, dataset or mode renames the run) and a dataset or corpus path inside the
    project (``${project_root:...}``: the agent's copy of the project, not this machine's)."""
    container = to_container(cfg)
    if OmegaConf.to_container(cfg.experiment)["name"] == DEFAULT_EXPERIMENT_NAME:
        container["experiment"]["name"] = DEFAULT_EXPERIMENT_NAME
    for key in ("path", "corpus"):
        value = container["dataset"].get(key)
        path = Path(str(value)).absolute() if value and not is_remote(value) else None
        if path is not None and path.is_relative_to(PROJECT_ROOT):
            container["dataset"][key] = f"${{project_root:{path.relative_to(PROJECT_ROOT)}}}"
    return redact(container)


RESOLVER_CALL = re.compile(r"\$\{\s*([^}:\s]+)\s*:")


def refuse_foreign_resolvers(value: Any, key: str) -> None:
    """Text from the server (anyone who may edit a task) runs on the agents, beside their
    storage keys: only the project's own resolvers may run on it (``${oc.env:...}`` would put
    an agent's secret into a task name, a log or an error). The error names the key and the
    resolver, never a value."""
    if isinstance(value, dict):
        for k, v in value.items():
            refuse_foreign_resolvers(
                v, f"{key}.{k}" if key and not key.endswith("/") else f"{key}{k}"
            )
    elif isinstance(value, list):
        for i, v in enumerate(value):
            refuse_foreign_resolvers(v, f"{key}[{i}]")
    elif isinstance(value, str):
        for name in RESOLVER_CALL.findall(value):
            if name not in RESOLVERS:
                raise ConfigError(
                    f"{key}: the resolver '{name}' may not run on a value from the server; "
                    f"the project's own are {sorted(RESOLVERS)}: write the value itself"
                )


def settle(
    config: dict[str, Any], args: dict[str, Any], baseline: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The config a pipeline runs with: its attached config, then its parameters over it
    (as ClearML hands them: strings). With ``baseline`` (the parameters as they were
    attached), only a parameter edited since counts, so an edit of the config object is
    not undone by an unedited parameter. A changed model or dataset name swaps in that
    group's file from conf/; an empty ``eval_dataset_path`` keeps the configured path."""
    refuse_foreign_resolvers(config, "")
    refuse_foreign_resolvers(args, "Args/")
    node = OmegaConf.create(config)
    swapped = set()
    for k in (k for k in KNOBS if k.group):
        text = str(args.get(k.name) or "").strip()
        group, _, leaf = k.key.partition(".")
        if text and text != str(node[group].get(leaf)):
            choices = group_choices(group)
            if text not in choices:
                raise ConfigError(f"{k.name}: unknown {group} {text!r}; one of {choices}")
            node[group] = OmegaConf.to_container(compose([f"{group}={text}"])[group])
            swapped.add(group)
    for k in (k for k in KNOBS if not k.group):
        value = args.get(k.name)
        unedited = baseline is not None and str(value) == str(baseline.get(k.name))
        # A swapped group came from its file: its knobs apply, edited or not.
        if value is None or (unedited and k.key.partition(".")[0] not in swapped):
            continue
        text = str(value).strip()
        if text.lower() not in ("", "none", "null"):
            OmegaConf.update(node, k.key, text)
        elif k.nullable:
            OmegaConf.update(node, k.key, None)
    settled = validate(to_container(node), require_dataset=False)
    check_containers(settled["clearml"], deployment_allowlist())
    return settled

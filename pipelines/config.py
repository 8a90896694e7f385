"""Composing and checking the Hydra config: the one place a run's settings come from."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from components.secrets import redact

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = PROJECT_ROOT / "conf"


CHOICES = {
    "backend": ("auto", "transformers", "vllm"),
    "device": ("auto", "cpu", "cuda"),
    "dtype": ("auto", "float32", "bfloat16", "float16"),
}


class ConfigError(ValueError):
    """A config value cannot work; the message names the key."""


def _project_root(relative: str = "") -> str:
    return str(PROJECT_ROOT / relative) if relative else str(PROJECT_ROOT)


@functools.lru_cache(maxsize=1)
def deploy_settings() -> dict[str, str]:
    """docker/versions.env: image names, tags and pinned versions, kept in one place."""
    values = {}
    for line in (PROJECT_ROOT / "docker" / "versions.env").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def _deploy(key: str) -> str:
    try:
        return deploy_settings()[key]
    except KeyError as exc:
        raise ConfigError(f"docker/versions.env: no {key}") from exc


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("project_root"):
        OmegaConf.register_new_resolver("project_root", _project_root)
    if not OmegaConf.has_resolver("deploy"):
        OmegaConf.register_new_resolver("deploy", _deploy)


register_resolvers()


def compose(overrides: list[str] | None = None) -> DictConfig:
    """The same config ``make run ARGS=...`` gets, for tests, benchmarks and the pipeline."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides or []))


def to_container(cfg: DictConfig) -> dict[str, Any]:
    """Resolves every interpolation; a missing required value becomes a ConfigError."""
    from omegaconf.errors import MissingMandatoryValue

    try:
        container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as exc:
        key = getattr(exc, "full_key", None) or "config"
        raise ConfigError(f"{key}: is required (set it with {key}=VALUE)") from exc
    assert isinstance(container, dict)
    container.pop("hydra", None)
    return container


def require_storage(storage: dict[str, Any], why: str):
    """The S3 settings a command cannot do without; ``why`` ends the error message."""
    from components.storage import StorageSettings

    settings = StorageSettings.from_config(storage or {})
    if settings is None:
        raise ConfigError(f"storage.endpoint: {why}")
    return settings


def _positive_int(cfg: dict, dotted: str, *, allow_none: bool = False, default: Any = None) -> None:
    section, key = dotted.split(".")
    value = cfg[section].get(key, default)
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{dotted}: must be an integer >= 1, got {value!r}")


def validate(cfg: dict[str, Any], require_dataset: bool = True) -> None:
    """Fails before any model loads, naming the key that is wrong. ``require_dataset=False``
    when the file lives on another machine (an agent) and need not exist here."""
    dataset_path = cfg["dataset"].get("path")
    if not dataset_path or (require_dataset and not Path(dataset_path).is_file()):
        raise ConfigError(f"dataset.path: no such file: {dataset_path!r}")
    _positive_int(cfg, "dataset.limit", allow_none=True)
    _positive_int(cfg, "inference.batch_size")
    _positive_int(cfg, "inference.max_new_tokens")
    # Defaults for keys a config attached to an older pipeline (a clone) does not have.
    _positive_int(cfg, "inference.shards", default=1)
    _positive_int(cfg, "inference.tensor_parallel_size", default=1)
    inference = cfg["inference"]
    temperature = inference.get("temperature")
    if not isinstance(temperature, (int, float)) or temperature < 0:
        raise ConfigError(f"inference.temperature: must be a number >= 0, got {temperature!r}")
    top_p = inference.get("top_p")
    if not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
        raise ConfigError(f"inference.top_p: must be in (0, 1], got {top_p!r}")
    if cfg["dataset"].get("on_error", "strict") not in ("strict", "skip"):
        raise ConfigError(
            f"dataset.on_error: {cfg['dataset'].get('on_error')!r} is not one of strict, skip"
        )
    for key, choices in CHOICES.items():
        if inference.get(key) not in choices:
            raise ConfigError(
                f"inference.{key}: {inference.get(key)!r} is not one of {', '.join(choices)}"
            )
    share = inference.get("gpu_memory_utilization", 0.85)
    if not isinstance(share, (int, float)) or not 0 < share <= 1:
        raise ConfigError(f"inference.gpu_memory_utilization: must be in (0, 1], got {share!r}")
    if inference.get("tensor_parallel_size", 1) > 1 and inference.get("backend") == "transformers":
        raise ConfigError(
            "inference.tensor_parallel_size: > 1 needs inference.backend=vllm (or auto on CUDA)"
        )
    seed = inference.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ConfigError(f"inference.seed: must be an integer or null, got {seed!r}")
    if "{question}" not in str(inference.get("prompt_template", "")):
        raise ConfigError("inference.prompt_template: must contain {question}")
    sweep = cfg.get("sweep")
    if sweep is not None:
        _positive_int(cfg, "sweep.bootstrap_samples")
        confidence = sweep.get("confidence")
        if not isinstance(confidence, (int, float)) or not 0 < confidence < 1:
            raise ConfigError(f"sweep.confidence: must be in (0, 1), got {confidence!r}")
    if not str(cfg["experiment"].get("name") or "").strip():
        raise ConfigError("experiment.name: must not be empty")


# Pipeline parameters (the `Args` a user edits after cloning in the ClearML UI) and the config
# key each one sets. The `eval_` prefix keeps them clear of Hydra's own argument names.
KNOBS: dict[str, str] = {
    "eval_model": "model",
    "eval_dataset": "dataset",
    "eval_dataset_path": "dataset.path",
    "eval_limit": "dataset.limit",
    "eval_batch_size": "inference.batch_size",
    "eval_max_new_tokens": "inference.max_new_tokens",
    "eval_temperature": "inference.temperature",
}
DEFAULT_EXPERIMENT_NAME = "${model.name}_${dataset.name}"


def group_choices(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def knob_values(cfg: dict[str, Any]) -> dict[str, Any]:
    """The knobs' current values, read from a resolved config."""
    values = {}
    for knob, key in KNOBS.items():
        section, _, leaf = key.partition(".")
        values[knob] = cfg[section]["name"] if not leaf else cfg[section].get(leaf)
    return values


def portable_config(cfg: DictConfig) -> dict[str, Any]:
    """The config as attached to a pipeline: resolved, except two values resolved where a
    step runs: a default experiment name (``${model.name}_${dataset.name}``, so a knob edit
    renames the experiment) and a dataset path given by interpolation (``${project_root:..}``,
    ``${oc.env:..}``: the agent's checkout and environment, not the submitting machine's)."""
    container = to_container(cfg)
    raw_name = OmegaConf.to_container(cfg.experiment, resolve=False)["name"]
    if raw_name == DEFAULT_EXPERIMENT_NAME:
        container["experiment"]["name"] = DEFAULT_EXPERIMENT_NAME
    raw_path = OmegaConf.to_container(cfg.dataset, resolve=False).get("path")
    if isinstance(raw_path, str) and raw_path.startswith("${"):
        container["dataset"]["path"] = raw_path
    return redact(container)


def _cast_optional_int(value: Any, knob: str) -> int | None:
    if value is None or str(value).strip().lower() in ("", "none", "null"):
        return None
    try:
        return int(float(str(value)))
    except ValueError as exc:
        raise ConfigError(f"{knob}: expected an integer, got {value!r}") from exc


def settle_config(config: dict[str, Any], knobs: dict[str, Any]) -> dict[str, Any]:
    """Applies pipeline parameters (which arrive as strings) over an attached config.

    A changed model or dataset name swaps in that config group from conf/; leaf values are
    cast to their types. Returns the fully resolved config a step runs with.
    """
    import copy

    cfg = copy.deepcopy(config)
    for knob, group in (("eval_model", "model"), ("eval_dataset", "dataset")):
        choice = knobs.get(knob)
        if choice in (None, "") or str(choice) == str(cfg[group].get("name")):
            continue
        choices = group_choices(group)
        if str(choice) not in choices:
            raise ConfigError(f"{knob}: unknown {group} {choice!r}; one of {', '.join(choices)}")
        cfg[group] = to_container(compose([f"{group}={choice}"]))[group]
    path = knobs.get("eval_dataset_path")
    if path not in (None, "") and str(path).lower() not in ("none", "null"):
        cfg["dataset"]["path"] = str(path)
    if "eval_limit" in knobs:
        cfg["dataset"]["limit"] = _cast_optional_int(knobs["eval_limit"], "eval_limit")
    for knob, key, cast in (
        ("eval_batch_size", "batch_size", int),
        ("eval_max_new_tokens", "max_new_tokens", int),
        ("eval_temperature", "temperature", float),
    ):
        if knobs.get(knob) not in (None, ""):
            try:
                cfg["inference"][key] = cast(float(str(knobs[knob])))
            except ValueError as exc:
                raise ConfigError(f"{knob}: expected a number, got {knobs[knob]!r}") from exc
    return to_container(OmegaConf.create(cfg))

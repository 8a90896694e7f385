"""Composing and checking the Hydra config: the one place a run's settings come from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

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


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("project_root"):
        OmegaConf.register_new_resolver("project_root", _project_root)


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


def _positive_int(cfg: dict, dotted: str, *, allow_none: bool = False) -> None:
    section, key = dotted.split(".")
    value = cfg[section].get(key)
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{dotted}: must be an integer >= 1, got {value!r}")


def validate(cfg: dict[str, Any]) -> None:
    """Fails before any model loads, naming the key that is wrong."""
    dataset_path = cfg["dataset"].get("path")
    if not dataset_path or not Path(dataset_path).is_file():
        raise ConfigError(f"dataset.path: no such file: {dataset_path!r}")
    _positive_int(cfg, "dataset.limit", allow_none=True)
    _positive_int(cfg, "inference.batch_size")
    _positive_int(cfg, "inference.max_new_tokens")
    inference = cfg["inference"]
    temperature = inference.get("temperature")
    if not isinstance(temperature, (int, float)) or temperature < 0:
        raise ConfigError(f"inference.temperature: must be a number >= 0, got {temperature!r}")
    top_p = inference.get("top_p")
    if not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
        raise ConfigError(f"inference.top_p: must be in (0, 1], got {top_p!r}")
    for key, choices in CHOICES.items():
        if inference.get(key) not in choices:
            raise ConfigError(
                f"inference.{key}: {inference.get(key)!r} is not one of {', '.join(choices)}"
            )
    seed = inference.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ConfigError(f"inference.seed: must be an integer or null, got {seed!r}")
    if "{question}" not in str(inference.get("prompt_template", "")):
        raise ConfigError("inference.prompt_template: must contain {question}")
    if not str(cfg["experiment"].get("name") or "").strip():
        raise ConfigError("experiment.name: must not be empty")

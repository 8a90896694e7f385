"""What every settings class checks with: a ConfigError that names its key, and the few
range checks they share. Each part's settings class lives beside the code that reads it
(DatasetConfig in dataset.py, InferenceConfig in inference/config.py, ...), so its defaults
and its checks are written once; pipelines/config/ puts them together into a run's schema."""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """A config value cannot work; the message names the key."""


def require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


def positive_int(value: Any, key: str) -> None:
    require(
        isinstance(value, int) and not isinstance(value, bool) and value >= 1,
        key,
        f"must be an integer >= 1, got {value!r}",
    )


def non_negative_int(value: Any, key: str) -> None:
    require(
        isinstance(value, int) and not isinstance(value, bool) and value >= 0,
        key,
        f"must be an integer >= 0, got {value!r}",
    )


def one_of(value: Any, choices: tuple[str, ...], key: str) -> None:
    require(value in choices, key, f"{value!r} is not one of {', '.join(choices)}")

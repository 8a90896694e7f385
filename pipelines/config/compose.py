"""A run's config, composed and checked: Hydra composes conf/ over the schema (schema.py),
``validate`` checks every value once, and ``section`` hands a step the typed part it reads.
Also the resolvers conf/ uses: ``${project_root:...}`` and ``${deploy:...}`` (the image
names and pinned versions in docker/versions.env, kept in one place)."""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import (
    InterpolationToMissingValueError,
    MissingMandatoryValue,
    OmegaConfBaseException,
)

from components.inputs import is_remote
from components.mirage import is_mirage
from components.modes import mode_suffix
from components.settings import ConfigError
from components.storage import S3
from pipelines.config.schema import GROUPS, RunConfig

PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent
CONF_DIR = PROJECT_ROOT / "conf"
T = TypeVar("T")


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


# The project's own resolvers: the only ones that may run on config text from a server.
def _file_stem(reference: str) -> str:
    """A dataset named after its file: ``/data/trivia_dev.jsonl`` -> ``trivia_dev``."""
    last = str(reference).split("#", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    return last.split(".", 1)[0] or last or "qa_pairs"


RESOLVERS = {
    "project_root": _project_root,
    "mode_suffix": mode_suffix,
    "deploy": _deploy,
    "file_stem": _file_stem,
}


def register() -> None:
    """Resolvers and schemas; called on import, before any config is composed."""
    for name, resolver in RESOLVERS.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)
    store = ConfigStore.instance()
    for group, schema in GROUPS.items():
        store.store(group=group, name="schema", node=schema)


register()


def compose(overrides: list[str] | None = None) -> DictConfig:
    """The config ``make run ARGS=...`` gets, for tools, tests and the pipeline."""
    try:
        if GlobalHydra.instance().is_initialized():  # inside an @hydra.main entry point
            return hydra_compose(config_name="config", overrides=list(overrides or []))
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return hydra_compose(config_name="config", overrides=list(overrides or []))
    except HydraException as exc:
        cause = exc.__cause__
        key = getattr(cause, "full_key", None)
        detail = str(cause or exc).splitlines()[0]
        raise ConfigError(f"{key}: {detail}" if key else str(exc).splitlines()[0]) from exc


def to_container(cfg: DictConfig) -> dict[str, Any]:
    """Resolves every interpolation; a missing required value becomes a ConfigError."""
    try:
        container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except (MissingMandatoryValue, InterpolationToMissingValueError) as exc:
        # A value built from a missing one (dataset.name from dataset.path) names the latter.
        missing = re.search(r"Missing mandatory value: ([\w.]+)", str(exc))
        key = missing[1] if missing else getattr(exc, "full_key", None) or "config"
        raise ConfigError(f"{key}: is required (set it with {key}=VALUE)") from exc
    assert isinstance(container, dict)
    container.pop("hydra", None)
    return container


def section(schema: type[T], values: Mapping[str, Any], key: str = "config") -> T:
    """``values`` as ``schema``'s typed object (its checks run): the part of a config a
    step reads. Unknown or ill-typed keys name themselves."""
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), dict(values)))
    except OmegaConfBaseException as exc:
        full = getattr(exc, "full_key", None)
        where = f"{key}.{full}" if full else key
        raise ConfigError(f"{where}: {str(exc).splitlines()[0]}") from exc


def validate(cfg: dict[str, Any], require_dataset: bool = True) -> dict[str, Any]:
    """The one check of a whole config: types against the schema, then every range.
    Returns the config normalised (defaults for keys an older config lacks, strings from
    ClearML cast), as plain data that travels to other machines as JSON.
    ``require_dataset=False`` where the file lives on another machine."""
    try:
        checked = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(RunConfig), cfg))
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "config"
        raise ConfigError(f"{key}: {str(exc).splitlines()[0]}") from exc
    normal = dataclasses.asdict(checked)
    dataset, mode = normal["dataset"], checked.experiment_mode
    path, corpus = dataset["path"], dataset.get("corpus")
    if require_dataset and not (Path(path).is_file() or is_mirage(path) or is_remote(path)):
        hint = (  # the one dataset of conf/ that a clone does not ship
            "; NQ-open's dev file is not shipped: set NQ_OPEN_PATH=FILE (the README says where "
            "to get it)"
            if dataset["name"] == "nq_open"
            else ""
        )
        raise ConfigError(f"dataset.path: no such file: {path!r}{hint}")
    if require_dataset and corpus and not (Path(corpus).is_file() or is_remote(corpus)):
        raise ConfigError(f"dataset.corpus: no such file: {corpus!r}")
    _weights_named(normal["model"], require_dataset)
    if mode.retrieves and not corpus and not (require_dataset and is_mirage(path)):
        raise ConfigError(
            f"dataset.corpus: {mode.name} searches a corpus and dataset {dataset['name']} has "
            'none; set dataset.corpus=FILE (JSONL {"id", "title", "text"}) or use '
            "a dataset with passages (dataset=sample_passages)"
        )
    return normal


LOCAL_PATH = ("/", "./", "../", "~")


def _weights_named(model: dict[str, Any], here: bool) -> None:
    """A ``model.path`` that names weights (a folder, ``s3://``, ``clearml://``, ``hf://``)
    replaces a packaged model's GGUF, which would otherwise run in its place unannounced;
    ``here``: a local folder must exist (on an agent it arrives as a URI)."""
    weights = str(model["path"])
    local = weights.startswith(LOCAL_PATH) or Path(weights).is_dir()
    if here and weights.startswith(LOCAL_PATH) and not Path(weights).expanduser().is_dir():
        raise ConfigError(
            f"model.path: no such folder: {weights!r}; give a model folder, s3://..., "
            "clearml://model/<id>, a hub id (org/name), or a packaged model (model=smollm2_135m)"
        )
    if model.get("gguf") and (local or is_remote(weights)):
        model["gguf"] = None


def require_storage(storage: Mapping[str, Any], why: str) -> S3:
    """The S3 storage a command cannot do without; ``why`` ends the error message."""
    s3 = S3.from_config(storage)
    if s3 is None:
        raise ConfigError(f"storage.endpoint: {why}")
    return s3


def lookup(tree: Any, dotted: str) -> Any:
    """``tree["a"]["b"]`` for ``"a.b"``; the whole tree for ``""``."""
    for part in dotted.split(".") if dotted else []:
        tree = tree[part]
    return tree


def group_choices(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))

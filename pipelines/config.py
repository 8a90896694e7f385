"""Every setting of a run, in one place: the schema of conf/ and its checks.

The YAML files in conf/ hold the values; the dataclasses below are their schema, registered
in Hydra's ConfigStore (each group file starts from its group's ``schema``), so a value of
the wrong type fails when the config is composed and a value out of range fails in
``validate``, before any model loads, naming its key. The ClearML pipeline's editable
parameters (``Args``) are the fields marked with ``knob(...)``: nothing lists them twice.
"""

import dataclasses
import functools
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf

from components.secrets import redact

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = PROJECT_ROOT / "conf"
DEFAULT_EXPERIMENT_NAME = "${model.name}_${dataset.name}"


class ConfigError(ValueError):
    """A config value cannot work; the message names the key."""


def knob(name: str, help: str, group: bool = False) -> dict[str, Any]:
    """Field metadata: this setting is a pipeline parameter (``Args/<name>``) on ClearML.
    ``group``: the value names a config group file (conf/<group>/<value>.yaml)."""
    return {"knob": name, "help": help, "group": group}


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


def _positive_int(value: Any, key: str) -> None:
    _check(
        isinstance(value, int) and not isinstance(value, bool) and value >= 1,
        key,
        f"must be an integer >= 1, got {value!r}",
    )


def _one_of(value: Any, choices: tuple[str, ...], key: str) -> None:
    _check(value in choices, key, f"{value!r} is not one of {', '.join(choices)}")


# ---- model ------------------------------------------------------------------------------


@dataclass
class GGUFSource:
    """A GGUF shipped in a PyPI package: one ``distribution``'s file, or chunk packages that
    the module ``assemble`` joins."""

    file: str = MISSING
    distribution: str | None = None
    assemble: str | None = None


@dataclass
class FewShot:
    question: str = MISSING
    answer: str = MISSING


PROMPT_FORMATS = ("chat", "completion")


@dataclass
class PromptConfig:
    format: str = "chat"
    template: str | None = None  # null: inference.prompt_template
    system_prompt: str | None = None  # null: inference.system_prompt; "": none
    few_shot: list[FewShot] = field(default_factory=list)
    stop: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        _one_of(self.format, PROMPT_FORMATS, "model.prompt.format")
        for i, shot in enumerate(self.few_shot):
            _check(
                bool(str(shot.question).strip() and str(shot.answer).strip()),
                f"model.prompt.few_shot[{i}]",
                "needs a non-empty question and answer",
            )
        _check(all(self.stop), "model.prompt.stop", f"must list non-empty strings, got {self.stop}")


@dataclass
class ModelConfig:
    name: str = field(
        default=MISSING, metadata=knob("eval_model", "model config name (conf/model/)", True)
    )
    path: str = MISSING  # hub id or local folder; with gguf: the model's original id
    gguf: GGUFSource | None = None
    revision: str | None = None
    prompt: PromptConfig = field(default_factory=PromptConfig)


# ---- dataset ----------------------------------------------------------------------------

ON_ERROR = ("strict", "skip")


@dataclass
class DatasetConfig:
    name: str = field(
        default=MISSING, metadata=knob("eval_dataset", "dataset config name (conf/dataset/)", True)
    )
    path: str = field(
        default=MISSING,
        metadata=knob(
            "eval_dataset_path", "dataset file as the agents see it; empty: as configured"
        ),
    )
    limit: int | None = field(default=None, metadata=knob("eval_limit", "first N; empty: all"))
    on_error: str = "strict"

    def __post_init__(self) -> None:
        if self.limit is not None:
            _positive_int(self.limit, "dataset.limit")
        _one_of(self.on_error, ON_ERROR, "dataset.on_error")


# ---- inference --------------------------------------------------------------------------

BACKENDS = ("auto", "transformers", "vllm")
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class VLLMOptions:
    """vLLM engine options (the vllm backend only)."""

    chunk_size: int = 1024  # prompts per engine call: finished chunks survive a kill; 0: all
    enforce_eager: bool = True
    max_num_seqs: int | None = None  # null: vLLM's default
    cpu_kvcache_space_gib: float = 2.0

    def __post_init__(self) -> None:
        _check(
            isinstance(self.chunk_size, int) and self.chunk_size >= 0,
            "inference.vllm.chunk_size",
            f"must be an integer >= 0, got {self.chunk_size!r}",
        )
        if self.max_num_seqs is not None:
            _positive_int(self.max_num_seqs, "inference.vllm.max_num_seqs")


@dataclass
class InferenceConfig:
    backend: str = "auto"
    device: str = "auto"
    dtype: str = "auto"
    batch_size: Any = field(
        default="auto", metadata=knob("eval_batch_size", "prompts per batch, or auto")
    )
    max_new_tokens: int = field(default=32, metadata=knob("eval_max_new_tokens", "per answer"))
    temperature: float = field(default=0.0, metadata=knob("eval_temperature", "0 = greedy"))
    top_p: float = 1.0
    seed: int | None = 42
    use_chat_template: bool = True
    system_prompt: str = ""
    prompt_template: str = "Question: {question}\nAnswer:"
    shards: int = 1
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.85
    vllm: VLLMOptions = field(default_factory=VLLMOptions)

    def __post_init__(self) -> None:
        _one_of(self.backend, BACKENDS, "inference.backend")
        _one_of(self.device, DEVICES, "inference.device")
        _one_of(self.dtype, DTYPES, "inference.dtype")
        if isinstance(self.batch_size, str) and self.batch_size.strip().isdigit():
            self.batch_size = int(self.batch_size)  # ClearML parameters arrive as strings
        if self.batch_size != "auto":
            _positive_int(self.batch_size, "inference.batch_size")
        _positive_int(self.max_new_tokens, "inference.max_new_tokens")
        _check(
            self.temperature >= 0,
            "inference.temperature",
            f"must be a number >= 0, got {self.temperature!r}",
        )
        _check(0 < self.top_p <= 1, "inference.top_p", f"must be in (0, 1], got {self.top_p!r}")
        _check(
            "{question}" in self.prompt_template,
            "inference.prompt_template",
            "must contain {question}",
        )
        _positive_int(self.shards, "inference.shards")
        _positive_int(self.tensor_parallel_size, "inference.tensor_parallel_size")
        share = self.gpu_memory_utilization
        _check(
            0 < share <= 1,
            "inference.gpu_memory_utilization",
            f"must be in (0, 1], got {share!r}",
        )
        _check(
            self.tensor_parallel_size == 1 or self.backend != "transformers",
            "inference.tensor_parallel_size",
            "> 1 needs inference.backend=vllm (or auto on CUDA)",
        )


# ---- where results go -------------------------------------------------------------------


@dataclass
class ExperimentConfig:
    name: str = DEFAULT_EXPERIMENT_NAME
    output_dir: str = "outputs"
    cleanup_local_artifacts: bool = False

    def __post_init__(self) -> None:
        _check(bool(str(self.name).strip()), "experiment.name", "must not be empty")


@dataclass
class Queues:
    services: str = "services"  # pipeline controllers
    cpu: str = field(default="cpu", metadata=knob("cpu_queue", "queue of the CPU steps"))
    gpu: str = field(default="gpu", metadata=knob("gpu_queue", "queue of the inference steps"))


@dataclass
class PerKind:
    cpu: str = ""
    gpu: str = ""


CLEARML_MODES = ("off", "offline", "server")


@dataclass
class ClearMLConfig:
    mode: str = "off"
    project: str = "slm-experiments"
    pipeline_version: str = "1.0.0"
    queues: Queues = field(default_factory=Queues)
    images: PerKind = field(default_factory=PerKind)
    docker_args: PerKind = field(default_factory=PerKind)
    retry_on_failure: int = 2  # transient failures only; permanent ones fail at once
    ping_timeout_s: float = 5.0
    poll_s: float = 2.0  # how often a controller looks at its steps

    def __post_init__(self) -> None:
        if str(self.mode).lower() == "false":  # YAML reads a bare `off` as false
            self.mode = "off"
        _one_of(self.mode, CLEARML_MODES, "clearml.mode")
        _check(
            isinstance(self.retry_on_failure, int) and self.retry_on_failure >= 0,
            "clearml.retry_on_failure",
            f"must be an integer >= 0, got {self.retry_on_failure!r}",
        )
        _check(self.poll_s > 0, "clearml.poll_s", f"must be > 0, got {self.poll_s!r}")


@dataclass
class StorageConfig:
    endpoint: str | None = None
    bucket: str = "clearml-artifacts"
    prefix: str = "slm-experiments"
    region: str = "us-east-1"
    max_attempts: int = 5
    connect_timeout: float = 5.0
    read_timeout: float = 30.0

    def __post_init__(self) -> None:
        _positive_int(self.max_attempts, "storage.max_attempts")


@dataclass
class SweepConfig:
    name: str | None = None
    output_dir: str = "outputs/sweeps"
    force: bool = False
    bootstrap_samples: int = 2000
    confidence: float = 0.95
    seed: int = 0
    models: list[str] = field(default_factory=list)
    datasets: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        _positive_int(self.bootstrap_samples, "sweep.bootstrap_samples")
        _check(
            0 < self.confidence < 1,
            "sweep.confidence",
            f"must be in (0, 1), got {self.confidence!r}",
        )


@dataclass
class RunConfig:
    """The whole composed config of one run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    clearml: ClearMLConfig = field(default_factory=ClearMLConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)


GROUPS: dict[str, type] = typing.get_type_hints(RunConfig)


# ---- resolvers and composition ----------------------------------------------------------


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


def register() -> None:
    """Resolvers and schemas; called on import, before any config is composed."""
    from hydra.core.config_store import ConfigStore

    if not OmegaConf.has_resolver("project_root"):
        OmegaConf.register_new_resolver("project_root", _project_root)
    if not OmegaConf.has_resolver("deploy"):
        OmegaConf.register_new_resolver("deploy", _deploy)
    store = ConfigStore.instance()
    for group, schema in GROUPS.items():
        store.store(group=group, name="schema", node=schema)


register()


def compose(overrides: list[str] | None = None) -> DictConfig:
    """The config ``make run ARGS=...`` gets, for tools, tests and the pipeline."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException

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
    from omegaconf.errors import MissingMandatoryValue

    try:
        container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as exc:
        key = getattr(exc, "full_key", None) or "config"
        raise ConfigError(f"{key}: is required (set it with {key}=VALUE)") from exc
    assert isinstance(container, dict)
    container.pop("hydra", None)
    return container


def validate(cfg: dict[str, Any], require_dataset: bool = True) -> dict[str, Any]:
    """The one check of a whole config: types against the schema, then every range.
    Returns the config normalised (defaults for keys an older config lacks, strings from
    ClearML cast). ``require_dataset=False`` where the file lives on another machine."""
    from omegaconf.errors import OmegaConfBaseException

    try:
        typed = OmegaConf.merge(OmegaConf.structured(RunConfig), cfg)
        checked = OmegaConf.to_object(typed)  # runs every __post_init__ check
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "config"
        raise ConfigError(f"{key}: {str(exc).splitlines()[0]}") from exc
    normal = dataclasses.asdict(checked)
    path = normal["dataset"]["path"]
    if require_dataset and not Path(path).is_file():
        raise ConfigError(f"dataset.path: no such file: {path!r}")
    return normal


def require_storage(storage: dict[str, Any], why: str):
    """The S3 settings a command cannot do without; ``why`` ends the error message."""
    from components.storage import StorageSettings

    settings = StorageSettings.from_config(storage or {})
    if settings is None:
        raise ConfigError(f"storage.endpoint: {why}")
    return settings


def group_choices(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


# ---- pipeline parameters (knobs) --------------------------------------------------------


@dataclass(frozen=True)
class Knob:
    name: str  # the Args/<name> parameter
    key: str  # the config key it sets
    help: str
    group: bool  # names a config group file
    nullable: bool  # an empty value means null (else: keep the configured value)


def _knobs_of(schema: type, prefix: str) -> list[Knob]:
    found = []
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        key, hint = f"{prefix}.{f.name}", hints[f.name]
        if "knob" in f.metadata:
            nullable = type(None) in typing.get_args(hint)
            meta = f.metadata
            found.append(Knob(meta["knob"], key, meta["help"], meta["group"], nullable))
        elif dataclasses.is_dataclass(hint):
            found.extend(_knobs_of(hint, key))
    return found


KNOBS: tuple[Knob, ...] = tuple(
    k for group, schema in GROUPS.items() for k in _knobs_of(schema, group)
)


def lookup(tree: Any, dotted: str) -> Any:
    """``tree["a"]["b"]`` for ``"a.b"``; the whole tree for ``""``."""
    for part in dotted.split(".") if dotted else []:
        tree = tree[part]
    return tree


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
    for two values the controller resolves on its own machine: the default experiment name
    (so an edited model or dataset renames the run) and a dataset path inside the project
    (``${project_root:...}``: the agent's copy of the project, not this machine's)."""
    container = to_container(cfg)
    if OmegaConf.to_container(cfg.experiment)["name"] == DEFAULT_EXPERIMENT_NAME:
        container["experiment"]["name"] = DEFAULT_EXPERIMENT_NAME
    path = Path(str(container["dataset"]["path"])).absolute()
    if path.is_relative_to(PROJECT_ROOT):
        container["dataset"]["path"] = f"${{project_root:{path.relative_to(PROJECT_ROOT)}}}"
    return redact(container)


def settle(
    config: dict[str, Any], args: dict[str, Any], baseline: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The config a pipeline runs with: its attached config, then its parameters over it
    (as ClearML hands them: strings). With ``baseline`` (the parameters as they were
    attached), only a parameter edited since counts, so an edit of the config object is
    not undone by an unedited parameter. A changed model or dataset name swaps in that
    group's file from conf/; an empty ``eval_dataset_path`` keeps the configured path."""
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
    return validate(to_container(node), require_dataset=False)

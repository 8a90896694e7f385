"""The schema of a run's config: one settings class per group of conf/, registered in Hydra's
ConfigStore (each group file starts from its group's ``schema``), so a value of the wrong type
fails when the config is composed and one out of range fails in ``validate``, naming its key,
before any model loads. The parts' own classes live beside the code that reads them; the
classes here are the pipeline's own (where results go, ClearML, sweeps)."""

from __future__ import annotations

import re
import typing
from dataclasses import dataclass, field

from components.dataset import DatasetConfig
from components.inference.config import InferenceConfig
from components.model_files import ModelConfig
from components.modes import ModeConfig
from components.settings import non_negative_int, one_of, positive_int, require
from components.storage import StorageConfig

# Closed-book runs keep <model>_<dataset>; the context modes add _<mode> (components/modes.py).
DEFAULT_EXPERIMENT_NAME = "${model.name}_${dataset.name}${mode_suffix:${experiment_mode.name}}"


@dataclass
class ExperimentConfig:
    name: str = DEFAULT_EXPERIMENT_NAME  # the run's folder and its S3 prefix
    output_dir: str = "outputs"
    # After every upload verified, delete the local copies (the rest of the folder goes too).
    cleanup_local_artifacts: bool = False

    def __post_init__(self) -> None:
        require(bool(str(self.name).strip()), "experiment.name", "must not be empty")


@dataclass
class Queues:
    services: str = "services"  # pipeline controllers
    cpu: str = "cpu"  # load dataset, score, publish
    gpu: str = "gpu"  # inference (`make enqueue QUEUE=x` sets this one)


@dataclass
class PerKind:
    cpu: str = ""
    gpu: str = ""


@dataclass
class Allowed:
    """What a task may ask its agent to start: image name prefixes, and docker arguments as
    regexes (each `--flag=value` item matched whole). An edited clone is held to the
    deployment's own copy (pipelines/clearml/containers.py), never to its own."""

    images: list[str] = field(default_factory=list)
    docker_args: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for i, pattern in enumerate(self.docker_args):
            try:
                re.compile(pattern)
            except re.error as exc:
                require(False, f"clearml.allowed.docker_args[{i}]", f"not a regex ({exc})")


CLEARML_MODES = ("off", "offline", "server")


@dataclass
class ClearMLConfig:
    # off: no ClearML calls at all (`make run`); offline: `make run` records an offline
    # session (a zip to import later); server: `make run` reports to the configured server.
    # `make enqueue` always uses the server.
    mode: str = "off"
    project: str = "slm-experiments"
    pipeline_version: str = "1.0.0"
    queues: Queues = field(default_factory=Queues)
    images: PerKind = field(default_factory=PerKind)  # per queue kind (conf: docker/versions.env)
    docker_args: PerKind = field(default_factory=PerKind)  # never --gpus (docs/deploy.md)
    allowed: Allowed = field(default_factory=Allowed)  # what images and docker_args may be
    retry_on_failure: int = 2  # transient failures only; permanent ones fail at once
    ping_timeout_s: float = 5.0  # `make enqueue` gives up on an unreachable server after this
    poll_s: float = 2.0  # how often a controller looks at its steps

    def __post_init__(self) -> None:
        if str(self.mode).lower() == "false":  # YAML reads a bare `off` as false
            self.mode = "off"
        one_of(self.mode, CLEARML_MODES, "clearml.mode")
        non_negative_int(self.retry_on_failure, "clearml.retry_on_failure")
        require(self.poll_s > 0, "clearml.poll_s", f"must be > 0, got {self.poll_s!r}")


@dataclass
class SweepConfig:
    name: str | None = None  # null: <models>_x_<datasets>
    output_dir: str = "outputs/sweeps"
    force: bool = False  # recompute finished combinations
    bootstrap_samples: int = 2000
    confidence: float = 0.95
    seed: int = 0
    models: list[str] = field(default_factory=list)
    datasets: list[str] = field(default_factory=list)
    modes: list[str] = field(default_factory=list)  # experiment modes; empty: the configured one

    def __post_init__(self) -> None:
        positive_int(self.bootstrap_samples, "sweep.bootstrap_samples")
        require(
            0 < self.confidence < 1,
            "sweep.confidence",
            f"must be in (0, 1), got {self.confidence!r}",
        )


@dataclass
class RunConfig:
    """The whole composed config of one run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    experiment_mode: ModeConfig = field(default_factory=ModeConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    clearml: ClearMLConfig = field(default_factory=ClearMLConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)


GROUPS: dict[str, type] = typing.get_type_hints(RunConfig)

"""`make enqueue`: check everything here, then create the pipeline's controller task on the
server (its config attached, its parameters set) and enqueue it on the services queue.

Nothing runs the pipeline in this process: the services agent runs pipelines.clearml.
controller, which builds the DAG from the task. So a check that fails here (no server, no
queue, no storage, a bad dataset line, a bad value) creates nothing at all.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import yaml
from omegaconf import DictConfig

from components.provenance import code_identity
from components.storage import StorageError
from pipelines.clearml import CONFIG_NAME
from pipelines.clearml.containers import check_containers, deployment_allowlist
from pipelines.clearml.inputs import hand_over
from pipelines.clearml.params import args_text, pipeline_args, portable_config
from pipelines.clearml.sdk import ServerNotConfigured, prepare_sdk, require_queues
from pipelines.clearml.sdk import check_server as ping
from pipelines.config import PROJECT_ROOT, ConfigError, require_storage, to_container, validate
from pipelines.inputs import check_local_questions

if TYPE_CHECKING:
    from clearml import PipelineController

CONTROLLER_MODULE = "pipelines.clearml.controller"


def check_server(clearml_cfg: dict[str, Any]) -> None:
    """The server answers and the queues the pipeline needs exist."""
    ping(float(clearml_cfg["ping_timeout_s"]))
    require_queues([clearml_cfg["queues"][k] for k in ("services", "cpu", "gpu")])


def run_checks(cfg: dict[str, Any]) -> list[Callable[[], None]]:
    """What one pipeline needs besides the server: storage, a name, a dataset without a bad
    line (when it is here; a remote one is checked where it is fetched). Separate checks, so
    each problem is reported, not only the first."""

    def storage() -> None:
        require_storage(
            cfg["storage"],
            "the pipeline's steps hand their files on through S3 (MinIO); set it, e.g. "
            'make enqueue ARGS="storage.endpoint=http://minio:9000"',
        )

    def name() -> None:
        if len(str(cfg["experiment"]["name"]).strip()) < 3:
            raise ConfigError("experiment.name: ClearML needs at least 3 characters")

    def containers() -> None:
        check_containers(cfg["clearml"], deployment_allowlist())

    return [storage, name, containers, lambda: check_local_questions(cfg["dataset"])]


class NotReady(ValueError):
    """What stops `make enqueue`, every missing prerequisite at once."""


def check_ready(cfgs: list[dict[str, Any]]) -> None:
    """Every check of what pipelines need (storage, names, datasets, then the server and its
    queues), all of them run, so a new user learns everything to fix in one message."""
    checks = [check for cfg in cfgs for check in run_checks(cfg)]
    checks.append(lambda: check_server(cfgs[0]["clearml"]))
    problems: list[str] = []
    for check in checks:
        try:
            check()
        except (ConfigError, ServerNotConfigured, StorageError, ValueError) as exc:
            if str(exc) not in problems:
                problems.append(str(exc))
    if len(problems) == 1:
        raise NotReady(problems[0])
    if problems:
        # A problem's own lines (a list of ways to fix it) sit under it, not beside it.
        listed = "\n".join("  - " + p.replace("\n", "\n    ") for p in problems)
        raise NotReady(f"{len(problems)} things to fix first:\n{listed}")


def create_pipeline(
    name: str,
    clearml_cfg: dict[str, Any],
    module: str,
    config: dict,
    args: dict[str, Any],
    tags: list[str] | None = None,
) -> PipelineController:
    """A draft controller task that runs ``module`` on the services agent, with ``config``
    attached, ``args`` as its parameters and ``tags``."""
    from clearml import PipelineController

    prepare_sdk()
    pipe = PipelineController.create(
        project_name=str(clearml_cfg["project"]),
        task_name=name,
        module=module,
        packages=[""],
        docker=clearml_cfg["images"]["cpu"],
        version=str(clearml_cfg["pipeline_version"]),
        detect_repository=False,
    )
    task = pipe.task
    try:
        task.set_configuration_object(
            CONFIG_NAME,
            config_text=yaml.safe_dump(config, sort_keys=False, allow_unicode=True),
            config_type="yaml",
            description="the whole config; edit it before enqueueing a clone (an edited Arg wins)",
        )
        values = args_text(args)
        task.set_parameters({f"Args/{k}": v for k, v in values.items()})
        code = code_identity(PROJECT_ROOT)
        task.set_user_properties(
            args_attached=json.dumps(values, sort_keys=True),
            submitted_source_sha256=code["source_sha256"],
            submitted_git=((code.get("git") or {}).get("commit") or ""),
        )
        if tags:
            task.add_tags(tags)
    except BaseException:
        task.delete()
        raise
    return pipe


def enqueue_pipeline(pipe: PipelineController, queue: str) -> str:
    """Enqueues a created pipeline; returns its web address."""
    from clearml import PipelineController

    try:
        PipelineController.enqueue(pipe, queue_name=queue)
    except BaseException:
        pipe.task.delete()
        raise
    return pipe.task.get_output_log_web_page()


def enqueue_run(
    cfg: dict[str, Any], cfg_node: DictConfig, tags: list[str] | None = None
) -> dict[str, Any]:
    """One checked experiment as a pipeline on the services queue: its id, experiment and
    web address."""
    clearml_cfg = cfg["clearml"]
    name = str(cfg["experiment"]["name"])
    s3 = require_storage(cfg["storage"], "the steps read their inputs through S3")
    prepare_sdk()
    for line in hand_over(cfg_node, s3, str(clearml_cfg["project"])):
        print(line, flush=True)
    pipe = create_pipeline(
        name, clearml_cfg, CONTROLLER_MODULE, portable_config(cfg_node), pipeline_args(cfg), tags
    )
    url = enqueue_pipeline(pipe, clearml_cfg["queues"]["services"])
    return {"id": pipe.task.id, "experiment": name, "url": url}


def submit(cfg_node: DictConfig) -> dict[str, Any]:
    """`make enqueue`: returns the pipeline's id, experiment and web address."""
    cfg = validate(to_container(cfg_node), require_dataset=False)
    check_ready([cfg])
    return enqueue_run(cfg, cfg_node)

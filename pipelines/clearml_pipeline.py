"""The pipeline on ClearML: the shared four-step definition as a PipelineController.

    make enqueue QUEUE=gpu ARGS="model=smollm2_360m dataset=nq_open dataset.limit=500"

Reads top to bottom as the DAG: parameters (the knobs a user edits after cloning), the
attached config, then the steps with their queues and images, then ``start()``. When an
agent runs a cloned controller it runs this file again: ``connect_configuration`` then
returns the edited config, and the ``${pipeline.*}`` parameters are read at each step's
launch. The DAG's shape never depends on parameter values.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from components.storage import ARTIFACT_NAMES
from pipelines import clearml_steps
from pipelines.config import (
    KNOBS,
    compose,
    knob_values,
    portable_config,
    settle_config,
    to_container,
    validate,
)
from pipelines.definition import MERGE, SHARD_PREFIX, steps_for

CONFIG_NAME = "experiment_config"
STEP_FUNCTIONS = {
    "load_dataset": clearml_steps.load_dataset,
    "inference": clearml_steps.inference,
    MERGE: clearml_steps.merge_shards,
    "score": clearml_steps.score,
    "publish": clearml_steps.publish,
}
TASK_TYPES = {
    "load_dataset": "data_processing",
    "inference": "inference",
    MERGE: "data_processing",
    "score": "qc",
    "publish": "data_processing",
}
KNOB_HELP = {
    "eval_model": "model config name (conf/model/)",
    "eval_dataset": "dataset config name (conf/dataset/)",
    "eval_dataset_path": "dataset file on the agent; empty = the dataset config's path",
    "eval_limit": "first N questions; empty = all",
    "eval_batch_size": "inference batch size (transformers backend)",
    "eval_max_new_tokens": "new tokens per answer",
    "eval_temperature": "0 = greedy",
}


def step_function(name: str):
    """The function a step's task runs (every shard step runs the same one)."""
    return clearml_steps.inference_shard if name.startswith(SHARD_PREFIX) else STEP_FUNCTIONS[name]


def dataset_hash(config: dict[str, Any]) -> str:
    """Content hash of the dataset file, part of the load step's cache key ('' if unseen)."""
    from components.artifacts import sha256_file

    path = Path(str(settle_config(config, {})["dataset"]["path"]))
    return sha256_file(path) if path.is_file() else ""


def docker_args(clearml_cfg: dict[str, Any], kind: str, inference: dict[str, Any]) -> str | None:
    """A GPU step asks for ``inference.tensor_parallel_size`` GPUs, with the shared memory
    vLLM's workers talk through; run it on a queue whose agents hold that many GPUs."""
    args = str(clearml_cfg["docker_args"][kind] or "").split()
    gpus = int(inference.get("tensor_parallel_size") or 1)
    if kind == "gpu" and gpus > 1:
        args = [a for a in args if not a.startswith(("--gpus", "--ipc"))]
        args += [f"--gpus={gpus}", "--ipc=host"]
    return " ".join(args) or None


def build_pipeline(cfg_node, gpu_queue: str | None = None):
    """A PipelineController for one experiment; nothing is enqueued here."""
    from clearml import PipelineController

    from components.storage import StorageSettings
    from pipelines.clearml_server import prepare_sdk

    prepare_sdk()
    resolved = to_container(cfg_node)
    clearml_cfg = resolved["clearml"]
    queues = dict(clearml_cfg["queues"])
    if gpu_queue:
        queues["gpu"] = gpu_queue
    settings = StorageSettings.from_config(resolved["storage"])

    pipe = PipelineController(
        name=str(resolved["experiment"]["name"]),
        project=str(clearml_cfg["project"]),
        version=str(clearml_cfg["pipeline_version"]),
        add_pipeline_tags=True,
        abort_on_failure=True,
        retry_on_failure=int(clearml_cfg["retry_on_failure"]),
        docker=clearml_cfg["images"]["cpu"],
        packages=[],
        output_uri=settings.output_uri if settings else None,
    )
    pipe.set_default_execution_queue(queues["cpu"])

    defaults = knob_values(resolved)
    defaults["eval_dataset_path"] = ""
    for knob in KNOBS:
        value = defaults[knob]
        pipe.add_parameter(knob, "" if value is None else value, description=KNOB_HELP[knob])
    pipe.add_parameter("cpu_queue", queues["cpu"], description="queue of load/score/publish")
    pipe.add_parameter("gpu_queue", queues["gpu"], description="queue of the inference step")

    import json

    connected = pipe.connect_configuration(
        portable_config(cfg_node),
        name=CONFIG_NAME,
        description="the whole experiment config; edit it here, knobs in Args win over it",
    )
    config = json.loads(json.dumps(connected))  # ClearML hands back a proxy; steps get JSON

    # The shape follows the attached config (edited in the UI: the agent rebuilds it from
    # the edit); inference.shards=N gives N inference steps side by side and a merge step.
    for spec in steps_for(config):
        shard = spec.name.startswith(SHARD_PREFIX)
        if spec.name == "load_dataset":
            kwargs: dict[str, Any] = {
                "config_json": json.dumps(config, sort_keys=True),
                **{knob: f"${{pipeline.{knob}}}" for knob in KNOBS},
                "dataset_sha256": dataset_hash(config),
            }
        elif shard:
            kwargs = {"previous": "${load_dataset.result}", "shard": spec.fixed["shard"]}
        elif spec.name == MERGE:
            kwargs = {"previous": "${load_dataset.result}"}
        else:
            kwargs = {"previous": f"${{{spec.parents[-1]}.result}}"}
        kind = spec.queue
        extra = {}
        if spec.name == "publish":
            extra = {
                "monitor_metrics": [("metrics", "token_recall"), ("metrics", "exact_match")],
                "monitor_artifacts": list(ARTIFACT_NAMES.values()),
            }
        pipe.add_function_step(
            name=spec.name,
            function=step_function(spec.name),
            function_kwargs=kwargs,
            function_return=["result"],
            parents=list(spec.parents),
            execution_queue=f"${{pipeline.{kind}_queue}}",
            docker=clearml_cfg["images"][kind],
            docker_args=docker_args(clearml_cfg, kind, config["inference"]),
            task_type=TASK_TYPES["inference" if shard else spec.name],
            packages=[],
            cache_executed_step=spec.name == "load_dataset",
            **extra,
        )
    return pipe


def describe(pipe) -> dict[str, Any]:
    """The DAG as built: each step's parents, queue, image and docker arguments."""
    import json

    from clearml import Task

    controller = Task.current_task()
    steps = {}
    for name, node in pipe.get_pipeline_dag().items():
        definition = json.loads(controller.get_configuration_object(name) or "{}")
        steps[name] = {
            "parents": list(node.parents),
            "queue": node.queue,
            "docker": node.explicit_docker_image,
            "docker_args": (definition.get("container") or {}).get("arguments") or "",
        }
    return {"id": controller.id, "name": controller.name, "steps": steps}


def enqueue(
    overrides: list[str],
    gpu_queue: str | None = None,
    record: str | None = None,
    dry_run: bool = False,
) -> str:
    """Checks server and storage, builds the pipeline, prints its address, enqueues it.

    ``record``: a file that gets the pipeline's id, name and address before it is enqueued
    (`make enqueue-sweep` collects them). ``dry_run``: build only (offline mode works),
    print the DAG, enqueue nothing.
    """
    import json

    from clearml import Task

    from pipelines.clearml_server import check_server
    from pipelines.config import require_storage

    cfg_node = compose(overrides)
    resolved = to_container(cfg_node)
    if not dry_run:
        check_server(float(resolved["clearml"]["ping_timeout_s"]))
    require_storage(
        resolved["storage"],
        "the pipeline's steps exchange files through S3 (MinIO); "
        'set it, e.g. make enqueue ARGS="storage.endpoint=http://minio:9000"',
    )
    if Path(str(resolved["dataset"]["path"])).is_file():
        validate(resolved)
    pipe = build_pipeline(cfg_node, gpu_queue)
    task = Task.current_task()
    url = task.get_output_log_web_page() if task is not None and not dry_run else ""
    if record:
        from components.artifacts import write_json_atomic

        experiment = str(resolved["experiment"]["name"])
        write_json_atomic(record, {"id": task.id, "experiment": experiment, "url": url})
    if dry_run:
        print("DAG=" + json.dumps(describe(pipe)), flush=True)
        return ""
    print(f"pipeline {resolved['experiment']['name']}: {url}", flush=True)
    pipe.start(queue=resolved["clearml"]["queues"]["services"])
    return url


def main(argv: list[str] | None = None) -> int:
    import argparse

    from components.storage import StorageError
    from pipelines.clearml_server import ServerNotConfigured
    from pipelines.config import ConfigError

    parser = argparse.ArgumentParser(description="Create and enqueue the evaluation pipeline.")
    parser.add_argument("--gpu-queue", dest="enqueue_gpu_queue", default=None, help="GPU queue")
    parser.add_argument("--record", dest="enqueue_record", default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--dry-run", dest="enqueue_dry_run", action="store_true", help="build, print, no enqueue"
    )
    parser.add_argument("enqueue_overrides", nargs="*", help="Hydra overrides: model=...")
    args = parser.parse_args(argv)
    try:
        enqueue(
            args.enqueue_overrides,
            args.enqueue_gpu_queue or None,
            args.enqueue_record,
            args.enqueue_dry_run,
        )
    except (ServerNotConfigured, ConfigError, StorageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

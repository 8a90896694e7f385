"""`make watch PROJECT=<models project> DATASETS=a,b`: checkpoints evaluated as they appear.

`make watch` checks what the pipelines will need (as `make enqueue` does), then creates a
watcher task that runs this module on the services queue. There a ClearML TriggerScheduler
looks at the model registry every ``watch.poll_s``: each model published in PROJECT (or, with
``watch.tag``, given that tag) is evaluated on every dataset by the pipeline `make enqueue`
creates, with ``model.path=clearml://model/<id>``, once. Each pipeline carries the tag
``watch:<name>``; each that completes updates the leaderboard on the watcher task (a table, a
plot and leaderboard.{csv,md,png}), which `make leaderboard RUNS=<pipeline ids>` also builds.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from components.storage import safe_name
from pipelines.clearml.report import reporter
from pipelines.clearml.sdk import prepare_sdk
from pipelines.clearml.submit import check_ready, enqueue_run
from pipelines.config import ConfigError, compose, require_storage, to_container, validate
from pipelines.executor import RunContext
from pipelines.steps import leaderboard_step
from pipelines.stores import S3Store

if TYPE_CHECKING:
    from clearml import Task

WATCH_MODULE = "pipelines.clearml.watch"
WATCH_CONFIG = "watch_config"


def watch_tag(name: str) -> str:
    return f"watch:{safe_name(name)}"


def run_config(watch: dict[str, Any], dataset: str, model_id: str | None, name: str) -> tuple:
    """(config, its node) of one pipeline: the user's overrides, the dataset, and the model
    (None: the configured one, as `make watch` checks it)."""
    overrides = [f"dataset={dataset}", *watch["overrides"]]
    if model_id is not None:
        overrides += [f"model.path=clearml://model/{model_id}", "model.gguf=null"]
        overrides.append(f"experiment.name={safe_name(name)}_{dataset}")
    node = compose(overrides)
    return validate(to_container(node), require_dataset=False), node


def start_watch(watch: dict[str, Any]) -> dict[str, Any]:
    """The watcher task, created and enqueued once every check passed; its id and address."""
    from clearml import Task

    if not watch["datasets"]:
        raise ConfigError("watch.datasets: name at least one dataset (DATASETS=sample,nq_open)")
    cfgs = [run_config(watch, d, None, "")[0] for d in watch["datasets"]]
    check_ready(cfgs)
    clearml_cfg = cfgs[0]["clearml"]
    name = watch["name"] or watch["project"]
    prepare_sdk()
    if Task.get_project_id(watch["project"]) is None:
        raise ConfigError(
            f"watch.project: no project {watch['project']!r} on the server; name the project "
            "your training tasks register their models in (the web UI's Models tab)"
        )
    task = Task.create(
        project_name=str(clearml_cfg["project"]),
        task_name=f"watch {name}",
        task_type="service",
        module=WATCH_MODULE,
        packages=[""],
        docker=clearml_cfg["images"]["cpu"],
        detect_repository=False,
    )
    config = {**watch, "name": name, "tag_of_runs": watch_tag(name)}
    task.set_configuration_object(
        WATCH_CONFIG,
        config_text=yaml.safe_dump(config, sort_keys=False),
        config_type="yaml",
        description="what the watcher watches and the overrides of every pipeline it starts",
    )
    Task.enqueue(task, queue_name=clearml_cfg["queues"]["services"])
    return {"id": task.id, "name": name, "url": task.get_output_log_web_page()}


def evaluate(watch: dict[str, Any], model_id: str) -> list[dict[str, Any]]:
    """A new model on every dataset: one pipeline each."""
    from clearml import InputModel

    model = InputModel(model_id=model_id)
    started = []
    for dataset in watch["datasets"]:
        cfg, node = run_config(watch, dataset, model_id, model.name)
        entry = enqueue_run(cfg, node, tags=[watch["tag_of_runs"]])
        print(f"model {model.name} ({model_id}) x {dataset}: pipeline {entry['id']}", flush=True)
        started.append(entry)
    return started


def refresh_leaderboard(watch: dict[str, Any], task: Task) -> None:
    """Every completed pipeline of this watcher, ranked, reported on the watcher task."""
    from clearml import Task

    found = Task.get_tasks(tags=[watch["tag_of_runs"]], task_filter={"status": ["completed"]})
    runs = [
        {
            "id": t.id,
            "experiment": t.name,
            "model": t.name,
            "dataset": t.get_parameter("Args/eval_dataset"),
            "url": t.get_output_log_web_page(),
            "status": "completed",
            "reused": False,
        }
        for t in sorted(found, key=lambda t: t.name)
    ]
    cfg = run_config(watch, watch["datasets"][0], None, "")[0]
    s3 = require_storage(cfg["storage"], "the leaderboard reads each run's results from S3")
    with tempfile.TemporaryDirectory(prefix="slm-watch-") as work:
        run = RunContext(
            experiment=f"watch {watch['name']}",
            run_id=task.id,
            started_at="",
            dir=Path(work),
            store=S3Store(s3, f"watch_{watch['name']}", task.id),
            storage=s3,
            report=reporter(task),
        )
        out = leaderboard_step(runs, cfg["sweep"], f"watch {watch['name']}", run)
    print(f"leaderboard: {len(out['rows'])} run(s), {len(out['missing'])} without results")


def main() -> int:
    from clearml import Task
    from clearml.automation import TriggerScheduler

    if Task.running_locally():
        print("error: the services agent runs this module; use `make watch`", file=sys.stderr)
        return 2
    prepare_sdk()
    task = Task.init(auto_connect_frameworks=False, auto_connect_arg_parser=False)
    watch = yaml.safe_load(task.get_configuration_object(WATCH_CONFIG) or "{}")
    scheduler = TriggerScheduler(pooling_frequency_minutes=float(watch["poll_s"]) / 60)
    scheduler.add_model_trigger(
        schedule_function=lambda model_id: evaluate(watch, model_id),
        trigger_project=watch["project"],
        trigger_on_publish=None if watch["tag"] else True,
        trigger_on_tags=[watch["tag"]] if watch["tag"] else None,
        name=f"evaluate {watch['name']}",
    )
    scheduler.add_task_trigger(
        schedule_function=lambda _task_id: refresh_leaderboard(watch, task),
        trigger_on_status=["completed"],
        trigger_required_tags=[watch["tag_of_runs"]],
        name=f"leaderboard {watch['name']}",
    )
    print(f"watching models of {watch['project']!r} for {watch['datasets']}", flush=True)
    scheduler.start()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The pipeline controller: what the services agent runs for every enqueued pipeline.

    python -m pipelines.clearml.controller      (started by clearml-agent, never by hand)

It reads its configuration from its own task, which is what `make enqueue` attached and
what the web UI edits (the ``experiment_config`` object, then the ``Args`` over it), never
from a command line. Then it reads top to bottom as the DAG: parameters, one step per entry
of the pipeline definition (pipelines.dag) with the queue, image and parents the definition
gives, each step receiving its parents' outputs, and ``start()``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import psutil
import yaml

from components.provenance import code_identity, utc_now
from components.secrets import redact
from components.storage import ARTIFACT_NAMES
from pipelines.clearml import CONFIG_NAME
from pipelines.clearml.failures import RetryPolicy
from pipelines.clearml.params import KNOBS, args_text, pipeline_args, settle
from pipelines.clearml.sdk import ServerNotConfigured, prepare_sdk, require_queues
from pipelines.clearml.step import run_step
from pipelines.config import PROJECT_ROOT, ConfigError, require_storage
from pipelines.dag import StepSpec, config_for, steps_for

if TYPE_CHECKING:
    from clearml import PipelineController, Task

NON_RESPONSIVE = "forced stop (non-responsive)"
MAX_LOST_AGENT_RELAUNCHES = 3
# How long a failing controller leaves the services agent to hand it over: 6 of its polls
# plus 6 s (the handover measured 5 s after the start, polling every 1 s).
HANDOVER_POLLS, HANDOVER_MARGIN_S = 6, 6.0


def step_kwargs(spec: StepSpec, cfg: dict[str, Any], run: dict[str, Any]) -> dict[str, str]:
    """A step's arguments: its definition, the config it reads, the run's settings, and a
    reference to each parent's outputs (the edges of the DAG)."""
    kwargs = {
        "spec": json.dumps(spec.to_dict(), sort_keys=True),
        "config": json.dumps(config_for(spec, cfg), sort_keys=True, ensure_ascii=False),
        "run": json.dumps(run, sort_keys=True),
    }
    for name, text in kwargs.items():
        if "${" in text:  # ClearML would read it as a reference to another step
            raise ConfigError(
                f"{spec.name}: its {name} holds '${{': {text[text.index('${') :][:60]}"
            )
    kwargs.update({parent: f"${{{parent}.outputs}}" for parent in spec.parents})
    return kwargs


def monitors(spec: StepSpec) -> dict[str, Any]:
    """What the pipeline shows of a reporting step: its metrics and its artifacts."""
    if spec.function == "publish_step":
        return {
            "monitor_metrics": [("metrics", "token_recall"), ("metrics", "exact_match")],
            "monitor_artifacts": list(ARTIFACT_NAMES.values()),
        }
    if spec.function == "leaderboard_step":
        return {"monitor_artifacts": [f"leaderboard_{k}" for k in ("csv", "md", "png")]}
    return {}


def build_controller(
    cfg: dict[str, Any],
    name: str,
    steps: Sequence[StepSpec],
    policy: RetryPolicy | None = None,
    parameters: dict[str, tuple[Any, str]] | None = None,
    experiment: str | None = None,
) -> PipelineController:
    """A PipelineController over ``steps`` (the current task becomes its task):
    ``parameters`` name -> (value, help) are its Args."""
    from clearml import PipelineController

    clearml_cfg = cfg["clearml"]
    settings = require_storage(cfg["storage"], "the steps hand their files on through S3")
    pipe = PipelineController(
        name=name,
        project=str(clearml_cfg["project"]),
        version=str(clearml_cfg["pipeline_version"]),
        pool_frequency=float(clearml_cfg["poll_s"]) / 60,
        add_pipeline_tags=True,
        abort_on_failure=True,
        retry_on_failure=policy,
        docker=clearml_cfg["images"]["cpu"],
        packages=[],
        output_uri=settings.output_uri,
    )
    texts = args_text({k: v for k, (v, _) in (parameters or {}).items()})
    for key, (_, help_text) in (parameters or {}).items():
        pipe.add_parameter(key, texts[key], description=help_text)
    run = {
        "experiment": experiment or str(cfg["experiment"]["name"]),
        "storage": redact(cfg["storage"]),
        "code": code_identity(PROJECT_ROOT),
        "started_at": utc_now(),
    }
    queues, images, docker_args = (clearml_cfg[k] for k in ("queues", "images", "docker_args"))
    relaunch = LostAgentRelaunch()
    for spec in steps:
        pipe.add_function_step(
            name=spec.name,
            function=run_step,
            function_kwargs=step_kwargs(spec, cfg, run),
            function_return=["outputs"],
            parents=list(spec.parents),
            execution_queue=queues[spec.queue],
            docker=images[spec.queue],
            docker_args=docker_args[spec.queue] or None,
            task_type=spec.task_type,
            packages=[],
            cache_executed_step=False,
            status_change_callback=relaunch,
            **monitors(spec),
        )
    return pipe


def evaluation_parameters(cfg: dict[str, Any], args: dict | None) -> dict[str, tuple[Any, str]]:
    values = pipeline_args(cfg, args)
    return {k.name: (values[k.name], k.help) for k in KNOBS}


class LostAgentRelaunch:
    """A step's status callback: re-enqueues a step whose agent died. The server's watchdog
    stops such a task as non-responsive, and ClearML's controller would then either wait
    for it forever or, reading a stale status message, take it for aborted and skip its
    children. Called in the controller's own loop, before it looks at the step again."""

    def __init__(self) -> None:
        self.relaunched: dict[str, int] = {}

    def __call__(self, pipeline: PipelineController, node: Any, previous_status: str) -> None:
        job = node.job
        if job is None or job.status(force=True) != "stopped":
            return
        job.task.reload()
        if str(job.task.data.status_message).lower() != NON_RESPONSIVE:
            return
        count = self.relaunched.get(node.name, 0)
        if count >= MAX_LOST_AGENT_RELAUNCHES:
            return
        self.relaunched[node.name] = count + 1
        pipeline.get_logger().report_text(
            f"step {node.name}: its agent stopped answering (worker {job.task.data.last_worker}"
            f"); re-enqueued on {node.queue}, {count + 1} of {MAX_LOST_AGENT_RELAUNCHES}"
        )
        job.launch(queue_name=node.queue)
        job.status(force=True)  # queued now: the loop must not see the stop it just undid


def outcome(pipe: PipelineController, policy: RetryPolicy) -> str | None:
    """None when every step completed, else why the pipeline failed."""
    failed = []
    for name, node in pipe.get_pipeline_dag().items():
        if node.job is not None and node.job.is_completed():
            continue
        if name in policy.final:
            failed.append(f"step {name} failed ({policy.final[name]})")
        elif node.job is not None and node.job.is_failed():
            failed.append(f"step {name} failed (see its log)")
    if not failed:
        skipped = [n for n, node in pipe.get_pipeline_dag().items() if node.job is None]
        return f"steps not run: {', '.join(skipped)}" if skipped else None
    return "; ".join(failed)


def run_pipeline(task: Task, pipe: PipelineController, policy: RetryPolicy) -> int:
    """Starts the pipeline here (on the services agent) and waits for it; a failure
    leaves its reason on this task. Not ``start()``'s own wait: its ``stop()`` marks the task
    failed ("Pipeline step failed") before the reason is written, which would then follow."""
    pipe.start(wait=False)
    pipe.wait()
    reason = outcome(pipe, policy)
    if reason:
        pipe.update_execution_plot()
        return fail(task, reason)
    pipe.stop()
    print("pipeline completed", flush=True)
    return 0


def attach() -> Task | None:
    """This controller's task, when an agent runs it; None (and a message) by hand."""
    from clearml import Task

    if Task.running_locally():
        print("error: the services agent runs this module; use `make enqueue`", file=sys.stderr)
        return None
    prepare_sdk()
    return Task.init(auto_connect_frameworks=False, auto_connect_arg_parser=False)


def attached_config(task: Task) -> dict[str, Any]:
    """The configuration object as the task holds it now (edited in the UI, perhaps)."""
    text = task.get_configuration_object(CONFIG_NAME)
    if not text:
        raise ConfigError(f"the task has no {CONFIG_NAME} configuration object")
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{CONFIG_NAME}: not valid YAML ({exc})") from exc
    if not isinstance(config, dict):
        raise ConfigError(f"{CONFIG_NAME}: expected a mapping, got {type(config).__name__}")
    return config


def main() -> int:
    task = attach()
    if task is None:
        return 2
    try:
        args = task.get_parameters_as_dict().get("Args", {})
        attached = (task.get_user_properties(value_only=True) or {}).get("args_attached")
        cfg = settle(attached_config(task), args, json.loads(attached) if attached else None)
        require_queues([cfg["clearml"]["queues"][k] for k in ("cpu", "gpu")])
        policy = RetryPolicy(int(cfg["clearml"]["retry_on_failure"]))
        parameters = evaluation_parameters(cfg, args)
        steps = steps_for(cfg)
        forget_other_dag(task, steps)
        pipe = build_controller(cfg, task.name, steps, policy, parameters)
    except (ConfigError, ServerNotConfigured) as exc:
        return fail(task, f"config: {exc}")
    # The Args as this run settled them, and the baseline a clone of it starts from.
    ran_with = args_text({k: v for k, (v, _) in parameters.items()})
    task.update_parameters({f"Args/{k}": v for k, v in ran_with.items()})
    task.set_user_properties(args_attached=json.dumps(ran_with, sort_keys=True))
    return run_pipeline(task, pipe, policy)


def forget_other_dag(task: Task, steps: Sequence[StepSpec]) -> None:
    """A clone whose edit changes the DAG's shape (a retrieval mode, more shards) must not
    run with what ClearML stored on the task it was cloned from: the DAG (``Pipeline``) and
    each step's task definition (a configuration object named after the step), whose old
    parent references would reach the new steps. Both are dropped, so the pipeline is laid
    out afresh from ``steps``."""
    stored = task.get_configuration_object("Pipeline")
    try:
        names = set(json.loads(stored)) if stored else None
    except ValueError:
        names = set()
    if names is None or names == {s.name for s in steps}:
        return
    print(f"the DAG changed ({sorted(names)} -> {[s.name for s in steps]}); laid out afresh")
    # The SDK's DeleteConfigurationRequest checks its list argument as a dict: the call direct.
    reply = task.session.send_request(
        "tasks",
        "delete_configuration",
        method="post",
        json={
            "task": task.id,
            "configuration": sorted({"Pipeline", *names, *(s.name for s in steps)}),
            "force": True,
        },
    )
    if not reply.ok:
        raise ConfigError(f"could not drop the stored DAG of the cloned task: {reply.text[:300]}")
    task.reload()


def wait_for_agent_handover() -> None:
    """A services agent in docker mode watches the task it started until it reads, in the
    container's output, that the task's own code has begun: a task that turns failed before
    then is killed and marked stopped, its reason lost (clearml-agent 3.0.3; measured here
    about 5 s after the start with a 1 s poll). A controller that fails sooner waits it out."""
    poll = float(os.environ.get("CLEARML_AGENT_QUEUE_POLL_FREQ_SEC") or 5.0)  # as the agent does
    age = time.time() - psutil.Process().create_time()
    left = HANDOVER_POLLS * poll + HANDOVER_MARGIN_S - age
    if left > 0:
        print(f"waiting {left:.0f} s for the services agent to hand this task over", flush=True)
        time.sleep(left)


def fail(task: Task, reason: str) -> int:
    """The reason where a user looks: the controller's log, its ``failure_reason`` property
    and its status message. Returns the exit code: 0, because the agent marks a task whose
    process exits non-zero failed again, with a message of its own ("Changed by
    clearml-agent ..."), while it cannot turn a failed task completed."""
    print(f"pipeline failed: {reason}", file=sys.stderr, flush=True)
    wait_for_agent_handover()
    task.get_logger().report_text(f"pipeline failed: {reason}")
    task.set_user_properties(failure_reason=reason[:1000])
    task.flush(wait_for_uploads=True)  # the log first: a failed task takes no more of it
    task.mark_failed(status_reason=reason[:1000], status_message=reason[:1000], force=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

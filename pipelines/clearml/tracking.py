"""`make run` with ``clearml.mode=offline|server``: the local pipeline, recorded as a task.

offline: a ClearML offline session (a zip) that ``clearml-task --import-offline-session``
or ``Task.import_offline_session`` uploads later. server: reported live to the configured
server (checked first, so a missing server fails fast instead of reaching the demo server).
"""

from __future__ import annotations

from typing import Any

from pipelines.clearml import CONFIG_NAME
from pipelines.config import knob_values, portable_config

NO_AUTO_CONNECT = {
    "detect_repository": False,
    "hydra": False,
    "pytorch": False,
    "tensorflow": False,
    "tensorboard": False,
    "matplotlib": False,
    "joblib": False,
}


def open_task(clearml_cfg: dict[str, Any], name: str, task_type: str):
    """A task for work on this machine: an offline session (``mode=offline``) or on the
    configured server (checked first, so a missing one fails fast)."""
    from clearml import Task

    from pipelines.clearml.sdk import check_server, prepare_sdk

    prepare_sdk()
    if clearml_cfg["mode"] == "offline":
        Task.set_offline(True)
    else:
        check_server(float(clearml_cfg["ping_timeout_s"]))
    return Task.init(
        project_name=str(clearml_cfg["project"]),
        task_name=name,
        task_type=task_type,
        # No framework hooks (we report what we measure) and no repository scan: the scan
        # of a venv holding torch and vLLM took minutes; results.json records the code.
        auto_connect_frameworks=NO_AUTO_CONNECT,
        auto_connect_arg_parser=False,
        reuse_last_task_id=False,
    )


def close_task(task) -> str | None:
    """Closes the task; offline, returns the path of its session zip."""
    from clearml import Task

    folder = task.get_offline_mode_folder() if Task.is_offline() else None
    task.close()
    return f"{folder}.zip" if folder else None


def run_tracked(cfg_node, container: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """The local run, its publish step reporting to the task; returns the step outputs and,
    offline, the path of the session zip."""
    from pipelines.clearml.report import reporter
    from pipelines.local import run_local

    task = open_task(container["clearml"], str(container["experiment"]["name"]), "testing")
    task.connect(knob_values(container), name="Args")
    task.connect_configuration(portable_config(cfg_node), name=CONFIG_NAME)
    outputs = run_local(container, run_id=str(task.id), report=reporter(task))
    return outputs, close_task(task)

"""`make run` with ``clearml.mode=offline|server``: the local pipeline, recorded as a task.

offline: a ClearML offline session (a zip) that ``clearml-task --import-offline-session``
or ``Task.import_offline_session`` uploads later. server: reported live to the configured
server (checked first, so a missing server fails fast instead of reaching the demo server).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.clearml import CONFIG_NAME
from pipelines.clearml.params import knob_values, portable_config
from pipelines.clearml.report import reporter
from pipelines.clearml.sdk import check_server, prepare_sdk
from pipelines.local import run_local

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
    task = open_task(container["clearml"], str(container["experiment"]["name"]), "testing")
    task.connect(knob_values(container), name="Args")
    task.connect_configuration(portable_config(cfg_node), name=CONFIG_NAME)
    outputs = run_local(container, run_id=str(task.id), report=reporter(task))
    return outputs, close_task(task)


def report_comparison(
    cfg: dict[str, Any],
    comparison: dict[str, Any],
    label_a: str,
    label_b: str,
    paths: dict[str, Path],
) -> str | None:
    """A ClearML task (offline: a session zip) with the numbers, the table and the files."""
    task = open_task(cfg["clearml"], f"compare {label_b} vs {label_a}", "qc")
    task.connect({"a": label_a, "b": label_b}, name="Args")
    logger = task.get_logger()
    diff = comparison["difference"]
    for key, value in (
        ("recall_a", comparison["mean_a"]),
        ("recall_b", comparison["mean_b"]),
        ("difference_b_minus_a", diff["mean"]),
        ("difference_ci_low", diff["ci_low"]),
        ("difference_ci_high", diff["ci_high"]),
        ("questions_differing", len(comparison["rows"])),
    ):
        if value is not None:
            logger.report_single_value(key, float(value))
    header = ["question_id", "question", "A", "B", "recall A", "recall B", "B - A"]
    table = [header] + [
        [
            r["question_id"],
            r["question"],
            r["prediction_a"],
            r["prediction_b"],
            r["recall_a"],
            r["recall_b"],
            r["difference"],
        ]
        for r in comparison["rows"][:500]
    ]
    logger.report_table("comparison", "differing questions", iteration=0, table_plot=table)
    for key, path in paths.items():
        task.upload_artifact(f"compare_{key}", artifact_object=Path(path), wait_on_upload=True)
    return close_task(task)

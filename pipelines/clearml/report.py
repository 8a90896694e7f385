"""What ClearML shows for a finished run: single values, scalars, a histogram, a table,
and each artifact with its size, sha256 and link. The publish step calls it through the
run context, whether the run's task is an offline/server `make run` or a pipeline step."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from components.leaderboard import COLUMNS, plot, sort_rows
from components.memory import gib, highest_gpu_bytes


def report_results(
    task: Any,
    results: dict[str, Any],
    highlights: dict[str, Any],
    artifacts: dict[str, dict[str, Any]],
) -> None:
    """``highlights``: components.predictions.highlights of predictions.json. ``artifacts``:
    name -> {url or path, bytes, sha256}. URLs are registered as links (the bytes already
    live in S3); local paths are uploaded by ClearML."""
    logger = task.get_logger()
    peak_gpu = highest_gpu_bytes(results["memory"].get("peak_gpu_bytes")) or 0
    values = {
        "token_recall": results["token_recall"]["mean"],
        "exact_match": results["exact_match"],
        "questions_per_s": results["throughput"]["questions_per_s"],
        "output_tokens_per_s": results["throughput"]["output_tokens_per_s"],
        "peak_rss_gib": gib(results["memory"]["peak_rss_bytes"]),
        "peak_gpu_gib": gib(peak_gpu),
        "examples": results["counts"]["examples"],
        "unscorable": results["counts"]["unscorable"],
    }
    for name, value in values.items():
        if value is not None:
            logger.report_single_value(name, float(value))
    for name in ("token_recall", "exact_match"):
        if values[name] is not None:
            logger.report_scalar("metrics", name, float(values[name]), iteration=0)
    for stage, seconds in results["timing"]["stage_seconds"].items():
        logger.report_scalar("seconds per stage", stage, float(seconds), iteration=0)

    logger.report_histogram(
        "token recall",
        "examples",
        values=highlights["recall_bins"],
        iteration=0,
        xlabels=[f"{i / 10:.1f}-{(i + 1) / 10:.1f}" for i in range(10)],
        xaxis="token recall",
        yaxis="examples",
    )
    header = ["question_id", "token_recall", "question", "prediction", "answers"]
    for series in ("worst", "best"):
        table = [header] + [
            [
                p["question_id"],
                round(p["token_recall"], 3),
                p["question"],
                p["prediction"],
                " | ".join(p["answers"]),
            ]
            for p in highlights[series]
        ]
        logger.report_table("predictions", series, iteration=0, table_plot=table)

    for name, info in artifacts.items():
        if info.get("url"):
            register_json_link(task, name, info)
        else:
            task.upload_artifact(
                name,
                artifact_object=Path(info["path"]),
                metadata={"bytes": info["bytes"], "sha256": info["sha256"]},
                wait_on_upload=True,
            )


def register_json_link(task: Any, name: str, info: dict[str, Any]) -> None:
    """A JSON file already verified in S3, registered on the task without another upload,
    as a JSON artifact: `Task.get_task(id).artifacts[name].get()` then returns its content
    (a bare URL, as `upload_artifact` registers it, is "custom" and get() returns a path)."""
    from clearml.backend_api.services import tasks

    artifact = tasks.Artifact(
        key=name,
        type="JSON",
        uri=info["url"],
        content_size=info["bytes"],
        hash=info["sha256"],
        timestamp=int(time.time()),
        type_data=tasks.ArtifactTypeData(content_type="application/json"),
        display_data=[("bytes", str(info["bytes"])), ("sha256", info["sha256"])],
    )
    task._add_artifacts([artifact])  # what upload_artifact ends with, type and all


def report_leaderboard(task: Any, summary: dict[str, Any], runs: list[dict[str, Any]]) -> None:
    """A sweep's leaderboard as a table and a plot, every run linked, the files as artifacts."""
    logger = task.get_logger()
    rows = sort_rows(summary["rows"])
    table = [list(COLUMNS)] + [[r[c] for c in COLUMNS] for r in rows]
    logger.report_table("leaderboard", "runs", iteration=0, table_plot=table)
    if rows:
        logger.report_matplotlib_figure(
            "leaderboard", "token recall", figure=plot(rows, task.name), iteration=0
        )
    failed = {m["id"]: m["error"] for m in summary["missing"]}
    links = [["model", "dataset", "pipeline", "status", "reused", "results"]]
    links += [
        [
            r["model"],
            r["dataset"],
            r.get("url") or r["id"],
            r.get("status", ""),
            r["reused"],
            failed.get(r["id"], "ok"),
        ]
        for r in runs
    ]
    logger.report_table("leaderboard", "pipelines", iteration=0, table_plot=links)
    for key, path in summary["paths"].items():
        task.upload_artifact(f"leaderboard_{key}", artifact_object=Path(path), wait_on_upload=True)


def reporter(task: Any):
    """``run.report`` of a step that reports to ``task``: a finished run's results
    (the publish step) or a sweep's leaderboard (its summary step)."""

    def report(**what: Any) -> None:
        if "results" in what:
            report_results(task, what["results"], what["highlights"], what["artifacts"])
        if "leaderboard" in what:
            report_leaderboard(task, what["leaderboard"], what["runs"])

    return report

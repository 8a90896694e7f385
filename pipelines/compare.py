"""`make compare A=... B=...`: two runs question by question.

    make compare A=smollm2_135m_sample B=gemma3_270m_sample
    make compare A=outputs/a B=outputs/b
    make compare A=<task id> B=<task id> ARGS="storage.endpoint=http://minio:9000"

A and B are run folders, experiment names under experiment.output_dir, or ClearML task ids
(their files are fetched from S3 and checked against their sha256). Writes compare.md and
compare.csv under ``<output_dir>/compare/<A>_vs_<B>/``; with clearml.mode=offline|server, or
task ids, the comparison is also recorded as a ClearML task with the table.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipelines.runs import TASK_ID, resolve_run


def _identity(run_dir: Path) -> tuple[str, str, str | None]:
    """(experiment, label, dataset sha256) from results.json (resolve_run found it there)."""
    data = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
    sha = (data.get("dataset") or {}).get("sha256")
    return data["experiment"], f"{data['experiment']}.{data['run_id']}", sha


def compare(ref_a: str, ref_b: str, cfg: dict[str, Any]) -> dict[str, Any]:
    from components.artifacts import write_json_atomic, write_text_atomic
    from components.compare import compare_predictions, to_csv, to_markdown
    from components.stats import bootstrap_options
    from components.storage import safe_name

    dir_a, dir_b = resolve_run(ref_a, cfg), resolve_run(ref_b, cfg)
    (exp_a, label_a, sha_a), (exp_b, label_b, sha_b) = _identity(dir_a), _identity(dir_b)
    preds_a = json.loads((dir_a / "predictions.json").read_text(encoding="utf-8"))
    preds_b = json.loads((dir_b / "predictions.json").read_text(encoding="utf-8"))
    comparison = compare_predictions(preds_a, preds_b, **bootstrap_options(cfg["sweep"]))
    comparison["same_dataset_file"] = None if not (sha_a and sha_b) else sha_a == sha_b
    # Two runs of one experiment (a pipeline and its clone) are told apart by their run ids.
    name = safe_name(f"{exp_a}_vs_{exp_b}" if exp_a != exp_b else f"{label_a}_vs_{label_b}")
    out = Path(cfg["experiment"]["output_dir"]) / "compare" / name
    paths = {
        "md": write_text_atomic(out / "compare.md", to_markdown(comparison, label_a, label_b)),
        "csv": write_text_atomic(out / "compare.csv", to_csv(comparison)),
        "json": write_json_atomic(out / "compare.json", {"a": label_a, "b": label_b, **comparison}),
    }
    mode = str(cfg["clearml"].get("mode") or "off")
    tracked = mode != "off" or TASK_ID.fullmatch(ref_a) or TASK_ID.fullmatch(ref_b)
    session = _report(cfg, comparison, label_a, label_b, paths) if tracked else None
    return {
        "comparison": comparison,
        "paths": paths,
        "session": session,
    }


def _report(
    cfg: dict[str, Any],
    comparison: dict[str, Any],
    label_a: str,
    label_b: str,
    paths: dict[str, Path],
) -> str | None:
    """A ClearML task (offline: a session zip) with the numbers, the table and the files."""
    from pipelines.clearml.tracking import close_task, open_task

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

"""`make compare A=... B=...`: two runs question by question; `make context-report`: a
closed-book run against the same model's context-mode runs.

    make compare A=smollm2_135m_sample B=gemma3_270m_sample
    make compare A=outputs/a B=outputs/b
    make compare A=<task id> B=<task id> ARGS="storage.endpoint=http://minio:9000"

A and B are run folders, experiment names under experiment.output_dir, or ClearML task ids
(their files are fetched from S3 and checked against their sha256). Writes compare.md and
compare.csv under ``<output_dir>/compare/<A>_vs_<B>/``; the CLI records it as a ClearML task
too, with clearml.mode=offline|server or task ids (pipelines/clearml/tracking.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from components.atomic import write_json_atomic, write_text_atomic
from components.compare import compare_predictions, to_csv, to_markdown
from components.context_report import context_effect
from components.context_report import to_markdown as context_markdown
from components.stats import bootstrap_options
from components.storage import safe_name
from pipelines.runs import TaskFetcher, resolve_run


def _identity(run_dir: Path) -> tuple[str, str, str | None]:
    """(experiment, label, dataset sha256) from results.json (resolve_run found it there)."""
    data = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
    sha = (data.get("dataset") or {}).get("sha256")
    return data["experiment"], f"{data['experiment']}.{data['run_id']}", sha


def compare(
    ref_a: str, ref_b: str, cfg: dict[str, Any], fetch_task: TaskFetcher | None = None
) -> dict[str, Any]:
    """Both runs found (or fetched), compared, written; returns the comparison, the two
    labels and the paths."""
    dir_a, dir_b = resolve_run(ref_a, cfg, fetch_task), resolve_run(ref_b, cfg, fetch_task)
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
    return {"comparison": comparison, "labels": (label_a, label_b), "paths": paths}


def context_reports(
    ref_closed: str,
    refs_with: list[str],
    cfg: dict[str, Any],
    fetch_task: TaskFetcher | None = None,
    out_dir: Path | None = None,
) -> list[dict[str, Any]]:
    """One closed-book run against each of the same model's context-mode runs, paired
    question by question; writes context_report.md and .json for each."""
    closed_dir = resolve_run(ref_closed, cfg, fetch_task)
    closed_exp, closed_label, _ = _identity(closed_dir)
    closed = json.loads((closed_dir / "predictions.json").read_text(encoding="utf-8"))
    answered_at = float((cfg.get("context_report") or {}).get("answered_at", 1.0))
    done = []
    for ref in refs_with:
        run_dir = resolve_run(ref, cfg, fetch_task)
        exp, label, _ = _identity(run_dir)
        preds = json.loads((run_dir / "predictions.json").read_text(encoding="utf-8"))
        report = context_effect(
            closed, preds, answered_at=answered_at, **bootstrap_options(cfg["sweep"])
        )
        base = out_dir or Path(cfg["experiment"]["output_dir"]) / "context"
        out = base / safe_name(f"{exp}_vs_{closed_exp}")
        paths = {
            "md": write_text_atomic(
                out / "context_report.md", context_markdown(report, closed_label, label)
            ),
            "json": write_json_atomic(
                out / "context_report.json", {"closed_book": closed_label, "with": label, **report}
            ),
        }
        done.append({"report": report, "labels": (closed_label, label), "paths": paths})
    return done

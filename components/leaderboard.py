"""A sweep's leaderboard: one row per model x dataset x context mode, as CSV, Markdown and a
bar chart.

Rows are built from each run's own results.json and predictions.json, so a leaderboard can
be rebuilt at any time from finished runs (local folders or files fetched from S3).
"""

from __future__ import annotations

import csv
import io
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from components.atomic import atomic_writer, write_text_atomic
from components.memory import gib, highest_gpu_bytes
from components.stats import bootstrap_mean

COLUMNS = (
    "model",
    "dataset",
    "mode",
    "examples",
    "token_recall",
    "recall_ci_low",
    "recall_ci_high",
    "exact_match",
    "token_f1",
    "token_precision",
    "answer_words",
    "questions_per_s",
    "output_tokens_per_s",
    "peak_gpu_gib",
    "peak_rss_gib",
    "experiment",
    "run_id",
    "reused",
)


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def model_label(results: dict[str, Any]) -> str:
    """A registered model (a checkpoint) by its own name, else the model config's."""
    source = results["model"].get("input") or {}
    registered = source.get("source") == "clearml-model"
    return str(source["name"]) if registered else results["model"]["name"]


def leaderboard_row(
    results: dict[str, Any],
    predictions: Sequence[dict[str, Any]],
    *,
    reused: bool = False,
    samples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    recalls = [p["token_recall"] for p in predictions if p["token_recall"] is not None]
    interval = bootstrap_mean(recalls, samples=samples, confidence=confidence, seed=seed)
    throughput, memory = results["throughput"], results["memory"]
    return {
        "model": model_label(results),
        "dataset": results["dataset"]["name"],
        "mode": (results.get("context") or {}).get("mode", "no_context"),
        "examples": results["counts"]["examples"],
        "token_recall": _round(interval.mean),
        "recall_ci_low": _round(interval.low),
        "recall_ci_high": _round(interval.high),
        "exact_match": _round(results["exact_match"]),
        # Beside recall, so verbosity shows; absent from runs scored before they existed.
        "token_f1": _round((results.get("token_f1") or {}).get("mean")),
        "token_precision": _round((results.get("token_precision") or {}).get("mean")),
        "answer_words": _round((results.get("answer_words") or {}).get("mean"), 1),
        "questions_per_s": _round(throughput["questions_per_s"], 2),
        "output_tokens_per_s": _round(throughput["output_tokens_per_s"], 1),
        "peak_gpu_gib": gib(highest_gpu_bytes(memory.get("peak_gpu_bytes"))),
        "peak_rss_gib": gib(memory.get("peak_rss_bytes")),
        "experiment": results["experiment"],
        "run_id": results["run_id"],
        "reused": reused,
    }


def sort_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """By dataset and mode, best recall first."""
    return sorted(
        rows,
        key=lambda r: (r["dataset"], r["mode"], -(r["token_recall"] or 0.0), r["model"]),
    )


def to_csv(rows: Sequence[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in COLUMNS})
    return out.getvalue()


def _cell(value: Any, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def to_markdown(rows: Sequence[dict[str, Any]], title: str, confidence: float = 0.95) -> str:
    lines = [
        f"# {title}",
        "",
        f"Token recall: mean over scored questions, [{confidence:.0%} bootstrap interval].",
        "",
        "| model | dataset | mode | examples | token recall | exact match | token F1 "
        "| answer words | questions/s | output tokens/s | peak GPU GiB | peak RSS GiB "
        "| experiment |",
        "|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        recall = _cell(r["token_recall"], ".3f")
        if r["recall_ci_low"] is not None:
            recall += f" [{r['recall_ci_low']:.3f}, {r['recall_ci_high']:.3f}]"
        lines.append(
            f"| {r['model']} | {r['dataset']} | {r['mode']} | {r['examples']} | {recall} "
            f"| {_cell(r['exact_match'], '.3f')} | {_cell(r.get('token_f1'), '.3f')} "
            f"| {_cell(r.get('answer_words'), '.1f')} | {_cell(r['questions_per_s'], '.2f')} "
            f"| {_cell(r['output_tokens_per_s'], '.1f')} | {_cell(r['peak_gpu_gib'], '.2f')} "
            f"| {_cell(r['peak_rss_gib'], '.2f')} | {r.get('experiment', '')} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: Sequence[dict[str, Any]], title: str):
    """Recall by dataset and mode (groups) and model (bars), with the bootstrap interval as
    error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    several = len({r["mode"] for r in rows}) > 1
    rows = [
        {**r, "dataset": f"{r['dataset']}\n{r['mode']}" if several else r["dataset"]} for r in rows
    ]
    # Two runs of one model on one dataset (other settings) are two bars, named by experiment.
    pairs = [(r["model"], r["dataset"]) for r in rows]
    rows = [{**r, "model": r["experiment"]} if pairs.count((r["model"], r["dataset"])) > 1
            else r for r in rows]  # fmt: skip
    datasets = sorted({r["dataset"] for r in rows})
    models = sorted({r["model"] for r in rows})
    width = 0.8 / max(1, len(models))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(datasets) * max(1, len(models))), 4.0))
    for m, model in enumerate(models):
        xs, ys, errs = [], [], [[], []]
        for d, dataset in enumerate(datasets):
            row = next((r for r in rows if r["model"] == model and r["dataset"] == dataset), None)
            if row is None or row["token_recall"] is None:
                continue
            xs.append(d + (m - (len(models) - 1) / 2) * width)
            ys.append(row["token_recall"])
            errs[0].append(row["token_recall"] - (row["recall_ci_low"] or row["token_recall"]))
            errs[1].append((row["recall_ci_high"] or row["token_recall"]) - row["token_recall"])
        ax.bar(xs, ys, width, yerr=errs, capsize=3, label=model)
    ax.set_xticks(range(len(datasets)), datasets)
    ax.set_ylabel("token recall")
    ax.set_ylim(0, 1)
    ax.set_title(textwrap.fill(title, 60), fontsize="medium")  # a long title is wrapped, not cut
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def write_leaderboard(
    rows: Sequence[dict[str, Any]], out_dir: str | Path, title: str, confidence: float = 0.95
) -> dict[str, Path]:
    """leaderboard.csv, .md and .png, each written atomically."""
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    rows = sort_rows(rows)
    paths = {
        "csv": write_text_atomic(out / "leaderboard.csv", to_csv(rows)),
        "md": write_text_atomic(out / "leaderboard.md", to_markdown(rows, title, confidence)),
        "png": out / "leaderboard.png",
    }
    fig = plot(rows, title)
    try:
        with atomic_writer(paths["png"], binary=True) as fh:
            fig.savefig(fh, format="png", dpi=120)
    finally:
        plt.close(fig)
    return paths

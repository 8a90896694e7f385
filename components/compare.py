"""Two runs question by question: where their answers differ, by how much, and whether the
difference in mean token recall is larger than the luck of the question draw."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Any

from components.stats import paired_difference

CSV_COLUMNS = (
    "question_id",
    "question",
    "answers",
    "prediction_a",
    "prediction_b",
    "recall_a",
    "recall_b",
    "difference",
)
MARKDOWN_ROWS = 50


def compare_predictions(
    a: Sequence[dict[str, Any]],
    b: Sequence[dict[str, Any]],
    *,
    samples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """``difference`` is B minus A, over the questions both runs could score."""
    by_id_b = {p["question_id"]: p for p in b}
    ids_a = {p["question_id"] for p in a}
    rows, paired_a, paired_b, mismatched = [], [], [], []
    for pa in a:
        pb = by_id_b.get(pa["question_id"])
        if pb is None:
            continue
        if pa["answers"] != pb["answers"]:
            mismatched.append(pa["question_id"])  # same id, another question: not paired
            continue
        ra, rb = pa["token_recall"], pb["token_recall"]
        if ra is not None and rb is not None:
            paired_a.append(ra)
            paired_b.append(rb)
        if pa["prediction"].strip() == pb["prediction"].strip() and ra == rb:
            continue
        rows.append(
            {
                "question_id": pa["question_id"],
                "question": pa["question"],
                "answers": pa["answers"],
                "prediction_a": pa["prediction"],
                "prediction_b": pb["prediction"],
                "recall_a": ra,
                "recall_b": rb,
                "difference": None if ra is None or rb is None else rb - ra,
            }
        )
    rows.sort(
        key=lambda r: (r["difference"] is None, -abs(r["difference"] or 0.0), r["question_id"])
    )
    interval = paired_difference(
        paired_a, paired_b, samples=samples, confidence=confidence, seed=seed
    )
    diffs = [r["difference"] for r in rows if r["difference"] is not None]
    return {
        "common": len(ids_a & set(by_id_b)),
        "only_a": sorted(ids_a - set(by_id_b)),
        "only_b": sorted(set(by_id_b) - ids_a),
        "mismatched": mismatched,
        "paired": len(paired_a),
        "mean_a": sum(paired_a) / len(paired_a) if paired_a else None,
        "mean_b": sum(paired_b) / len(paired_b) if paired_b else None,
        "difference": interval.to_dict(),
        "confidence": confidence,
        "b_better": sum(d > 0 for d in diffs),
        "a_better": sum(d < 0 for d in diffs),
        "same_recall_other_text": sum(d == 0 for d in diffs),
        "rows": rows,
    }


def to_csv(comparison: dict[str, Any]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in comparison["rows"]:
        writer.writerow(
            {
                **{k: "" if row[k] is None else row[k] for k in CSV_COLUMNS},
                "answers": " | ".join(row["answers"]),
            }
        )
    return out.getvalue()


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def warnings(comparison: dict[str, Any]) -> list[str]:
    """What makes a pairing doubtful: different dataset files, ids with other answers."""
    found = []
    if comparison.get("same_dataset_file") is False:
        found.append("- **warning**: the runs used different dataset files (sha256 differ)")
    if comparison["mismatched"]:
        found.append(
            f"- **warning**: {len(comparison['mismatched'])} question ids have other answers "
            "in B (another question under the same id); left out"
        )
    return found


def to_markdown(comparison: dict[str, Any], name_a: str, name_b: str) -> str:
    diff = comparison["difference"]
    interval = (
        f"[{_num(diff['ci_low'])}, {_num(diff['ci_high'])}]" if diff["ci_low"] is not None else ""
    )
    lines = [
        f"# {name_a} vs {name_b}",
        "",
        f"- A: `{name_a}`, B: `{name_b}`",
        f"- questions in both: {comparison['common']} (scored in both: {comparison['paired']});"
        f" only in A: {len(comparison['only_a'])}, only in B: {len(comparison['only_b'])}",
        *warnings(comparison),
        f"- mean token recall: A {_num(comparison['mean_a'])}, B {_num(comparison['mean_b'])}",
        f"- paired difference B - A: {_num(diff['mean'])} {interval} "
        f"({comparison['confidence']:.0%} bootstrap interval over questions)",
        f"- answers differ on {len(comparison['rows'])} questions: B better on "
        f"{comparison['b_better']}, A better on {comparison['a_better']}, same recall on "
        f"{comparison['same_recall_other_text']}",
        "",
        "| question | answers | A | B | recall A | recall B | B - A |",
        "|---|---|---|---|---:|---:|---:|",
    ]
    for row in comparison["rows"][:MARKDOWN_ROWS]:
        lines.append(
            f"| {_cell(row['question'])} | {_cell(' / '.join(row['answers']))} "
            f"| {_cell(row['prediction_a'])} | {_cell(row['prediction_b'])} "
            f"| {_num(row['recall_a'])} | {_num(row['recall_b'])} | {_num(row['difference'])} |"
        )
    if len(comparison["rows"]) > MARKDOWN_ROWS:
        lines += ["", f"{len(comparison['rows']) - MARKDOWN_ROWS} more rows in compare.csv."]
    return "\n".join(lines) + "\n"

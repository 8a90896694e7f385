"""What context does for one model, question by question: a closed-book run paired with a
run of the same questions in a context mode (``make compare``'s pairing). A question counts
as answered at token recall >= ``answered_at``.

- gained: missed closed-book, answered with context;
- lost: answered closed-book, missed with context (MIRAGE's "noise vulnerability");
- missed with context, split by whether the answer was in what the model was shown: not
  shown (the retriever never found it) or shown and still missed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from components.compare import compare_predictions

LISTED = 20  # questions listed per kind in the Markdown


def context_effect(
    closed: Sequence[Mapping[str, Any]],
    contextual: Sequence[Mapping[str, Any]],
    *,
    answered_at: float = 1.0,
    samples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    paired = compare_predictions(
        list(closed), list(contextual), samples=samples, confidence=confidence, seed=seed
    )
    shown = {p["question_id"]: p for p in contextual}
    left_out = set(paired["mismatched"])
    kinds: dict[str, list[dict[str, Any]]] = {
        "gained": [],
        "lost": [],
        "both": [],
        "neither": [],
        "missed_not_in_context": [],
        "missed_in_context": [],
    }
    for a in closed:
        b = shown.get(a["question_id"])
        if b is None or a["question_id"] in left_out:
            continue
        ra, rb = a["token_recall"], b["token_recall"]
        if ra is None or rb is None:
            continue
        row = {
            "question_id": a["question_id"],
            "question": a["question"],
            "answers": a["answers"],
            "closed_book": a["prediction"],
            "with_context": b["prediction"],
            "passages": [p["id"] for p in b.get("passages", [])],
        }
        ok_a, ok_b = ra >= answered_at, rb >= answered_at
        kind = {(False, True): "gained", (True, False): "lost", (True, True): "both"}
        kinds[kind.get((ok_a, ok_b), "neither")].append(row)
        if not ok_b and "answer_in_context" in b:
            found = "missed_in_context" if b["answer_in_context"] else "missed_not_in_context"
            kinds[found].append(row)
    return {
        "answered_at": answered_at,
        "paired": paired["paired"],
        "mean_closed_book": paired["mean_a"],
        "mean_with_context": paired["mean_b"],
        "difference": paired["difference"],
        "confidence": confidence,
        "counts": {k: len(v) for k, v in kinds.items()},
        **kinds,
    }


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def to_markdown(report: Mapping[str, Any], closed: str, contextual: str) -> str:
    counts, diff = report["counts"], report["difference"]
    interval = (
        f" [{_num(diff['ci_low'])}, {_num(diff['ci_high'])}]" if diff["ci_low"] is not None else ""
    )
    lines = [
        f"# Context: {contextual} vs closed-book {closed}",
        "",
        f"- questions paired: {report['paired']}; answered = token recall >= "
        f"{report['answered_at']:g}",
        f"- mean token recall: closed-book {_num(report['mean_closed_book'])}, with context "
        f"{_num(report['mean_with_context'])}; difference {_num(diff['mean'])}{interval} "
        f"({report['confidence']:.0%} bootstrap interval)",
        f"- gained with context: {counts['gained']}; lost with context: {counts['lost']}; "
        f"answered both ways: {counts['both']}; missed both ways: {counts['neither']}",
        f"- missed with context: {counts['missed_not_in_context']} with no answer in what "
        f"the model was shown (retrieval never found one), {counts['missed_in_context']} "
        "with an answer shown",
    ]
    for kind, title in (
        ("lost", "Lost with context (answered closed-book)"),
        ("gained", "Gained with context"),
        ("missed_not_in_context", "Missed: no answer in the context"),
        ("missed_in_context", "Missed: an answer was in the context"),
    ):
        rows = report[kind]
        if not rows:
            continue
        lines += [
            "",
            f"## {title} ({len(rows)})",
            "",
            "| question | answers | closed-book | with context | passages |",
            "|---|---|---|---|---|",
        ]
        for r in rows[:LISTED]:
            lines.append(
                f"| {_cell(r['question'])} | {_cell(' / '.join(r['answers']))} "
                f"| {_cell(r['closed_book'])} | {_cell(r['with_context'])} "
                f"| {_cell(', '.join(r['passages']))} |"
            )
        if len(rows) > LISTED:
            lines.append(f"\n{len(rows) - LISTED} more in context_report.json.")
    return "\n".join(lines) + "\n"

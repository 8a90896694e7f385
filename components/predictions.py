"""predictions.json, scored and written as the examples are read: memory holds each
question's scores, not its record, so a million questions score in flat memory."""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from components.atomic import write_json_array_atomic
from components.contexts import ContextTally
from components.scoring import Sums, Tally, score_records

MAX_CATEGORIES = 100  # a per-question "category" with more values is not broken down


Lookup = Callable[[str], Mapping[str, Any]]  # a question id -> its generation


def in_order(generations: Iterable[Mapping[str, Any]], where: str) -> Lookup:
    """The generations file as score_records asks for it: read alongside the examples (a
    run writes them in the examples' order), never loaded whole."""
    following = iter(generations)

    def answer_to(question_id: str) -> Mapping[str, Any]:
        found = next(following, None)
        if found is None or found["question_id"] != question_id:
            got = "its end" if found is None else repr(found["question_id"])
            raise ValueError(
                f"{where}: expected the answer to {question_id!r}, found {got}: the "
                "generations are not in the examples' order; run the inference step again"
            )
        return found

    return answer_to


def write_predictions(
    examples: Iterable[Mapping[str, Any]],
    answer_to: Lookup,
    path: str | Path,
    mode: Mapping[str, Any],
) -> dict[str, Any]:
    """Writes predictions.json; returns its path, the metrics, the unscorable ids and what
    the questions were shown (results.json's ``context``)."""
    tally, shown = Tally(), ContextTally()
    unscorable: list[str] = []
    categories: dict[str, Sums] = {}

    def scored() -> Iterator[dict[str, Any]]:
        for record in score_records(examples, answer_to):
            tally.add(record)
            shown.add(record)
            if record["token_recall"] is None:
                unscorable.append(record["question_id"])
            category = (record.get("metadata") or {}).get("category")
            if category is not None and len(categories) <= MAX_CATEGORIES:
                _tally(categories.setdefault(str(category), Sums()), record)
            yield record

    written = write_json_array_atomic(path, scored())
    out = {
        "predictions_path": str(written),
        "metrics": tally.summary().to_dict(),
        "unscorable_ids": unscorable,
        "context": shown.summary(mode),
    }
    if categories and len(categories) <= MAX_CATEGORIES:  # more: an id, not a category
        out["by_category"] = {name: _means(sums) for name, sums in sorted(categories.items())}
    return out


HIGHLIGHT_FIELDS = ("question_id", "token_recall", "question", "prediction", "answers")


def highlights(records: Iterable[Mapping[str, Any]], rows: int = 10) -> dict[str, Any]:
    """What a tracked run shows of its predictions, read as the records stream by: a
    histogram of recall in tenths and the ``rows`` worst and best answers (by recall, then
    question id), each list from the extreme inwards."""
    bins = [0] * 10
    worst: list[dict[str, Any]] = []  # ascending, the lowest ``rows``
    best: list[dict[str, Any]] = []  # ascending, the highest ``rows``

    def order(record: Mapping[str, Any]) -> tuple[float, str]:
        return record["token_recall"], record["question_id"]

    for record in records:
        if record["token_recall"] is None:
            continue
        bins[min(int(record["token_recall"] * 10), 9)] += 1
        slim = {k: record[k] for k in HIGHLIGHT_FIELDS}
        bisect.insort(worst, slim, key=order)
        bisect.insort(best, slim, key=order)
        del worst[rows:], best[:-rows]
    return {"recall_bins": bins, "worst": worst, "best": best[::-1]}


CATEGORY_MEANS = ("token_recall", "token_f1", "exact_match")


def _tally(sums: Sums, record: Mapping[str, Any]) -> None:
    sums.add("examples", 1)
    if record["token_recall"] is not None:
        for k in CATEGORY_MEANS:
            sums.add(k, record[k])


def _means(sums: Sums) -> dict[str, Any]:
    """One category's count and means over its scorable questions."""
    return {"examples": sums.count("examples"), **{k: sums.mean(k) for k in CATEGORY_MEANS}}

"""Token recall (the field's metric) and normalized exact match.

token recall = |gold ∩ predicted| / |gold| over sets of case-folded ``\\w+`` tokens,
maximised over the acceptable answers. Answers with no word tokens cannot be scored:
such an example is reported as unscorable, never counted as 0.
"""

from __future__ import annotations

import re
import statistics
import unicodedata
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# What a context mode showed each question, kept beside its answer (components/contexts.py).
SHOWN = ("passages", "context_tokens", "context_truncated", "answer_in_context")
_WORD = re.compile(r"\w+")
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def word_tokens(text: str) -> set[str]:
    """Unicode-aware: ``\\w`` matches letters of every script; casefold also folds ß to ss."""
    return set(_WORD.findall(text.casefold()))


def token_recall(prediction: str, answers: Sequence[str]) -> float | None:
    predicted = word_tokens(prediction)
    best: float | None = None
    for answer in answers:
        gold = word_tokens(answer)
        if not gold:
            continue
        recall = len(gold & predicted) / len(gold)
        best = recall if best is None else max(best, recall)
    return best


def normalize_answer(text: str) -> str:
    """SQuAD-style: case-folded, no punctuation (any script's), no articles, single spaces."""
    text = "".join(" " if unicodedata.category(c).startswith("P") else c for c in text.casefold())
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, answers: Sequence[str]) -> bool:
    pred = normalize_answer(prediction)
    # An answer of punctuation only normalizes to "": it must not match an empty prediction.
    return any(pred == norm for norm in map(normalize_answer, answers) if norm)


@dataclass(frozen=True)
class Summary:
    examples: int
    scored: int
    unscorable: int
    token_recall_mean: float | None
    token_recall_median: float | None
    token_recall_share_full: float | None
    exact_match: float | None

    def to_dict(self) -> dict:
        return {
            "counts": {
                "examples": self.examples,
                "scored": self.scored,
                "unscorable": self.unscorable,
            },
            "token_recall": {
                "mean": self.token_recall_mean,
                "median": self.token_recall_median,
                "share_at_1": self.token_recall_share_full,
            },
            "exact_match": self.exact_match,
        }


def summarize(recalls: Sequence[float | None], matches: Sequence[bool | None]) -> Summary:
    """Means over scorable examples only; unscorable ones are counted, not averaged in."""
    scored = [r for r in recalls if r is not None]
    ems = [m for m, r in zip(matches, recalls, strict=True) if r is not None]
    return Summary(
        examples=len(recalls),
        scored=len(scored),
        unscorable=len(recalls) - len(scored),
        token_recall_mean=statistics.fmean(scored) if scored else None,
        token_recall_median=statistics.median(scored) if scored else None,
        token_recall_share_full=sum(r == 1.0 for r in scored) / len(scored) if scored else None,
        exact_match=sum(bool(m) for m in ems) / len(ems) if ems else None,
    )


def score_records(
    examples: Iterable[Mapping[str, Any]], generations: Mapping[str, Mapping[str, Any]]
) -> Iterator[dict[str, Any]]:
    """predictions.json's records, one at a time: each example with its answer, recall and
    exact match (both None where no answer has a word to score)."""
    for example in examples:
        gen = generations[example["question_id"]]
        recall = token_recall(gen["prediction"], example["answers"])
        matched = None if recall is None else exact_match(gen["prediction"], example["answers"])
        yield {
            "question_id": example["question_id"],
            "question": example["question"],
            "answers": example["answers"],
            "prediction": gen["prediction"],
            "token_recall": recall,
            "exact_match": matched,
            "prompt_tokens": gen["prompt_tokens"],
            "output_tokens": gen["output_tokens"],
            **{k: gen[k] for k in SHOWN if k in gen},
        }

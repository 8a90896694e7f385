"""Token recall (the field's metric), token precision and F1, and normalized exact match.

token recall = |gold ∩ predicted| / |gold| over sets of case-folded ``\\w+`` tokens,
maximised over the acceptable answers. Recall alone gives 1.0 to a long ramble that holds
the answer somewhere, so precision (|gold ∩ predicted| / |predicted|) and F1 are reported
beside it, SQuAD-style (against the answer with the best F1), with the answer's length in
words. Answers with no word tokens cannot be scored: such an example is reported as
unscorable, never counted as 0.
"""

from __future__ import annotations

import re
import statistics
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from components.stats import bootstrap_mean

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


def precision_f1(prediction: str, answers: Sequence[str]) -> tuple[float, float] | None:
    """(precision, F1) against the answer the prediction fits best by F1; None where no
    answer has a word."""
    predicted = word_tokens(prediction)
    best: tuple[float, float] | None = None
    for answer in answers:
        gold = word_tokens(answer)
        if not gold:
            continue
        common = len(gold & predicted)
        precision = common / len(predicted) if predicted else 0.0
        recall = common / len(gold)
        f1 = 2 * precision * recall / (precision + recall) if common else 0.0
        if best is None or f1 > best[1]:
            best = (precision, f1)
    return best


def answer_words(prediction: str) -> int:
    """How long an answer is, in the words the metrics count."""
    return len(_WORD.findall(prediction))


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
    token_precision_mean: float | None = None
    token_f1_mean: float | None = None
    answer_words_mean: float | None = None
    recall_interval: tuple[float, float] | None = None  # 95% over questions

    def to_dict(self) -> dict:
        return {
            "token_precision": {"mean": self.token_precision_mean},
            "token_f1": {"mean": self.token_f1_mean},
            "answer_words": {"mean": self.answer_words_mean},
            "counts": {
                "examples": self.examples,
                "scored": self.scored,
                "unscorable": self.unscorable,
            },
            "token_recall": {
                "mean": self.token_recall_mean,
                "median": self.token_recall_median,
                "share_at_1": self.token_recall_share_full,
                "ci95": list(self.recall_interval) if self.recall_interval else None,
            },
            "exact_match": self.exact_match,
        }


class Sums:
    """Running sums and counts by name (a value of None is not counted): means in flat
    memory however many records pass."""

    def __init__(self) -> None:
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}

    def add(self, key: str, value: float | None) -> None:
        if value is not None:
            self._sums[key] = self._sums.get(key, 0.0) + float(value)
            self._counts[key] = self._counts.get(key, 0) + 1

    def count(self, key: str) -> int:
        return self._counts.get(key, 0)

    def total(self, key: str) -> float:
        return self._sums.get(key, 0.0)

    def mean(self, key: str) -> float | None:
        return self._sums[key] / self._counts[key] if self.count(key) else None


@dataclass
class Tally:
    """Running sums of the scores as records stream by; the recalls themselves are kept
    (one float per question) for the median and the interval."""

    examples: int = 0
    recalls: list[float] = field(default_factory=list)
    matches: int = 0
    sums: Sums = field(default_factory=Sums)  # precision, F1, words

    def add(self, record: Mapping[str, Any]) -> None:
        self.examples += 1
        if record["token_recall"] is not None:
            self.recalls.append(record["token_recall"])
            self.matches += bool(record["exact_match"])
        for key in ("token_precision", "token_f1", "answer_words"):
            self.sums.add(key, record.get(key))

    def mean(self, key: str) -> float | None:
        return self.sums.mean(key)

    def summary(self) -> Summary:
        """Means over scorable examples only; unscorable ones are counted, not averaged in.
        The answer length is averaged over every answer."""
        scored = self.recalls
        return Summary(
            recall_interval=recall_interval(scored),
            token_precision_mean=self.mean("token_precision"),
            token_f1_mean=self.mean("token_f1"),
            answer_words_mean=self.mean("answer_words"),
            examples=self.examples,
            scored=len(scored),
            unscorable=self.examples - len(scored),
            token_recall_mean=statistics.fmean(scored) if scored else None,
            token_recall_median=statistics.median(scored) if scored else None,
            token_recall_share_full=sum(r == 1.0 for r in scored) / len(scored) if scored else None,
            exact_match=self.matches / len(scored) if scored else None,
        )


def summarize(records: Iterable[Mapping[str, Any]]) -> Summary:
    """The summary of scored records (``score_records``' keys)."""
    tally = Tally()
    for record in records:
        tally.add(record)
    return tally.summary()


def score_records(
    examples: Iterable[Mapping[str, Any]], answer_to: Callable[[str], Mapping[str, Any]]
) -> Iterator[dict[str, Any]]:
    """predictions.json's records, one at a time: each example with its answer (``answer_to``
    its question id), recall and exact match (both None where no answer has a word)."""
    for example in examples:
        gen = answer_to(example["question_id"])
        recall = token_recall(gen["prediction"], example["answers"])
        matched = None if recall is None else exact_match(gen["prediction"], example["answers"])
        precision, f1 = precision_f1(gen["prediction"], example["answers"]) or (None, None)
        yield {
            "question_id": example["question_id"],
            "question": example["question"],
            "answers": example["answers"],
            "prediction": gen["prediction"],
            "token_recall": recall,
            "token_precision": precision,
            "token_f1": f1,
            "exact_match": matched,
            "answer_words": answer_words(gen["prediction"]),
            "prompt_tokens": gen["prompt_tokens"],
            "output_tokens": gen["output_tokens"],
            **{k: gen[k] for k in SHOWN if k in gen},
            **({"metadata": example["metadata"]} if example.get("metadata") else {}),
        }


def recall_interval(scored: Sequence[float]) -> tuple[float, float] | None:
    """The mean recall's 95% interval over questions: a percentile bootstrap (1,000 draws,
    seeded) up to 100,000 questions; above that the normal one, which it equals there and
    which costs nothing."""
    if len(scored) < 2:
        return None
    if len(scored) > 100_000:
        half = 1.96 * statistics.stdev(scored) / len(scored) ** 0.5
        mean = statistics.fmean(scored)
        return (mean - half, mean + half)
    interval = bootstrap_mean(scored, samples=1000, block_values=100_000)  # flat memory
    return (interval.low, interval.high)

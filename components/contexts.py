"""Dataset (and passages) -> contexts: the passages each question is shown, and the text they
make within the model's token budget.

Two halves, on either side of the model's tokenizer. Before it (the ``load_dataset`` and
``retrieve`` steps, no model): each example gains ``passages``, its candidates in priority
order (gold first; for the long oracle the document's neighbours by position; for retrieval
best score first). With it (the inference step): ``fit_context`` keeps whole passages while
they fit ``max_context_tokens``, cuts the first one that does not (counted as a truncation),
and shows them in corpus order (long oracle) or in priority order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from components.dataset import DatasetConfig, LoadedDataset, QAExample, load_qa_dataset
from components.mirage import is_mirage, load_mirage
from components.modes import ModeConfig
from components.passages import Corpus, Passage, load_corpus
from components.retrieval.base import Hit
from components.scoring import Sums, normalize_answer

SEPARATOR = "\n\n"
MIN_CUT_TOKENS = 16  # a cut passage shorter than this is left out instead


def inline_passages(record: Mapping[str, Any]) -> list[Passage]:
    """A question's own ``context`` texts, as passages named ``<question_id>#<n>``."""
    qid = record["question_id"]
    return [Passage(f"{qid}#{n}", "", text) for n, text in enumerate(record.get("context", []))]


def oracle_passages(
    record: Mapping[str, Any], corpus: Corpus | None, mode: ModeConfig
) -> list[dict[str, Any]]:
    """The oracle modes' candidates: the gold passages (the long oracle: with their
    neighbours, each with its corpus position), else the inline context."""
    gold = record.get("gold", [])
    if gold and corpus is not None:
        if mode.name == "oracle_long_context":
            window = corpus.window(gold, mode.max_context_tokens)
            return [{**p.to_record(), "position": corpus.position(p.id)} for p in window]
        return [corpus.get(g).to_record() for g in gold]
    return [p.to_record() for p in inline_passages(record)]


def retrieved_passages(
    hits: Sequence[Hit], corpus: Corpus, min_score: float
) -> list[dict[str, Any]]:
    return [
        {**corpus.get(h.id).to_record(), "score": round(h.score, 6)}
        for h in hits
        if h.score > min_score
    ]


@dataclass(frozen=True)
class Context:
    text: str
    passages: list[dict[str, Any]]  # shown: id (and score), in the order shown
    tokens: int
    truncated: bool


def _shown(record: Mapping[str, Any]) -> str:
    title = record.get("title") or ""
    return f"{title}\n{record['text']}" if title else record["text"]


def fit_context(tokenizer, passages: Sequence[Mapping[str, Any]], budget: int) -> Context:
    """Whole passages in priority order while they fit ``budget`` tokens (the separators
    counted); the first that does not is cut to what is left and ends the context."""
    sep = len(tokenizer(SEPARATOR, add_special_tokens=False)["input_ids"])
    kept: list[tuple[Mapping[str, Any], str]] = []
    used, truncated = 0, False
    for record in passages:
        text = _shown(record)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        cost = len(ids) + (sep if kept else 0)
        if used + cost <= budget:
            kept.append((record, text))
            used += cost
            continue
        room = budget - used - (sep if kept else 0)
        truncated = True
        if room >= MIN_CUT_TOKENS or not kept:
            kept.append((record, tokenizer.decode(ids[: max(room, 0)]).rstrip()))
        break
    if kept and all("position" in r for r, _ in kept):
        kept.sort(key=lambda pair: pair[0]["position"])
    text = SEPARATOR.join(t for _, t in kept if t)
    shown = [{"id": r["id"], **({"score": r["score"]} if "score" in r else {})} for r, _ in kept]
    tokens = len(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0
    return Context(text, shown, tokens, truncated)


def fit_contexts(
    tokenizer, examples: Sequence[Mapping[str, Any]], mode: ModeConfig
) -> list[Context] | None:
    """Every example's context, or None in closed-book mode."""
    if not mode.uses_context:
        return None
    return [
        fit_context(tokenizer, e.get("passages", []), mode.max_context_tokens) for e in examples
    ]


def contains_answer(text: str, answers: Iterable[str]) -> bool:
    """Whether an answer string occurs in ``text`` (both normalized SQuAD-style), as
    FlashRAG's ``retrieval_recall_top{k}`` counts it."""
    haystack = f" {normalize_answer(text)} "
    return any(n and f" {n} " in haystack for n in map(normalize_answer, answers))


class ContextTally:
    """results.json's ``context`` (the mode, its budget, and what the questions were shown),
    summed as the scored records stream by."""

    def __init__(self) -> None:
        self.sums, self.longest = Sums(), None

    def add(self, record: Mapping[str, Any]) -> None:
        tokens = record.get("context_tokens", 0)
        self.sums.add("context_tokens", tokens)
        self.longest = tokens if self.longest is None else max(self.longest, tokens)
        self.sums.add("truncated", bool(record.get("context_truncated")))
        self.sums.add("without_passages", not record.get("passages"))
        self.sums.add("answer_in_context", bool(record.get("answer_in_context")))

    def summary(self, mode: Mapping[str, Any]) -> dict[str, Any]:
        summary: dict[str, Any] = {"mode": mode["name"]}
        if mode["name"] == "no_context":
            return summary
        summary.update(
            max_context_tokens=mode["max_context_tokens"],
            truncated=int(self.sums.total("truncated")),
            without_passages=int(self.sums.total("without_passages")),
            context_tokens={"mean": self.sums.mean("context_tokens"), "max": self.longest},
            answer_in_context=self.sums.mean("answer_in_context"),
        )
        if mode["name"] == "retriever_context":
            summary.update(top_k=mode["top_k"], min_score=mode["min_score"])
        return summary


def load_with_passages(
    dataset: DatasetConfig,
    mode: ModeConfig,
    each: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[LoadedDataset, Corpus | None]:
    """The dataset's examples and its corpus, every gold id checked against the corpus and,
    in an oracle mode, every question checked to have passages: one error, before any
    model loads. A MIRAGE folder brings its own corpus (its doc pool). ``each``: where each
    example goes as examples.jsonl holds it, as it is read (none are then kept)."""
    if is_mirage(dataset.path):
        loaded, corpus = load_mirage(dataset.path, dataset.limit)
        for example in loaded.examples if each else ():
            each(with_passages(example, corpus, mode))
        return loaded, corpus
    corpus = load_corpus(dataset.corpus) if dataset.corpus else None
    loaded = load_qa_dataset(
        dataset.path,
        dataset.limit,
        dataset.on_error,
        passage_ids=corpus,
        needs_passages=mode.name if mode.needs_gold else None,
        keep=(lambda example: each(with_passages(example, corpus, mode))) if each else None,
    )
    return loaded, corpus


def load_passages(dataset: DatasetConfig) -> Corpus:
    """The corpus a retriever searches: ``dataset.corpus``, or a MIRAGE folder's pool."""
    if is_mirage(dataset.path):
        return load_mirage(dataset.path, dataset.limit)[1]
    if not dataset.corpus:
        raise ValueError(f"dataset.corpus: dataset {dataset.name} has no corpus to search")
    return load_corpus(dataset.corpus)


def with_passages(example: QAExample, corpus: Corpus | None, mode: ModeConfig) -> dict[str, Any]:
    """An example as examples.jsonl holds it: in an oracle mode, with its candidates."""
    record = example.to_record()
    if mode.needs_gold:
        record["passages"] = oracle_passages(record, corpus, mode)
    return record

"""One retrieval over a run's questions: each question's passages, and how well the retriever
did before any model answers: the share of questions with a gold passage in their top k,
and with an answer string in their top k passages (FlashRAG's ``retrieval_recall_top{k}``;
answer-in-context@k here)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from components.contexts import contains_answer, retrieved_passages
from components.modes import ModeConfig
from components.passages import Corpus
from components.retrieval.base import Hit, Retriever


def retrieve_all(
    retriever: Retriever,
    corpus: Corpus,
    examples: Sequence[Mapping[str, Any]],
    mode: ModeConfig,
    index_from: str,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The examples with their ``passages``, and results.json's ``retrieval``."""
    started = time.perf_counter()
    hits = retriever.search(examples, mode.top_k)
    seconds = time.perf_counter() - started
    records = [
        {**e, "passages": retrieved_passages(h, corpus, mode.min_score)}
        for e, h in zip(examples, hits, strict=True)
    ]
    retrieval = {
        "retriever": retriever.name,
        "settings": dict(retriever.settings),
        "corpus": corpus.meta(),
        "index_bytes": retriever.index_bytes,
        "index_build_seconds": retriever.build_seconds,
        "index_from": index_from,
        "search_seconds": seconds,
        "questions_per_s": len(examples) / seconds if seconds > 0 else None,
        **retrieval_metrics(examples, hits, corpus, mode.top_k),
    }
    recall, found = retrieval["gold_recall_at_k"], retrieval["answer_in_context_at_k"]
    print(
        f"retrieved up to {mode.top_k} passages for {len(examples)} questions in {seconds:.2f} s "
        f"(index {index_from}, {retriever.index_bytes} bytes); gold recall@k "
        f"{'n/a' if recall is None else f'{recall:.3f}'}, answer in context@k "
        f"{'n/a' if found is None else f'{found:.3f}'}"
    )
    return records, retrieval


def retrieval_metrics(
    examples: Sequence[Mapping[str, Any]], hits: Sequence[Sequence[Hit]], corpus: Corpus, k: int
) -> dict[str, Any]:
    with_gold = [(e, h) for e, h in zip(examples, hits, strict=True) if e.get("gold")]
    found = [
        contains_answer("\n".join(corpus.get(x.id).shown for x in h), e["answers"])
        for e, h in zip(examples, hits, strict=True)
    ]
    return {
        "k": k,
        "gold_recall_at_k": (
            sum(bool(set(e["gold"]) & {x.id for x in h}) for e, h in with_gold) / len(with_gold)
            if with_gold
            else None
        ),
        "questions_with_gold": len(with_gold),
        "answer_in_context_at_k": sum(found) / len(found) if found else None,
    }

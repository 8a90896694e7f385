"""Retrievers behind one small interface (base.py), one class each: BM25 (bm25.py) and the
gold passages served the same way (oracle.py). A dense retriever joins as one more class
and one more entry of ``create_retriever``."""

from __future__ import annotations

from pathlib import Path

from components.passages import Corpus
from components.retrieval.base import Hit, Retriever
from components.retrieval.bm25 import BM25Retriever
from components.retrieval.oracle import OracleRetriever

__all__ = ["Hit", "Retriever", "create_retriever", "index_key"]


def index_key(name: str, corpus: Corpus) -> str | None:
    """The cache key of the index retriever ``name`` builds over ``corpus``; None: none."""
    return BM25Retriever.index_key(corpus) if name == "bm25" else None


def create_retriever(name: str, corpus: Corpus, cache_dir: Path | None = None) -> Retriever:
    """The retriever ``experiment_mode.retriever`` names, its index (if any) loaded from
    ``cache_dir/<key>`` when built there before, else built and kept there."""
    if name == "bm25":
        return BM25Retriever.open(corpus, cache_dir)
    if name == "oracle":
        return OracleRetriever(corpus)
    raise ValueError(f"experiment_mode.retriever: no retriever {name!r} (bm25, oracle)")

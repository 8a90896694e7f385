"""What a retriever is: passages of a corpus, best first, for each question."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class Hit:
    id: str
    score: float


class Retriever(Protocol):
    name: str
    settings: Mapping[str, Any]  # what, with the corpus's sha256, decides its index
    index_bytes: int  # the index's size on disk (0: none)
    build_seconds: float  # building it here (0.0: loaded from a cache)

    def search(self, questions: Sequence[Mapping[str, Any]], top_k: int) -> list[list[Hit]]:
        """For each question record (``question``, and ``gold`` where it has one), up to
        ``top_k`` hits, best first."""
        ...

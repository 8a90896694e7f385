"""A corpus of passages (``dataset.corpus``: JSONL ``{"id", "title", "text"}``), checked the
way questions are (``file:line: field: what is wrong``), for the context modes: the gold
passages a question names, their neighbours in the same document, and what a retriever
searches. Corpus order is file order; a document is the passages sharing a title."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from components.dataset import (
    MAX_REPORTED_PROBLEMS,
    DatasetError,
    Problem,
    iter_lines,
    unencodable,
)


@dataclass(frozen=True)
class Passage:
    id: str
    title: str
    text: str

    def to_record(self) -> dict[str, str]:
        return {"id": self.id, "title": self.title, "text": self.text}

    @property
    def shown(self) -> str:
        """The passage as a prompt shows it: its title on the first line."""
        return f"{self.title}\n{self.text}" if self.title else self.text


@dataclass(frozen=True)
class Corpus:
    path: str
    sha256: str
    passages: tuple[Passage, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {p.id: i for i, p in enumerate(self.passages)})

    def __len__(self) -> int:
        return len(self.passages)

    def __contains__(self, passage_id: str) -> bool:
        return passage_id in self._index  # type: ignore[attr-defined]

    def meta(self) -> dict[str, object]:
        return {"path": self.path, "sha256": self.sha256, "passages": len(self.passages)}

    def get(self, passage_id: str) -> Passage:
        return self.passages[self._index[passage_id]]  # type: ignore[attr-defined]

    def window(self, gold: Sequence[str], max_words: int) -> list[Passage]:
        """The gold passages, then their neighbours in the same document, nearest first and
        alternating after/before, until the words together pass ``max_words`` (a token
        budget: a word is at least one token). Chosen by position only, never by score."""
        index = self._index  # type: ignore[attr-defined]
        chosen = [index[g] for g in dict.fromkeys(gold)]
        words = sum(len(self.passages[i].text.split()) for i in chosen)
        taken = set(chosen)
        frontier = [(i, i) for i in chosen]
        while words <= max_words:
            grown = False
            for n, (low, high) in enumerate(frontier):
                for step in (high + 1, low - 1):
                    if words > max_words or step in taken or not self._same_doc(chosen[0], step):
                        continue
                    taken.add(step)
                    chosen.append(step)
                    words += len(self.passages[step].text.split())
                    low, high = min(low, step), max(high, step)
                    grown = True
                frontier[n] = (low, high)
            if not grown:
                break
        return [self.passages[i] for i in chosen]

    def _same_doc(self, anchor: int, other: int) -> bool:
        inside = 0 <= other < len(self.passages)
        return inside and self.passages[other].title == self.passages[anchor].title

    def position(self, passage_id: str) -> int:
        return self._index[passage_id]  # type: ignore[attr-defined]


def _check_passage(obj: object, path: str, line: int) -> tuple[Passage | None, list[Problem]]:
    if not isinstance(obj, dict):
        return None, [
            Problem(path, line, "line", f"expected a JSON object, got {type(obj).__name__}")
        ]
    problems = []
    for key in ("id", "text"):
        value = obj.get(key)
        if key not in obj:
            problems.append(Problem(path, line, key, "is missing"))
        elif isinstance(value, bool) or not isinstance(value, (str, int)) or not str(value).strip():
            problems.append(Problem(path, line, key, "must be a non-empty string"))
    title = obj.get("title", "")
    if not isinstance(title, str):
        problems.append(Problem(path, line, "title", "must be a string"))
    if not problems:
        fields = {key: [obj[key]] for key in ("id", "text")} | {"title": [title]}
        problems = unencodable(fields, path, line)
    if problems:
        return None, problems
    return Passage(str(obj["id"]).strip(), title.strip(), str(obj["text"]).strip()), []


def load_corpus(path: str | Path) -> Corpus:
    """Every line checked; any problem stops with all of them listed (a corpus is not
    skipped past: a missing passage would silently change what the model is shown)."""
    path = Path(path)
    shown = str(path)
    if not path.is_file():
        raise DatasetError(shown, [Problem(shown, 0, "path", "corpus file not found")])
    digest = hashlib.sha256()
    passages: list[Passage] = []
    first: dict[str, int] = {}
    problems: list[Problem] = []
    total = 0
    for line_no, raw in iter_lines(path):
        digest.update(raw)
        if not raw.strip():
            continue
        found: list[Problem]
        try:
            obj = json.loads(raw.decode("utf-8").lstrip("\ufeff"))
        except UnicodeDecodeError as exc:
            found = [Problem(shown, line_no, "line", f"invalid UTF-8 at byte {exc.start}")]
        except json.JSONDecodeError as exc:
            found = [Problem(shown, line_no, "json", f"{exc.msg} (column {exc.colno})")]
        else:
            passage, found = _check_passage(obj, shown, line_no)
            if passage is not None:
                if passage.id in first:
                    found = [
                        Problem(
                            shown,
                            line_no,
                            "id",
                            f"duplicate {passage.id!r} (first on line {first[passage.id]})",
                        )
                    ]
                else:
                    first[passage.id] = line_no
                    passages.append(passage)
        total += len(found)
        if len(problems) < MAX_REPORTED_PROBLEMS:
            problems.extend(found)
    if total:
        raise DatasetError(shown, problems, total)
    if not passages:
        raise DatasetError(shown, [Problem(shown, 1, "file", "holds no passages")])
    return Corpus(shown, digest.hexdigest(), tuple(passages))


def corpus_from(path: str, passages: Iterable[Passage], sha256: str) -> Corpus:
    """A corpus assembled by a loader of another layout (MIRAGE's doc_pool.json)."""
    return Corpus(path, sha256, tuple(passages))

"""MIRAGE's published layout, loaded as it is: a folder with ``dataset.json`` (a list of
``{"source", "query_id", "query", "answer": [...], ...}``), ``doc_pool.json`` (a list of
``{"mapped_id": <query_id>, "doc_name", "doc_chunk", "support": 0|1}``) and ``oracle.json``
(``{<query_id>: {"mapped_id", "doc_name", "doc_chunk", ...}}``, each question's gold chunk).
The pool becomes the corpus (``<query_id>/<n>``, n counting that question's chunks), the
oracle chunk the question's gold passage. Problems name the file, the entry (1-based, the
files are JSON arrays, not lines) and the field."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from components.dataset import DatasetError, LoadedDataset, Problem, QAExample
from components.passages import Corpus, Passage, corpus_from

FILES = ("dataset.json", "doc_pool.json", "oracle.json")


def is_mirage(path: str | Path) -> bool:
    return Path(path).is_dir() and (Path(path) / "dataset.json").is_file()


def _read(folder: Path, name: str, kind: type) -> Any:
    path = folder / name
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(str(path), [Problem(str(path), 0, "path", "file not found")]) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        line = getattr(exc, "lineno", 0)
        raise DatasetError(str(path), [Problem(str(path), line, "json", str(exc))]) from None
    if not isinstance(data, kind):
        problem = Problem(str(path), 0, "file", f"must hold a JSON {kind.__name__}")
        raise DatasetError(str(path), [problem])
    return data


def _text(entry: Any, key: str, where: str, n: int, problems: list[Problem]) -> str:
    value = entry.get(key) if isinstance(entry, dict) else None
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        problems.append(Problem(where, n, key, "must be a non-empty string"))
        return ""
    return value.strip()


def load_mirage(folder: str | Path, limit: int | None = None) -> tuple[LoadedDataset, Corpus]:
    folder = Path(folder)
    raw = {name: _read(folder, name, dict if name == "oracle.json" else list) for name in FILES}
    problems: list[Problem] = []
    pool: dict[str, list[Passage]] = {}
    where = str(folder / "doc_pool.json")
    for n, entry in enumerate(raw["doc_pool.json"], start=1):
        qid = _text(entry, "mapped_id", where, n, problems)
        text = _text(entry, "doc_chunk", where, n, problems)
        if qid and text:
            chunks = pool.setdefault(qid, [])
            title = str(entry.get("doc_name") or "")
            chunks.append(Passage(f"{qid}/{len(chunks)}", title, text))
    examples: list[QAExample] = []
    extra: list[Passage] = []
    first: dict[str, int] = {}
    where = str(folder / "dataset.json")
    for n, entry in enumerate(raw["dataset.json"], start=1):
        found: list[Problem] = []
        qid = _text(entry, "query_id", where, n, found)
        if qid and qid in first:
            found.append(
                Problem(where, n, "query_id", f"duplicate {qid!r} (first entry {first[qid]})")
            )
        first.setdefault(qid, n)
        query = _text(entry, "query", where, n, found)
        answers = entry.get("answer") if isinstance(entry, dict) else None
        answers = [answers] if isinstance(answers, str) else answers
        if (
            not isinstance(answers, list)
            or not answers
            or not all(isinstance(a, str) and a.strip() for a in answers)
        ):
            found.append(Problem(where, n, "answer", "must be a non-empty list of strings"))
        oracle = raw["oracle.json"].get(qid) if qid else None
        gold_text = _text(oracle, "doc_chunk", str(folder / "oracle.json"), n, found)
        problems += found
        if found:
            continue
        chunks = pool.get(qid, [])
        gold = next((p for p in chunks if p.text == gold_text), None)
        if gold is None:  # the oracle chunk is not among the pool's: it joins the corpus
            gold = Passage(f"{qid}/oracle", str(oracle.get("doc_name") or ""), gold_text)
            extra.append(gold)
        examples.append(QAExample(qid, query, tuple(answers), gold=(gold.id,)))
    if problems:
        raise DatasetError(str(folder), problems)
    digest = hashlib.sha256()
    for name in FILES:
        digest.update((folder / name).read_bytes())
    passages = [p for chunks in pool.values() for p in chunks] + extra
    corpus = corpus_from(str(folder / "doc_pool.json"), passages, digest.hexdigest())
    loaded = LoadedDataset(
        str(folder), digest.hexdigest(), examples[:limit] if limit else examples, len(examples)
    )
    return loaded, corpus

"""Question sets in Hugging Face's formats, written as the qa_pairs.jsonl every run reads.

    hf://<repo id>[:<config>][@<revision>][#<split>]   through the datasets library, from its
                                                       cache (a worker that may download does)
    a .parquet file, or a folder written by ``Dataset.save_to_disk``

``dataset.fields`` says which column is which, dotted into nested ones: TriviaQA's answers
are ``answer.aliases``, SimpleQA's question is ``problem``. A row that lacks a mapped field
is named (the set, the row, the field, the setting to change) before any model loads.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.atomic import atomic_writer, sha256_file

MAX_REPORTED = 20


@dataclass
class FieldMap:
    """``dataset.fields``: the columns of a Hugging Face set that hold each part."""

    question_id: str | None = "question_id"  # null: the row number
    question: str = "question"
    answer: str = "answer"  # a string or a list of strings


class HFDatasetError(ValueError):
    pass


def is_hf(reference: str | Path) -> bool:
    """An ``hf://`` reference, a parquet file or a saved dataset folder."""
    path = Path(str(reference))
    if str(reference).startswith("hf://"):
        return True
    if path.is_file():
        return path.suffix == ".parquet"
    return (
        path.is_dir() and (path / "state.json").is_file() and (path / "dataset_info.json").is_file()
    )


def parse_hub(reference: str) -> dict[str, str | None]:
    """``hf://owner/name:config@revision#split`` -> its parts (split defaults to test)."""
    rest, _, split = reference.removeprefix("hf://").partition("#")
    rest, _, revision = rest.partition("@")
    repo, _, config = rest.partition(":")
    return {
        "repo": repo,
        "config": config or None,
        "revision": revision or None,
        "split": split or "test",
    }


def _rows(reference: str) -> tuple[Iterable[dict[str, Any]], dict[str, Any]]:
    """The rows, and where they came from."""
    datasets = _library("datasets")
    if reference.startswith("hf://"):
        parts = parse_hub(reference)
        loaded = datasets.load_dataset(
            parts["repo"], parts["config"], split=parts["split"], revision=parts["revision"]
        )
        return loaded, {"source": "huggingface", **parts, "fingerprint": loaded._fingerprint}
    path = Path(reference)
    if path.is_file():
        identity = {"source": "parquet", "path": reference, "file_sha256": sha256_file(path)}
        return _parquet_rows(path), identity
    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        raise HFDatasetError(
            f"{reference}: a DatasetDict of splits {sorted(loaded)}; point at one split's folder"
        )
    return loaded, {
        "source": "saved-dataset",
        "path": reference,
        "fingerprint": loaded._fingerprint,
    }


def _parquet_rows(path: Path) -> Iterator[dict[str, Any]]:
    """Streamed a batch at a time: a large file is never whole in memory."""
    pq = _library("pyarrow.parquet")
    for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
        yield from batch.to_pylist()


def _library(name: str) -> Any:
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise HFDatasetError(
            f"Hugging Face sets need {name.split('.')[0]}: pip install 'slm-qa-eval[hf]' (make "
            "install and the CPU worker image have it)"
        ) from exc


def _get(row: dict[str, Any], dotted: str) -> Any:
    value: Any = row
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(dotted)
        value = value[part]
    return value


def _answers(value: Any) -> list[str] | None:
    if isinstance(value, str):
        return [value]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [str(value)]
    if isinstance(value, list) and value and all(isinstance(v, (str, int, float)) for v in value):
        return [str(v) for v in value]
    return None


def _records(rows: Iterable[dict[str, Any]], fields: FieldMap, where: str) -> Iterator[dict]:
    problems: list[str] = []
    for number, row in enumerate(rows, start=1):
        try:
            question = _get(row, fields.question)
            answers = _answers(_get(row, fields.answer))
            qid = str(_get(row, fields.question_id)) if fields.question_id else str(number)
        except KeyError as exc:
            setting = next(
                k
                for k in ("question_id", "question", "answer")
                if getattr(fields, k) == exc.args[0]
            )
            problems.append(
                f"{where}: row {number}: {exc.args[0]}: missing (set dataset.fields.{setting} "
                f"to one of {sorted(row)})"
            )
            continue
        if answers is None:
            problems.append(
                f"{where}: row {number}: {fields.answer}: not a string or a list of strings"
            )
            continue
        yield {"question_id": qid, "question": question, "answer": answers}
    if problems:
        shown = "\n".join(problems[:MAX_REPORTED])
        more = (
            f"\n... and {len(problems) - MAX_REPORTED} more" if len(problems) > MAX_REPORTED else ""
        )
        raise HFDatasetError(
            f"{where}: {len(problems)} row(s) do not map onto a question:\n{shown}{more}"
        )


def write_qa_pairs(reference: str, fields: FieldMap, target: Path) -> dict[str, Any]:
    """The set as qa_pairs.jsonl at ``target`` (whole or not at all); its identity."""
    rows, identity = _rows(reference)
    with atomic_writer(target) as out:
        for record in _records(rows, fields, reference):
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    return {**identity, "fields": vars(fields).copy(), "sha256": sha256_file(target)}

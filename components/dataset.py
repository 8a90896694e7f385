"""Load and validate a qa_pairs.jsonl (or NQ-open) file before any model is loaded.

Every line is checked; problems are reported as ``file:line: field: what is wrong`` so a
user can fix the file in one pass instead of meeting one crash per bad line.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Container, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING

from components.hf_datasets import FieldMap
from components.settings import one_of, positive_int

MAX_REPORTED_PROBLEMS = 20
ON_ERROR = ("strict", "skip")


@dataclass
class DatasetConfig:
    """``dataset.*``: which file, how much of it, what a bad line does."""

    name: str = MISSING  # the conf/dataset/ file
    path: str = MISSING  # the file as the machine that reads it sees it
    limit: int | None = None  # the first N examples; null: all
    on_error: str = "strict"  # strict: a bad line stops the run; skip: listed and skipped
    # JSONL {"id", "title", "text"}: the passages a question's `gold` ids name and a
    # retriever searches (components/passages.py); null: none (a MIRAGE folder brings its own)
    corpus: str | None = None
    # Which columns of a Hugging Face set (hf://..., .parquet, a saved folder) hold what
    fields: FieldMap = field(default_factory=FieldMap)

    def __post_init__(self) -> None:
        if self.limit is not None:
            positive_int(self.limit, "dataset.limit")
        one_of(self.on_error, ON_ERROR, "dataset.on_error")


@dataclass(frozen=True)
class QAExample:
    question_id: str
    question: str
    answers: tuple[str, ...]
    context: tuple[str, ...] = ()  # passages given inline with the question
    gold: tuple[str, ...] = ()  # ids of its gold passages in the corpus
    # The line's other fields (a category, a source, a difficulty), kept to predictions.json.
    metadata: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def to_record(self) -> dict:
        record = {
            "question_id": self.question_id,
            "question": self.question,
            "answers": list(self.answers),
        }
        if self.context:
            record["context"] = list(self.context)
        if self.gold:
            record["gold"] = list(self.gold)
        if self.metadata:
            record["metadata"] = dict(self.metadata)
        return record


@dataclass(frozen=True)
class Problem:
    path: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.field}: {self.message}"


class DatasetError(ValueError):
    """The dataset file cannot be used; ``problems`` lists every bad line found."""

    def __init__(
        self,
        path: str,
        problems: list[Problem],
        total: int | None = None,
        lines: int | None = None,
    ):
        """``total``: every problem found (``problems`` may hold the first ones only);
        ``lines``: how many lines they are on (a line may have several)."""
        self.path = path
        self.problems = problems
        self.total = len(problems) if total is None else total
        self.lines = len({p.line for p in problems}) if lines is None else lines
        shown = "\n".join(f"  {p}" for p in problems[:MAX_REPORTED_PROBLEMS])
        more = self.total - min(len(problems), MAX_REPORTED_PROBLEMS)
        tail = f"\n  ... and {more} more" if more > 0 else ""
        super().__init__(
            f"{path}: {self.lines} invalid line(s); fix them and run again:\n{shown}{tail}"
        )


@dataclass(frozen=True)
class LoadedDataset:
    path: str
    sha256: str
    examples: list[QAExample]
    lines_in_file: int
    skipped: list[Problem] = field(default_factory=list)
    handed_on: int = 0  # examples given to ``keep`` instead of kept in ``examples``
    notes: list[Problem] = field(default_factory=list)  # lines accepted with a note (the first)
    noted: int = 0  # how many lines had one

    @property
    def count(self) -> int:
        return len(self.examples) + self.handed_on


def _check_record(obj: object, path: str, line_no: int) -> tuple[QAExample | None, list[Problem]]:
    def bad(field: str, message: str) -> tuple[None, list[Problem]]:
        return None, [Problem(path, line_no, field, message)]

    if not isinstance(obj, dict):
        return bad("line", f"expected a JSON object, got {type(obj).__name__}")
    problems: list[Problem] = []

    qid = obj.get("question_id", None)
    if "question_id" not in obj:
        qid = f"line-{line_no}"
    elif isinstance(qid, bool) or not isinstance(qid, (str, int)):
        problems.append(Problem(path, line_no, "question_id", "must be a string or an integer"))
    elif str(qid).strip() == "":
        problems.append(Problem(path, line_no, "question_id", "is empty"))

    question = obj.get("question")
    if "question" not in obj:
        problems.append(Problem(path, line_no, "question", "is missing"))
    elif not isinstance(question, str):
        problems.append(Problem(path, line_no, "question", "must be a string"))
    elif not question.strip():
        problems.append(Problem(path, line_no, "question", "is empty"))

    answer = obj.get("answer")
    answers: list[str] = []
    if "answer" not in obj:
        problems.append(Problem(path, line_no, "answer", "is missing"))
    elif isinstance(answer, str) or _is_number(answer):
        answers = [answer]
    elif isinstance(answer, list):
        answers = answer
        if not answer:
            problems.append(Problem(path, line_no, "answer", "is an empty list"))
        elif not all(isinstance(a, str) or _is_number(a) for a in answer):
            problems.append(
                Problem(path, line_no, "answer", "every entry must be a string (or a number)")
            )
    else:
        problems.append(Problem(path, line_no, "answer", "must be a string or a list of strings"))
    numbers = [a for a in answers if _is_number(a)]
    answers = [a if isinstance(a, str) else _number_text(a) for a in answers]
    if answers and all(isinstance(a, str) for a in answers) and not any(a.strip() for a in answers):
        problems.append(Problem(path, line_no, "answer", "has no non-empty answer"))

    context = _texts(obj, "context", path, line_no, problems)
    gold = _texts(obj, "gold", path, line_no, problems, ids=True)
    metadata = {k: v for k, v in obj.items() if k not in RECORD_FIELDS}
    if not problems:
        fields = {"question_id": [str(qid)], "question": [question], "answer": answers}
        extra = {k: [json.dumps(v, ensure_ascii=False)] for k, v in metadata.items()}
        problems = unencodable({**fields, "context": context, "gold": gold, **extra}, path, line_no)
    if problems:
        return None, problems
    example = QAExample(str(qid).strip(), question.strip(), tuple(answers), context, gold, metadata)
    if numbers:  # accepted, and said: the caller reports how many lines had them
        note = f"a number, read as the text {_number_text(numbers[0])!r}"
        return example, [Problem(path, line_no, "answer", note)]
    return example, []


RECORD_FIELDS = ("question_id", "question", "answer", "context", "gold")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number_text(value: float) -> str:
    """1945 as "1945"; 2.5 as "2.5" (and 2.0, which JSON cannot tell from 2, as "2")."""
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def unencodable(fields: dict[str, Iterable[object]], path: str, line_no: int) -> list[Problem]:
    """JSON may escape half a UTF-16 pair (``"\\ud800"``), which no file can hold: refused here,
    where the line is known, rather than when the run writes it."""
    for name, values in fields.items():
        for value in values:
            try:
                str(value).encode("utf-8")
            except UnicodeEncodeError as exc:
                at = f"character {exc.start + 1}: {str(value)[exc.start]!r}"
                return [Problem(path, line_no, name, f"holds a lone surrogate ({at}), not text")]
    return []


def _texts(
    obj: dict, key: str, path: str, line_no: int, problems: list[Problem], ids: bool = False
) -> tuple[str, ...]:
    """An optional field holding one string or a list of them (``ids``: integers too)."""
    if key not in obj or obj[key] is None:
        return ()
    value = obj[key]
    items = value if isinstance(value, list) else [value]
    kinds = (str, int) if ids else (str,)
    if not all(isinstance(v, kinds) and not isinstance(v, bool) and str(v).strip() for v in items):
        what = "id" if ids else "text"
        problems.append(
            Problem(path, line_no, key, f"must be a non-empty {what} or a list of them")
        )
        return ()
    return tuple(str(v).strip() for v in items)


def iter_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """Streams raw lines with 1-based numbers, so a large file is never read whole."""
    with path.open("rb") as fh:
        yield from enumerate(fh, start=1)


def _check_passages(
    example: QAExample, where: tuple[str, int], known: Container[str] | None, needs: str | None
) -> list[Problem]:
    """A question's passages against the corpus (``known``: its ids; None: no corpus) and
    the mode (``needs``: a mode that shows every question its gold passages)."""
    path, line = where
    missing = [g for g in example.gold if known is not None and g not in known]
    if missing:
        return [Problem(path, line, "gold", f"{missing[0]!r} is not in dataset.corpus")]
    if needs and example.gold and known is None and not example.context:
        return [Problem(path, line, "gold", f"{needs} needs dataset.corpus to look the ids up")]
    if needs and not example.gold and not example.context:
        return [
            Problem(
                path,
                line,
                "gold",
                f"{needs} needs gold passage ids (in dataset.corpus) or a context on each question",
            )
        ]
    return []


def load_qa_dataset(
    path: str | Path,
    limit: int | None = None,
    on_error: str = "strict",
    passage_ids: Container[str] | None = None,
    needs_passages: str | None = None,
    keep: Callable[[QAExample], None] | None = None,
) -> LoadedDataset:
    """Validates every line of ``path`` and returns the first ``limit`` examples.

    The whole file is validated even with a limit, so a run on 10 questions does not
    hide a broken line 3,000 that a full run would later die on. ``on_error="skip"`` goes
    on past bad lines and lists every one of them in ``skipped`` (nothing is dropped
    silently); the default stops. ``passage_ids`` (the corpus's) and ``needs_passages``
    (the mode that shows each question its gold passages) check ``gold`` on every line.
    ``keep``: where each example goes as it is read (a file being written), so a large file
    is never held; the caller discards what it wrote when this raises.
    """
    path = Path(path)
    shown = str(path)
    if not path.is_file():
        raise DatasetError(shown, [Problem(shown, 0, "path", "file not found")])
    digest = hashlib.sha256()
    problems: list[Problem] = []
    total_problems = bad_lines = 0
    examples: list[QAExample] = []
    handed_on = 0
    skipped: list[Problem] = []
    first_line: dict[str, int] = {}
    notes: list[Problem] = []
    noted = 0
    lines = 0
    for line_no, raw in iter_lines(path):
        digest.update(raw)
        lines = line_no
        if line_no == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            found = [Problem(shown, line_no, "line", f"invalid UTF-8 at byte {exc.start}")]
        else:
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                found = [Problem(shown, line_no, "json", f"{exc.msg} (column {exc.colno})")]
            else:
                example, found = _check_record(obj, shown, line_no)
                if example is not None:
                    noted += 1 if found else 0  # accepted, with a note (a number as text)
                    notes.extend(found[: MAX_REPORTED_PROBLEMS - len(notes)])
                    seen = first_line.get(example.question_id)
                    if seen is not None:
                        found = [
                            Problem(
                                shown,
                                line_no,
                                "question_id",
                                f"duplicate {example.question_id!r} (first on line {seen})",
                            )
                        ]
                    else:
                        first_line[example.question_id] = line_no
                        where = (shown, line_no)
                        found = _check_passages(example, where, passage_ids, needs_passages)
                        if not found and (limit is None or len(examples) + handed_on < limit):
                            if keep is None:
                                examples.append(example)
                            else:
                                keep(example)
                                handed_on += 1
        total_problems += len(found)
        bad_lines += 1 if found else 0
        if on_error == "skip":
            skipped.extend(found)
        elif len(problems) < MAX_REPORTED_PROBLEMS:
            problems.extend(found)
    if total_problems and on_error == "strict":
        raise DatasetError(shown, problems, total_problems, bad_lines)
    if not examples and not handed_on:
        raise DatasetError(shown, [Problem(shown, max(lines, 1), "file", "holds no examples")])
    return LoadedDataset(
        str(path), digest.hexdigest(), examples, lines, skipped, handed_on, notes, noted
    )

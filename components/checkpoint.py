"""Resume after a kill: finished answers are saved as each batch ends, and a restarted run
(or a retried ClearML step) generates only what is missing.

The checkpoint's name is a digest of everything that decides an answer as it actually ran:
the model and its weights, the resolved backend, device and dtype, the generation settings
and the prompt token ids themselves. Batch size, shard count and GPU memory share are left
out: they decide speed and memory, and a run that died of them can resume with other values.
Locally the checkpoint is a file in the run folder; on ClearML it is a set of objects under
the run's S3 prefix, one per batch (S3 has no append), so an agent that dies loses at most
the batch it was generating.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import sys
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from components.storage import S3


def short_digest(value: Any) -> str:
    """16 hex characters of the sha256 of ``value`` as sorted JSON."""
    blob = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class PromptsDigest:
    """The token ids every backend is given (template, few-shot, contexts and questions) in
    one hash, fed a window of prompts at a time: a run's prompts are never held at once."""

    def __init__(self) -> None:
        self._sha = hashlib.sha256()

    def update(self, prompts: Iterable[Sequence[int]]) -> None:
        for ids in prompts:
            self._sha.update(json.dumps(list(ids)).encode())
            self._sha.update(b"\n")

    def hexdigest(self) -> str:
        return self._sha.hexdigest()


def prompts_digest(prompts: Iterable[Sequence[int]]) -> str:
    digest = PromptsDigest()
    digest.update(prompts)
    return digest.hexdigest()


def checkpoint_key(
    *,
    model: dict[str, Any],
    weights: str | None,
    backend: str,
    device: str,
    dtype: str,
    generation: dict[str, Any],
    prompts: str,
) -> str:
    """From resolved settings only: ``auto`` never hides which backend wrote an answer."""
    return short_digest(
        {
            "model": {k: model.get(k) for k in ("name", "path", "revision")},
            "weights": weights,
            "backend": backend,
            "device": device,
            "dtype": dtype,
            "generation": generation,
            "prompts": prompts,
        }
    )


class Checkpoint(Protocol):
    location: str

    def load(self) -> Answers: ...

    def append(self, records: Iterable[dict[str, Any]]) -> None: ...


class Answers(Mapping[str, dict[str, Any]]):
    """A checkpoint's answers by question id, in a private SQLite database in the temp
    folder (deleted when this object goes): resuming a million answers holds none of them
    in memory."""

    def __init__(self) -> None:
        self._db = sqlite3.connect("")  # "": a temporary on-disk database
        self._db.execute("CREATE TABLE answers (id TEXT PRIMARY KEY, record TEXT NOT NULL)")

    def add_lines(self, lines: Iterable[str]) -> None:
        """A line cut short by a kill is not JSON: it is skipped, and its answer redone; an
        answer saved twice (a retried batch) keeps its last."""
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO answers VALUES (?, ?)", _rows(lines))

    def __contains__(self, qid: object) -> bool:
        found = self._db.execute("SELECT 1 FROM answers WHERE id = ?", (qid,)).fetchone()
        return found is not None

    def __getitem__(self, qid: str) -> dict[str, Any]:
        found = self._db.execute("SELECT record FROM answers WHERE id = ?", (qid,)).fetchone()
        if found is None:
            raise KeyError(qid)
        return json.loads(found[0])

    def __iter__(self) -> Iterator[str]:
        return (row[0] for row in self._db.execute("SELECT id FROM answers"))

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]


def _rows(lines: Iterable[str]) -> Iterator[tuple[str, str]]:
    """(question id, line) of each whole answer line."""
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("question_id"), str):
            yield record["question_id"], line.strip()


class FileCheckpoint:
    """Appended and fsynced per batch, in the run folder."""

    def __init__(self, run_dir: str | Path, key: str) -> None:
        self.path = Path(run_dir) / f"checkpoint-{key}.jsonl"
        self.location = str(self.path)

    def load(self) -> Answers:
        done = Answers()
        if self.path.is_file():
            with self.path.open(encoding="utf-8", errors="replace") as fh:
                done.add_lines(fh)
        return done

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        with self.path.open("a", encoding="utf-8") as fh:
            if fh.tell() and not self._ends_with_newline():
                fh.write("\n")  # seal a line a kill cut short, so it stays one bad line
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())

    def _ends_with_newline(self) -> bool:
        with self.path.open("rb") as fh:
            fh.seek(-1, os.SEEK_END)
            return fh.read(1) == b"\n"


class S3Checkpoint:
    """One object per batch under ``<run prefix>/checkpoints/<key>/``: each PUT is atomic,
    and two attempts of a step (a lost agent that comes back) never overwrite each other."""

    def __init__(self, s3: S3, prefix: str) -> None:
        self.s3, self.prefix = s3, prefix.rstrip("/")
        self.location = s3.url(self.prefix + "/")

    def load(self) -> Answers:
        done = Answers()
        for key in sorted(self.s3.list_keys(self.prefix)):
            body, recorded = self._read(key)
            if hashlib.sha256(body).hexdigest() == recorded:
                done.add_lines(body.decode("utf-8", errors="replace").splitlines())
            else:  # no record or another: the batch is generated again, never trusted
                print(
                    f"checkpoint part {key}: sha256 unrecorded or different; its answers are "
                    "generated again",
                    file=sys.stderr,
                    flush=True,
                )
        return done

    def _read(self, key: str) -> tuple[bytes, str | None]:
        """A part's bytes and recorded sha256, read again when a connection drops mid-body
        (botocore retries the request, not the reading of its body)."""
        from botocore.exceptions import BotoCoreError, ClientError

        what, attempts = f"reading checkpoint {key}", self.s3.config.max_attempts
        for attempt in range(1, attempts + 1):
            try:
                answer = self.s3.client.get_object(Bucket=self.s3.bucket, Key=key)
            except (BotoCoreError, ClientError) as exc:
                raise self.s3.error(what, exc) from exc
            try:
                return answer["Body"].read(), answer.get("Metadata", {}).get("sha256")
            except BotoCoreError as exc:
                if attempt == attempts:
                    raise self.s3.error(what, exc) from exc
                time.sleep(min(0.2 * 2**attempt, 5.0))
        raise AssertionError("unreachable")

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()
        key = f"{self.prefix}/part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.jsonl"
        try:
            self.s3.client.put_object(
                Bucket=self.s3.bucket,
                Key=key,
                Body=body,
                ChecksumAlgorithm="SHA256",
                Metadata={"sha256": hashlib.sha256(body).hexdigest()},
            )
        except (BotoCoreError, ClientError) as exc:
            raise self.s3.error(f"saving checkpoint {key}", exc) from exc

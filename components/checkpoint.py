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
import sys
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from components.storage import S3


def short_digest(value: Any) -> str:
    """16 hex characters of the sha256 of ``value`` as sorted JSON."""
    blob = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def prompts_digest(prompts: Sequence[Sequence[int]]) -> str:
    """The token ids every backend is given: template, few-shot and questions in one hash."""
    digest = hashlib.sha256()
    for ids in prompts:
        digest.update(json.dumps(list(ids)).encode())
        digest.update(b"\n")
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

    def load(self) -> dict[str, dict[str, Any]]:
        """Records by question id."""
        ...

    def append(self, records: Iterable[dict[str, Any]]) -> None: ...


def _parse_lines(lines: Iterable[str], into: dict[str, dict[str, Any]]) -> None:
    """A line cut short by a kill is not JSON: it is skipped, and its answer redone."""
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "question_id" in record:
            into[record["question_id"]] = record


class FileCheckpoint:
    """Appended and fsynced per batch, in the run folder."""

    def __init__(self, run_dir: str | Path, key: str) -> None:
        self.path = Path(run_dir) / f"checkpoint-{key}.jsonl"
        self.location = str(self.path)

    def load(self) -> dict[str, dict[str, Any]]:
        done: dict[str, dict[str, Any]] = {}
        if self.path.is_file():
            with self.path.open(encoding="utf-8", errors="replace") as fh:
                _parse_lines(fh, done)
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

    def load(self) -> dict[str, dict[str, Any]]:
        done: dict[str, dict[str, Any]] = {}
        for key in sorted(self.s3.list_keys(self.prefix)):
            body, recorded = self._read(key)
            if hashlib.sha256(body).hexdigest() == recorded:
                _parse_lines(body.decode("utf-8", errors="replace").splitlines(), done)
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

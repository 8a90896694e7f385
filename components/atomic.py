"""Atomic file writes and checksums: a crash never leaves a half-written output behind."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

DISK_FULL_HINT = (
    "the disk is full: free space there (df -h) or set experiment.output_dir to another disk, "
    "then run again; finished answers are kept in the checkpoint"
)


def disk_full(exc: BaseException) -> bool:
    """No space or no quota left: trying again on the same disk fails the same way."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def sha256_file(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def file_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Size and sha256, the pair recorded for every artifact and checked after every copy."""
    return {"path": str(path), "bytes": os.path.getsize(path), "sha256": sha256_file(path)}


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike[str], binary: bool = False) -> Iterator[Any]:
    """A file that appears under ``path`` complete or not at all (temp file + rename); the
    folders made for it go too when it fails."""
    path = Path(path)
    made = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    text = {} if binary else {"encoding": "utf-8", "newline": "\n"}
    try:
        with os.fdopen(fd, "wb" if binary else "w", **text) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        for folder in made:  # innermost first; one something else wrote into stays
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


@contextlib.contextmanager
def atomic_folder(target: str | os.PathLike[str], marker: str) -> Iterator[Path]:
    """A folder built in a temporary sibling and renamed to ``target`` once complete (the
    builder writes ``marker`` last). Another process that finished first wins; a failed build
    leaves nothing behind."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / marker).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    with atomic_writer(path) as fh:
        fh.write(text)
    return Path(path)


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def write_json_array_atomic(path: str | os.PathLike[str], items: Iterable[Any]) -> Path:
    """``write_json_atomic`` of a list, byte for byte, written as ``items`` come: a million
    predictions never stand in memory as one string."""
    with atomic_writer(path) as fh:
        first = True
        for item in items:
            text = json.dumps(item, indent=2, ensure_ascii=False).replace("\n", "\n  ")
            fh.write(("[\n  " if first else ",\n  ") + text)
            first = False
        fh.write("[]\n" if first else "\n]\n")
    return Path(path)


def read_json_array(path: str | os.PathLike[str], chunk: int = 2**20) -> Iterator[Any]:
    """The items of a JSON array file, one at a time: what ``write_json_array_atomic`` wrote
    read back without holding the whole array."""
    decoder = json.JSONDecoder()
    with open(path, encoding="utf-8") as fh:
        buffer, at, eof, opened = "", 0, False, False
        while True:
            while at < len(buffer) and (buffer[at].isspace() or (opened and buffer[at] == ",")):
                at += 1
            if at < len(buffer):
                if not opened:
                    if buffer[at] != "[":
                        raise json.JSONDecodeError("expected a JSON array", buffer, at)
                    at, opened = at + 1, True
                    continue
                if buffer[at] == "]":
                    return
                try:
                    item, end = decoder.raw_decode(buffer, at)
                except json.JSONDecodeError:
                    if eof:
                        raise
                    end = len(buffer)  # an item cut by the chunk (a number too): read on
                if eof or (end < len(buffer) and (buffer[end].isspace() or buffer[end] in ",]")):
                    yield item
                    at = end
                    continue
            elif eof:
                raise json.JSONDecodeError("the array is not closed", buffer, at)
            more = fh.read(chunk)
            buffer, at, eof = buffer[at:] + more, 0, not more


def write_jsonl_atomic(path: str | os.PathLike[str], records: Iterable[dict[str, Any]]) -> Path:
    """Streams records to a temp file, then renames: memory stays flat for large sets."""
    with atomic_writer(path) as fh:
        for record in records:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
    return Path(path)


def read_jsonl(path: str | os.PathLike[str]) -> Iterable[dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


class JsonLines:
    """A JSON-lines file read afresh on each iteration: records a step walks more than once
    without holding them."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(read_jsonl(self.path))

    def __len__(self) -> int:
        """The records, counted without parsing them."""
        with open(self.path, "rb") as fh:
            return sum(1 for line in fh if line.strip())


def remove_stale_temps(path: str | os.PathLike[str]) -> None:
    """Temp files ``atomic_writer`` left for ``path`` when a process was killed mid-write."""
    path = Path(path)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)

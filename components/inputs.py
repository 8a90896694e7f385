"""Where a step's inputs come from: a dataset, corpus or model named by a path or a URI, made
into a local file or folder plus the identity of what was read.

    /data/qa.jsonl                       a file or folder on the machine that runs the step
    s3://bucket/key, s3://host:port/bucket/key    through the project's S3 client
    clearml://dataset/..., clearml://model/<id>, clearml://task/<id>   registered by the
                                          ClearML wing (pipelines/clearml/inputs.py)

The identity (source, reference, sha256 or fingerprint, ids and versions) goes into
results.json: a result names exactly what it evaluated. A reference that cannot be fetched is
an ``InputError``: permanent (trying again fetches nothing), naming the setting and the
reference, and saying what to do.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from components.atomic import sha256_file, write_text_atomic
from components.storage import S3, StorageError

REMOTE_SCHEMES = ("s3", "clearml", "hf")  # hf://: read by components/hf_datasets.py


class InputError(RuntimeError):
    """An input that cannot be fetched; the message names it. Never transient."""

    transient = False


@dataclass(frozen=True)
class Fetched:
    path: Path  # the local file or folder
    identity: dict[str, Any] = field(default_factory=dict)


# scheme -> fetch(reference, setting, folder): the ClearML wing registers "clearml".
Fetcher = Callable[[str, str, Path], Fetched]
FETCHERS: dict[str, Fetcher] = {}


def scheme_of(reference: str) -> str:
    """``s3``, ``clearml`` (or another registered scheme), or ``""`` for a local path/hub id."""
    parsed = urlparse(str(reference))
    return parsed.scheme if parsed.scheme in (*REMOTE_SCHEMES, *FETCHERS) else ""


def is_remote(reference: str | None) -> bool:
    return bool(reference) and scheme_of(str(reference)) != ""


def s3_location(reference: str, s3: S3) -> tuple[str, str]:
    """(bucket, key) of ``s3://bucket/key``, or of ClearML's ``s3://host:port/bucket/key``
    (recognised by the configured endpoint's host, or by a port)."""
    parsed = urlparse(reference)
    path = parsed.path.lstrip("/")
    if parsed.netloc == s3.host or ":" in parsed.netloc:
        bucket, _, key = path.partition("/")
        return bucket, key
    return parsed.netloc, path


def fetch_input(
    reference: str,
    setting: str,
    folder: Path,
    s3: S3 | None = None,
    cache_dir: Path | None = None,
) -> Fetched:
    """``reference`` (the value of ``setting``, e.g. ``dataset.path``) as a local file or
    folder, fetched into ``folder`` where it is elsewhere; ``cache_dir`` keeps the
    fingerprints of local folders."""
    reference = str(reference)
    scheme = scheme_of(reference)
    if scheme == "":
        path = Path(reference)
        if path.exists():
            digest = sha256_file(path) if path.is_file() else folder_digest(path, cache_dir)
            return Fetched(path, {"source": "local", "path": reference, "sha256": digest})
        raise InputError(f"{setting}: no such file or folder: {reference!r} on this machine")
    if scheme == "s3":
        return _fetch_s3(reference, setting, folder, s3)
    if scheme not in FETCHERS:
        raise InputError(
            f"{setting}: {reference!r} is read through ClearML; run it with `make enqueue`, "
            "or install clearml and configure the server (clearml-init) to run it here"
        )
    return FETCHERS[scheme](reference, setting, folder)


def _fetch_s3(reference: str, setting: str, folder: Path, s3: S3 | None) -> Fetched:
    """One object (``key``) or, for a key that ends in ``/`` or names no object, every
    object under it as a folder (a model's files)."""
    if s3 is None:
        raise InputError(
            f"{setting}: {reference!r} is in S3 and storage.endpoint is not set; set it to the "
            'endpoint that holds the bucket (ARGS="storage.endpoint=http://minio:9000")'
        )
    bucket, key = s3_location(reference, s3)
    url = f"s3://{s3.host}/{bucket}/{key}"
    target = folder / bucket / key
    try:
        if key and not key.endswith("/") and s3.exists(url):
            path = s3.fetch(url, target, accept_unrecorded=True)  # hashed here
            identity = {"source": "s3", "url": url, "sha256": sha256_file(path)}
            return Fetched(path, identity)
        files = s3.download(url, target, accept_unrecorded=True)
    except StorageError as exc:
        if exc.transient:
            raise
        raise InputError(
            f"{setting}: cannot fetch {reference!r} from {s3.endpoint}: {exc}; check the "
            "bucket and key (`aws s3 ls` against the endpoint) and the credentials"
        ) from exc
    identity = {"source": "s3", "url": url, "files": len(files), "sha256": folder_digest(target)}
    return Fetched(target, identity)


def folder_digest(root: Path, cache_dir: Path | None = None) -> str:
    """One sha256 over every file's relative name and sha256: a folder's content identity
    (hidden files left out). With ``cache_dir`` the answer is kept under a key of the files'
    names, sizes and modification times, so an unchanged folder is not read again, while
    weights re-saved in place get a new identity."""
    files = sorted(p for p in root.rglob("*") if p.is_file() and not hidden(p, root))
    if not files:
        raise InputError(f"{root}: an empty folder")
    stats = [(p.relative_to(root).as_posix(), *_size_and_time(p)) for p in files]
    kept = None
    if cache_dir is not None:
        key = hashlib.sha256(json.dumps([str(root.resolve()), stats]).encode()).hexdigest()
        kept = cache_dir / "digests" / key
        if kept.is_file():
            return kept.read_text(encoding="utf-8").strip()
    digest = hashlib.sha256()
    for path, (relative, _, _) in zip(files, stats, strict=True):
        digest.update(f"{relative}\0{sha256_file(path)}\n".encode())
    value = digest.hexdigest()
    if kept is not None:
        write_text_atomic(kept, value + "\n")
    return value


def _size_and_time(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def hidden(path: Path, root: Path) -> bool:
    """A dot-name on the way from ``root`` (.cache, .git, our markers): not the content."""
    return any(part.startswith(".") for part in path.relative_to(root).parts)

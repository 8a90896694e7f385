"""Where a run's files live between steps: one interface, two places.

``LocalStore``: the run folder of `make run` (files stay where the steps wrote them).
``S3Store``: the run's prefix in S3, for ClearML steps on different machines; a step's files
go to ``<prefix>/<experiment>.<pipeline id>/steps/<step>/<file>``, its checkpoint to
``.../checkpoints/<key>/``. Every file handed on is a reference (a path, or an s3:// URL)
with the sha256 the step computed as it kept it; ``fetch`` turns the pair back into a local
file whose content is checked against that sha256, so a child reads exactly what its parent
wrote.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Protocol

from components.atomic import sha256_file
from components.checkpoint import Checkpoint, FileCheckpoint, S3Checkpoint
from components.storage import S3, StorageError


class Store(Protocol):
    caching: bool  # whether cached() can ever find anything
    cache_url: str  # where its cache is ("" where it has none)

    def put(self, path: Path, step: str) -> tuple[str, str]:
        """Keeps a step's output file; returns the reference its children get and the
        file's sha256."""
        ...

    def fetch(self, ref: str, folder: Path, sha256: str) -> Path:
        """A parent's output file, here, checked against the sha256 the parent recorded."""
        ...

    def checkpoint(self, key: str) -> Checkpoint: ...

    def cached(self, name: str, key: str, folder: Path) -> dict[str, Path] | None:
        """Files stored under a content key by an earlier run, still whole, or None."""
        ...

    def cache(self, name: str, key: str, files: dict[str, Path]) -> None: ...


class LocalStore:
    caching = False  # reading the file here again costs what a cache would
    cache_url = ""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)

    def put(self, path: Path, step: str) -> tuple[str, str]:
        return str(path), sha256_file(path)

    def fetch(self, ref: str, folder: Path, sha256: str) -> Path:
        actual = sha256_file(ref)
        if actual != sha256:
            raise StorageError(
                f"{ref}: changed after the step that wrote it (sha256 {actual} != its "
                f"recorded {sha256}); something else wrote the run folder: run again"
            )
        return Path(ref)

    def checkpoint(self, key: str) -> Checkpoint:
        return FileCheckpoint(self.run_dir, key)

    def cached(self, name: str, key: str, folder: Path) -> dict[str, Path] | None:
        return None

    def cache(self, name: str, key: str, files: dict[str, Path]) -> None:
        return None


class S3Store:
    caching = True

    def __init__(self, s3: S3, experiment: str, run_id: str) -> None:
        self.s3 = s3
        self.base = s3.run_key(experiment, run_id)

    def put(self, path: Path, step: str) -> tuple[str, str]:
        stored = self.s3.upload(path, f"{self.base}/steps/{step}/{path.name}")
        return stored["url"], stored["sha256"]

    def fetch(self, ref: str, folder: Path, sha256: str) -> Path:
        return self.s3.fetch(ref, folder / Path(ref).name, sha256)

    def checkpoint(self, key: str) -> Checkpoint:
        return S3Checkpoint(self.s3, f"{self.base}/checkpoints/{key}")

    @property
    def cache_url(self) -> str:
        return self.s3.url(f"{self.s3.prefix}/cache")

    def _cache_key(self, name: str, key: str) -> str:
        return f"{self.s3.prefix}/cache/{name}/{key}"

    def cached(self, name: str, key: str, folder: Path) -> dict[str, Path] | None:
        """Each object must exist and match its recorded sha256; a run never refers to
        another run's objects, it gets copies."""
        try:
            files = self.s3.download(self._cache_key(name, key), folder)
        except StorageError:  # an empty or unreadable cache is a miss, not a failure
            return None
        return {path.name: path for path in files}

    def cache(self, name: str, key: str, files: dict[str, Path]) -> None:
        for filename, path in files.items():
            self.s3.upload(path, f"{self._cache_key(name, key)}/{filename}")


def _stored_mark(store: Store, folder: Path) -> Path:
    """A file in a local cache folder saying this store's cache holds the folder too."""
    return folder / f".stored-{hashlib.sha256(store.cache_url.encode()).hexdigest()[:16]}"


def shared_folder(store: Store, name: str, key: str, folder: Path, marker: str) -> bool:
    """Fills the local cache folder ``folder`` (complete once ``marker`` is in it) from the
    store's cache, where an earlier run on another machine left it; True if it did."""
    if (folder / marker).is_file() or not store.caching:
        return False
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        hit = store.cached(name, key, tmp)
        if not hit or marker not in hit:
            return False
        _stored_mark(store, tmp).touch()
        with contextlib.suppress(OSError):  # another process filled it first
            os.replace(tmp, folder)
        return (folder / marker).is_file()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def share_folder(store: Store, name: str, key: str, folder: Path) -> bool:
    """Puts a complete local cache folder into the store's cache for other machines, once
    per store (the local folder remembers which stores hold it); True if it uploaded."""
    mark = _stored_mark(store, folder)
    if not store.caching or mark.is_file():
        return False
    files = {p.name: p for p in sorted(folder.iterdir()) if p.is_file() and p != mark}
    store.cache(name, key, {n: p for n, p in files.items() if not n.startswith(".stored-")})
    mark.touch()
    return True

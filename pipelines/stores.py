"""Where a run's files live between steps: one interface, two places.

``LocalStore``: the run folder of `make run` (files stay where the steps wrote them).
``S3Store``: the run's prefix in S3, for ClearML steps on different machines; a step's files
go to ``<prefix>/<experiment>.<pipeline id>/steps/<step>/<file>``, its checkpoint to
``.../checkpoints/<key>/``. Every file handed on is a reference (a path, or an s3:// URL)
that ``fetch`` turns back into a verified local file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from components.checkpoint import Checkpoint, FileCheckpoint, S3Checkpoint
from components.storage import StorageSettings


class Store(Protocol):
    caching: bool  # whether cached() can ever find anything

    def put(self, path: Path, step: str) -> str:
        """Keeps a step's output file; returns the reference its children get."""
        ...

    def fetch(self, ref: str, folder: Path) -> Path:
        """A parent's output file, here, verified."""
        ...

    def checkpoint(self, key: str) -> Checkpoint: ...

    def cached(self, name: str, key: str, folder: Path) -> dict[str, Path] | None:
        """Files stored under a content key by an earlier run, still whole, or None."""
        ...

    def cache(self, name: str, key: str, files: dict[str, Path]) -> None: ...


class LocalStore:
    caching = False  # reading the file here again costs what a cache would

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)

    def put(self, path: Path, step: str) -> str:
        return str(path)

    def fetch(self, ref: str, folder: Path) -> Path:
        return Path(ref)

    def checkpoint(self, key: str) -> Checkpoint:
        return FileCheckpoint(self.run_dir, key)

    def cached(self, name: str, key: str, folder: Path) -> dict[str, Path] | None:
        return None

    def cache(self, name: str, key: str, files: dict[str, Path]) -> None:
        return None


class S3Store:
    caching = True

    def __init__(self, settings: StorageSettings, experiment: str, run_id: str) -> None:
        from components.storage import client

        self.settings = settings
        self.base = settings.run_key(experiment, run_id)
        self._s3 = client(settings)

    def put(self, path: Path, step: str) -> str:
        from components.storage import upload_verified

        return upload_verified(
            self._s3, self.settings, path, f"{self.base}/steps/{step}/{path.name}"
        )["url"]

    def fetch(self, ref: str, folder: Path) -> Path:
        from components.storage import fetch

        return fetch(self.settings, ref, folder / Path(ref).name, self._s3)

    def checkpoint(self, key: str) -> Checkpoint:
        return S3Checkpoint(self.settings, f"{self.base}/checkpoints/{key}", self._s3)

    def _cache_key(self, name: str, key: str) -> str:
        return f"{self.settings.prefix}/cache/{name}/{key}"

    def cached(self, name: str, key: str, folder: Path) -> dict[str, Path] | None:
        """Each object must exist and match its recorded sha256; a run never refers to
        another run's objects, it gets copies."""
        from components.storage import StorageError, download_verified

        try:
            files = download_verified(self.settings, self._cache_key(name, key), folder, self._s3)
        except StorageError:  # an empty or unreadable cache is a miss, not a failure
            return None
        return {path.name: path for path in files}

    def cache(self, name: str, key: str, files: dict[str, Path]) -> None:
        from components.storage import upload_verified

        for filename, path in files.items():
            upload_verified(
                self._s3, self.settings, path, f"{self._cache_key(name, key)}/{filename}"
            )

"""A model archive (a ClearML model package: zip or tar) unpacked once into a folder of ours.

Not into ClearML's storage cache: with its disk-space strategy (clearml-agent's default
config turns it on below 10 GB free) a cleanup deletes cached files one at a time, oldest
first, and keeps their folders, so a model unpacked there on an earlier run came back empty
or without its weights. Our folder is checked against the archive's index on every use and
unpacked again when any file is missing or of another size.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from components.atomic import atomic_folder, sha256_file, write_text_atomic
from components.inputs import InputError

SUFFIXES = (".zip", ".tar.gz", ".tgz")  # what ClearML unpacks; any other file is used as it is
MARKER = ".unpacked.json"  # written last: the digest this folder was unpacked from
UNREADABLE = (zipfile.BadZipFile, tarfile.TarError, EOFError)  # not OSError: a full disk
DATA_FILTER = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}


def is_archive(path: Path) -> bool:
    return path.name.lower().endswith(SUFFIXES)


def index(archive: Path) -> tuple[dict[str, int], str]:
    """Each file's relative name and size, and a digest of the content: a zip's from its
    central directory (names, sizes, CRCs; no data read), a tar's from its bytes (listing a
    .tar.gz reads them anyway, and retrained weights keep their size and may keep an mtime)."""
    try:
        if archive.name.lower().endswith(".zip"):
            with zipfile.ZipFile(archive) as zipped:
                listed = zipped.infolist()
            files = [(i.filename, True, i.file_size, i.CRC) for i in listed if not i.is_dir()]
            digest = hashlib.sha256(json.dumps(sorted(files)).encode()).hexdigest()
        else:
            with tarfile.open(archive) as tar:
                files = [(m.name, m.isreg(), m.size, 0) for m in tar if not m.isdir()]
            digest = sha256_file(archive)
    except UNREADABLE as exc:
        raise InputError(
            f"{archive}: not a readable archive ({exc}); if it is ClearML's cached copy, delete "
            "it and run again, else register the model again from its folder"
        ) from exc
    return {_inside(archive, name, regular): size for name, regular, size, _ in files}, digest


def unpacked(archive: Path, cache: Path) -> Path:
    """``archive``'s files in ``cache/<digest>``: one folder per content, whatever the address
    (a checkpoint registered twice, a server moved), used as it is while it holds every file
    the index lists, at its size; else unpacked again (a temporary sibling renamed into place)."""
    sizes, digest = index(archive)
    if not sizes:
        raise InputError(
            f"{archive}: an archive with no files; register the model again from a folder "
            "that holds its weights"
        )
    target = cache / digest[:32]
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / f".{target.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # steps on one machine: one unpacks, the rest wait
        if _complete(target, sizes, digest):
            return target
        if target.exists():  # stripped: set aside (a unique name), removed below
            os.replace(target, tempfile.mkdtemp(prefix=f".{target.name}.stale.", dir=cache))
        for left in cache.glob(f".{target.name}.*"):  # and what killed unpacks left behind
            if left.is_dir():
                shutil.rmtree(left, ignore_errors=True)
        with atomic_folder(target, MARKER) as tmp:
            _extract(archive, tmp)
            marker = json.dumps({"archive": archive.name, "digest": digest})
            write_text_atomic(tmp / MARKER, marker)
    if not _complete(target, sizes, digest):
        raise InputError(
            f"{archive}: unpacked into {target}, which does not hold its files; delete that "
            "folder and run again"
        )
    return target


def _inside(archive: Path, name: str, regular: bool) -> str:
    """A regular file's name inside the archive's folder, or an error: links and names with
    ``..`` or a leading ``/`` are refused (Debian 12's Python 3.11.2 has no tarfile filter)."""
    parts = PurePosixPath(name).parts
    if not regular or name.startswith("/") or ".." in parts:
        raise InputError(
            f"{archive}: cannot unpack it ({name!r}: a link, or outside its folder); package "
            "the model folder again (make enqueue does)"
        )
    return PurePosixPath(*parts).as_posix()


def _complete(folder: Path, sizes: dict[str, int], digest: str) -> bool:
    try:
        kept = json.loads((folder / MARKER).read_text(encoding="utf-8"))
        return kept.get("digest") == digest and all(
            (folder / name).stat().st_size == size for name, size in sizes.items()
        )
    except (OSError, ValueError):
        return False


def _extract(archive: Path, folder: Path) -> None:
    try:
        if archive.name.lower().endswith(".zip"):
            with zipfile.ZipFile(archive) as zipped:
                zipped.extractall(folder)
        else:
            with tarfile.open(archive) as tar:
                tar.extractall(folder, **DATA_FILTER)  # index() refused links and ../ names
    except UNREADABLE as exc:
        raise InputError(f"{archive}: cannot unpack it ({exc})") from exc

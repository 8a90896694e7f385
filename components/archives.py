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
import zipfile
from pathlib import Path, PurePosixPath

from components.atomic import atomic_folder, write_text_atomic
from components.inputs import InputError

SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")
MARKER = ".unpacked.json"  # written last: the index this folder was unpacked from
UNREADABLE = (zipfile.BadZipFile, tarfile.TarError, EOFError)  # not OSError: a full disk
DATA_FILTER = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}


def is_archive(path: Path) -> bool:
    return path.name.lower().endswith(SUFFIXES)


def index(archive: Path) -> dict[str, list[int]]:
    """Each file's relative name with its size and checksum (a zip's CRC, a tar's mtime),
    from the archive's index: a zip's central directory is read without its data."""
    try:
        if archive.name.lower().endswith(".zip"):
            with zipfile.ZipFile(archive) as zipped:
                return {
                    _relative(i.filename): [i.file_size, i.CRC]
                    for i in zipped.infolist()
                    if not i.is_dir()
                }
        with tarfile.open(archive) as tar:
            return {_relative(m.name): [m.size, int(m.mtime)] for m in tar if m.isreg()}
    except UNREADABLE as exc:
        raise InputError(f"{archive}: not a readable archive ({exc})") from exc


def unpacked(archive: Path, cache: Path) -> Path:
    """``archive``'s files in ``cache/<digest of its index>``: one folder per content, whatever
    the address (a checkpoint registered twice, a server moved), used as it is while it holds
    every file the index lists, at its size; else unpacked again (a temporary sibling renamed
    into place)."""
    listed = index(archive)
    if not listed:
        raise InputError(f"{archive}: an archive with no files")
    digest = hashlib.sha256(json.dumps(sorted(listed.items())).encode()).hexdigest()
    target = cache / digest[:32]
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.with_name(f".{target.name}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # steps on one machine: one unpacks, the rest wait
        if _complete(target, listed, digest):
            return target
        if target.exists():  # stripped: set aside, then removed
            aside = target.with_name(f".{target.name}.stale.{os.getpid()}")
            os.replace(target, aside)
            shutil.rmtree(aside, ignore_errors=True)
        with atomic_folder(target, MARKER) as tmp:
            _extract(archive, tmp)
            marker = json.dumps({"archive": archive.name, "index": digest})
            write_text_atomic(tmp / MARKER, marker)
    if not _complete(target, listed, digest):
        raise InputError(f"{archive}: unpacked into {target}, which does not hold its files")
    return target


def _relative(name: str) -> str:
    return PurePosixPath(name.lstrip("/")).as_posix().removeprefix("./")


def _complete(folder: Path, listed: dict[str, list[int]], digest: str) -> bool:
    try:
        kept = json.loads((folder / MARKER).read_text(encoding="utf-8"))
        return kept.get("index") == digest and all(
            (folder / name).stat().st_size == size for name, (size, _) in listed.items()
        )
    except (OSError, ValueError):
        return False


def _extract(archive: Path, folder: Path) -> None:
    try:
        if archive.name.lower().endswith(".zip"):
            with zipfile.ZipFile(archive) as zipped:
                zipped.extractall(folder)  # names with .. or a leading / are made safe
        else:
            with tarfile.open(archive) as tar:
                members = [_inside(archive, member) for member in tar]
                tar.extractall(folder, members, **DATA_FILTER)
    except UNREADABLE as exc:
        raise InputError(f"{archive}: cannot unpack it ({exc})") from exc


def _inside(archive: Path, member: tarfile.TarInfo) -> tarfile.TarInfo:
    """Files and folders inside the archive's folder only (Python 3.11.2, Debian 12's, has no
    tarfile filter)."""
    if (
        not (member.isreg() or member.isdir())
        or member.name.startswith("/")
        or ".." in (PurePosixPath(member.name).parts)
    ):
        raise InputError(f"{archive}: cannot unpack it ({member.name!r}: a link or outside it)")
    return member

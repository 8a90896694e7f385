"""A model archive unpacked into a folder of ours (components/archives.py): used as it is while
it holds every file the archive lists, unpacked again when ClearML's disk-space cache cleanup
(or anyone) stripped it; one folder per content; steps that start together all get it."""

from __future__ import annotations

import io
import multiprocessing
import re
import tarfile
import zipfile
from pathlib import Path

import pytest

from components.archives import MARKER, unpacked
from components.inputs import InputError

FILES = {"config.json": b'{"a": 1}', "model.safetensors": b"w" * 4096, "sub/vocab.txt": b"x y"}


def zipped(path: Path, files: dict[str, bytes] = FILES) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return path


def contents(folder: Path) -> dict[str, bytes]:
    files = (p for p in folder.rglob("*") if p.is_file() and p.name != MARKER)
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in files}


def test_an_unpacked_folder_is_used_as_it_is_until_stripped_then_unpacked_again(tmp_path):
    archive = zipped(tmp_path / "ckpt.zip")
    cache = tmp_path / "cache"
    folder = unpacked(archive, cache)
    assert folder.parent == cache
    assert contents(folder) == FILES
    weights = folder / "model.safetensors"
    inode = weights.stat().st_ino
    assert unpacked(archive, cache) == folder
    assert weights.stat().st_ino == inode  # complete: not unpacked again
    # What ClearML's cleanup leaves: the folders, without the files it deleted (oldest first).
    weights.unlink()
    assert contents(unpacked(archive, cache)) == FILES
    for file in folder.rglob("*"):
        if file.is_file():
            file.unlink()
    assert contents(unpacked(archive, cache)) == FILES
    (folder / "config.json").write_bytes(b"{}")  # another size
    assert contents(unpacked(archive, cache)) == FILES
    assert sorted(p.name for p in cache.iterdir()) == [f".{folder.name}.lock", folder.name]


def test_one_folder_per_content_whatever_the_archive_s_name_or_address(tmp_path):
    cache = tmp_path / "cache"
    folder = unpacked(zipped(tmp_path / "ckpt.zip"), cache)
    assert unpacked(zipped(tmp_path / "registered-again.zip"), cache) == folder
    retrained = {**FILES, "model.safetensors": b"v" * 4096}  # the same sizes, new weights
    again = unpacked(zipped(tmp_path / "ckpt.zip", retrained), cache)
    assert again != folder and contents(again) == retrained and contents(folder) == FILES


def tarred(path: Path, files: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    """A .tar.gz as reproducible builds make it: every mtime 0."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 0
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return path


def test_a_tar_retrained_with_the_same_sizes_and_mtimes_gets_its_own_folder(tmp_path):
    cache = tmp_path / "cache"
    folder = unpacked(tarred(tmp_path / "ckpt.tar.gz", FILES), cache)
    assert contents(folder) == FILES
    retrained = {**FILES, "model.safetensors": b"v" * 4096}
    again = unpacked(tarred(tmp_path / "ckpt.tar.gz", retrained), cache)
    assert again != folder and contents(again) == retrained


@pytest.mark.parametrize(
    ("archive", "refused"),
    [
        ("up.tar.gz", "'../outside.json': a link, or outside its folder"),
        ("link.tar.gz", "'ckpt/passwd': a link, or outside its folder"),
        ("up.zip", "'../outside.json': a link, or outside its folder"),
        ("folders.zip", "an archive with no files; register the model again"),
        ("broken.zip", "not a readable archive"),
    ],
)
def test_an_archive_reaching_out_of_its_folder_or_holding_nothing_is_refused(
    tmp_path, archive, refused
):
    path = tmp_path / archive
    if archive == "up.tar.gz":
        tarred(path, {"ckpt/config.json": b"{}", "../outside.json": b"{}"})
    elif archive == "link.tar.gz":
        tarred(path, {"ckpt/config.json": b"{}"}, links={"ckpt/passwd": "/etc/passwd"})
    elif archive == "up.zip":
        zipped(path, {"ckpt/config.json": b"{}", "../outside.json": b"{}"})
    elif archive == "folders.zip":
        with zipfile.ZipFile(path, "w") as folders:
            folders.mkdir("ckpt")
    else:
        path.write_bytes(b"PK not a zip")
    with pytest.raises(InputError, match=re.escape(f"{path}: ") + ".*" + re.escape(refused)):
        unpacked(path, tmp_path / "cache")
    assert not (tmp_path / "outside.json").exists()
    assert not any((tmp_path / "cache").glob("[!.]*"))  # no folder unpacked


def _unpack(archive: Path, cache: Path, ready, out) -> None:
    ready.wait()  # all at once, as shards that start together on one machine
    try:
        out.put(str(unpacked(archive, cache)))
    except Exception as exc:  # noqa: BLE001 (reported to the test)
        out.put(repr(exc))


def test_steps_on_one_machine_at_once_all_get_it_whole_from_a_stripped_folder(tmp_path):
    archive = zipped(tmp_path / "ckpt.zip", {**FILES, "big.bin": b"b" * (32 << 20)})
    cache = tmp_path / "cache"
    (unpacked(archive, cache) / "big.bin").unlink()
    spawn = multiprocessing.get_context("spawn")
    ready, out = spawn.Barrier(4), spawn.Queue()
    steps = [spawn.Process(target=_unpack, args=(archive, cache, ready, out)) for _ in range(4)]
    for step in steps:
        step.start()
    folders = {out.get(timeout=120) for _ in steps}
    for step in steps:
        step.join()
    assert len(folders) == 1, folders
    folder = Path(folders.pop())
    assert contents(folder)["big.bin"] == b"b" * (32 << 20)
    assert sorted(p.name for p in cache.iterdir()) == [f".{folder.name}.lock", folder.name]


class StoredModel:
    """Stands in for ClearML's Model: ``get_weights`` returns the file from ClearML's cache,
    which its cleanup may delete before the caller opens it (``taken`` times)."""

    url = "s3://minio:9000/bucket/models/ckpt.zip"

    def __init__(self, stored: Path, taken: int = 0) -> None:
        self.stored, self.taken, self.calls = stored, taken, 0

    def get_weights(self, raise_on_error: bool = False) -> str:
        self.calls += 1
        cached = self.stored.with_name(f"cached-{self.calls}-{self.stored.name}")
        cached.write_bytes(self.stored.read_bytes())
        if self.calls <= self.taken:
            cached.unlink()
        return str(cached)


def test_a_step_unpacks_a_package_fetching_it_again_if_the_cleanup_took_it(tmp_path, monkeypatch):
    from pipelines.clearml.inputs import _weights

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    archive = zipped(tmp_path / "ckpt.zip")
    taken = StoredModel(archive, taken=1)
    assert contents(_weights(taken)) == FILES and taken.calls == 2
    weights = tmp_path / "model.gguf"  # not an archive: used as it is
    weights.write_bytes(b"GGUF")
    assert _weights(StoredModel(weights)).read_bytes() == b"GGUF"
    with pytest.raises(FileNotFoundError):
        _weights(StoredModel(archive, taken=2))  # taken twice: a real failure, said as one

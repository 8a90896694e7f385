"""A model archive unpacked into a folder of ours (components/archives.py): used as it is while
it holds every file the archive lists, unpacked again when ClearML's disk-space cache cleanup
(or anyone) stripped it; one folder per content; steps that start together all get it."""

from __future__ import annotations

import multiprocessing
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


def test_a_tar_archive_and_one_that_reaches_out_of_its_folder(tmp_path):
    source = tmp_path / "src"
    for name, data in FILES.items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes(data)
    with tarfile.open(tmp_path / "ckpt.tar.gz", "w:gz") as tar:
        tar.add(source / "config.json", "ckpt/config.json")
        tar.add(source / "sub", "ckpt/sub")
    folder = unpacked(tmp_path / "ckpt.tar.gz", tmp_path / "cache")
    assert contents(folder) == {
        "ckpt/config.json": FILES["config.json"],
        "ckpt/sub/vocab.txt": b"x y",
    }
    (source / "link").symlink_to("/etc/passwd")
    for name, member in (("up", "../outside.json"), ("link", "ckpt/passwd")):
        with tarfile.open(tmp_path / f"{name}.tar", "w") as tar:
            tar.add(source / "config.json", "ckpt/config.json")
            tar.add(source / ("config.json" if name == "up" else "link"), member)
        with pytest.raises(InputError, match=rf"{name}.tar: cannot unpack it \('{member}'"):
            unpacked(tmp_path / f"{name}.tar", tmp_path / "cache")
    assert not (tmp_path / "outside.json").exists()
    (tmp_path / "broken.zip").write_bytes(b"PK not a zip")
    with pytest.raises(InputError, match=r"broken.zip: not a readable archive"):
        unpacked(tmp_path / "broken.zip", tmp_path / "cache")


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

import hashlib
import json
import os

import pytest

from components.atomic import file_info, read_jsonl, write_json_atomic, write_jsonl_atomic


def test_json_and_jsonl_round_trip_with_checksums(tmp_path):
    path = write_json_atomic(tmp_path / "sub" / "r.json", {"a": "Zürich"})
    assert json.loads(path.read_text(encoding="utf-8")) == {"a": "Zürich"}
    info = file_info(path)
    assert info["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert info["bytes"] == path.stat().st_size
    jsonl = write_jsonl_atomic(tmp_path / "g.jsonl", ({"i": i} for i in range(3)))
    assert list(read_jsonl(jsonl)) == [{"i": 0}, {"i": 1}, {"i": 2}]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    path = write_json_atomic(tmp_path / "r.json", {"old": True})

    def records():
        yield {"new": 1}
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError):
        write_jsonl_atomic(path, records())
    assert json.loads(path.read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs Linux's /dev/full")
def test_a_command_on_a_full_disk_says_so_and_stops(capsys):
    from components.atomic import DISK_FULL_HINT
    from pipelines.cli import finish

    def write_answers() -> None:
        with open("/dev/full", "w") as fh:
            fh.write("answers")
            fh.flush()

    with pytest.raises(SystemExit) as exited:
        finish(write_answers)
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("error: [Errno 28] No space left on device")
    assert error.rstrip().endswith(DISK_FULL_HINT)


@pytest.mark.parametrize("chunk", [1, 3, 64, 2**20])
def test_a_json_array_reads_back_item_by_item_whatever_the_chunk(tmp_path, chunk):
    from components.atomic import read_json_array, write_json_array_atomic

    for items in ([], [{"a": "x]y,[z", "n": 12345}, 2, "s", None, True, -1.5e3], [[1, [2]], {}]):
        path = write_json_array_atomic(tmp_path / "a.json", items)
        assert list(read_json_array(path, chunk=chunk)) == items == json.loads(path.read_text())
    (tmp_path / "cut.json").write_text('[\n  {"a": 1},\n  {"b": ')
    with pytest.raises(json.JSONDecodeError):
        list(read_json_array(tmp_path / "cut.json", chunk=chunk))

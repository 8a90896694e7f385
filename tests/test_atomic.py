import hashlib
import json

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

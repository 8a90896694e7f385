import json

import pytest

from components.dataset import DatasetConfig, DatasetError, load_qa_dataset


def write(tmp_path, content: bytes | str, name: str = "qa_pairs.jsonl"):
    path = tmp_path / name
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


def line(**fields) -> str:
    return json.dumps(fields, ensure_ascii=False) + "\n"


def test_sample_dataset_is_valid_and_large_enough(sample_path):
    dataset = load_qa_dataset(sample_path)
    assert len(dataset.examples) >= 50
    assert len({e.question_id for e in dataset.examples}) == len(dataset.examples)
    assert len(dataset.sha256) == 64


def test_answer_as_string_or_list(tmp_path):
    path = write(
        tmp_path,
        line(question_id="a", question="Q1?", answer="x")
        + line(question_id="b", question="Q2?", answer=["y", "z"]),
    )
    examples = load_qa_dataset(path).examples
    assert [e.answers for e in examples] == [("x",), ("y", "z")]


def test_nq_open_lines_get_ids_from_line_numbers(tmp_path):
    path = write(tmp_path, line(question="Q1?", answer=["x"]) + line(question="Q2?", answer=["y"]))
    assert [e.question_id for e in load_qa_dataset(path).examples] == ["line-1", "line-2"]


def test_limit_takes_the_first_n_but_validates_everything(tmp_path):
    good = "".join(line(question_id=str(i), question=f"Q{i}?", answer=["a"]) for i in range(5))
    assert len(load_qa_dataset(write(tmp_path, good), limit=2).examples) == 2
    with pytest.raises(DatasetError, match=r":6: question: is missing"):
        load_qa_dataset(write(tmp_path, good + line(question_id="x", answer=["a"])), limit=2)


def test_a_large_file_is_checked_line_by_line_without_holding_it(tmp_path):
    """`dataset.limit=10` on a large file holds 10 examples, not the file's (550 MB of RSS
    for a million lines when the limit was applied after reading): measured against a load
    without a limit, the same file."""
    import tracemalloc

    long = "a question long enough to weigh something in memory, as real ones do " * 3
    path = write(
        tmp_path,
        "".join(
            line(question_id=f"q{i}", question=f"{long}{i}?", answer=[f"answer {i}", "b"])
            for i in range(20_000)
        ),
    )

    def peak(limit: int | None) -> int:
        tracemalloc.start()
        try:
            loaded = load_qa_dataset(path, limit=limit)
            assert len(loaded.examples) == (limit or 20_000) and loaded.lines_in_file == 20_000
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    assert peak(10) < peak(None) / 4

    # The load step hands each example on as it is read (to examples.jsonl) and keeps none.
    with (tmp_path / "examples.jsonl").open("w") as out:
        tracemalloc.start()
        try:
            handed = load_qa_dataset(path, keep=lambda e: out.write(e.question_id + "\n"))
            streamed = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert handed.count == 20_000 and not handed.examples
    assert streamed < peak(None) / 4


def test_bom_crlf_and_blank_lines_are_accepted(tmp_path):
    content = b"\xef\xbb\xbf" + line(question_id="a", question="Q?", answer=["x"]).encode()
    content = content.replace(b"\n", b"\r\n") + b"\n   \n"
    content += line(question_id="b", question="Q2?", answer=["y"]).encode()
    assert [e.question_id for e in load_qa_dataset(write(tmp_path, content)).examples] == ["a", "b"]


@pytest.mark.parametrize(
    ("bad_line", "expected"),
    [
        ('{"question_id": "x", "question": "Q?", "answer": ["a"]', r":2: json: "),
        ('["not", "an", "object"]', r":2: line: expected a JSON object"),
        ('{"question_id": "x", "answer": ["a"]}', r":2: question: is missing"),
        ('{"question_id": "x", "question": "  ", "answer": ["a"]}', r":2: question: is empty"),
        ('{"question_id": "x", "question": 5, "answer": ["a"]}', r":2: question: must be a string"),
        ('{"question_id": "x", "question": "Q?"}', r":2: answer: is missing"),
        ('{"question_id": "x", "question": "Q?", "answer": []}', r":2: answer: is an empty list"),
        ('{"question_id": "x", "question": "Q?", "answer": [null]}', r":2: answer: every entry"),
        ('{"question_id": "x", "question": "Q?", "answer": [""]}', r":2: answer: has no non-empty"),
        ('{"question_id": null, "question": "Q?", "answer": ["a"]}', r":2: question_id: must be"),
        ('{"question_id": "a", "question": "Q?", "answer": ["a"]}', r":2: question_id: duplicate"),
        (
            '{"question_id": "x", "question": "Q \\ud800?", "answer": ["a"]}',
            r":2: question: holds a",
        ),
        (
            '{"question_id": "x", "question": "Q?", "answer": ["a", "\\udfff"]}',
            r":2: answer: holds",
        ),
    ],
)
def test_bad_lines_name_file_line_and_field(tmp_path, bad_line, expected):
    path = write(tmp_path, line(question_id="a", question="Q1?", answer=["x"]) + bad_line + "\n")
    with pytest.raises(DatasetError, match=expected) as info:
        load_qa_dataset(path)
    assert str(path) in str(info.value)


def test_invalid_utf8_names_the_line(tmp_path):
    content = line(question_id="a", question="Q?", answer=["x"]).encode() + b'{"q": "\xff"}\n'
    with pytest.raises(DatasetError, match=r":2: line: invalid UTF-8"):
        load_qa_dataset(write(tmp_path, content))


def test_every_problem_is_listed_up_to_twenty_then_counted(tmp_path):
    content = "".join(line(question_id=str(i), question="", answer=["a"]) for i in range(25))
    with pytest.raises(DatasetError) as info:
        load_qa_dataset(write(tmp_path, content))
    assert info.value.total == 25
    assert ":20: question: is empty" in str(info.value)
    assert ":21:" not in str(info.value)
    assert "and 5 more" in str(info.value)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(DatasetError, match="file not found"):
        load_qa_dataset(tmp_path / "nope.jsonl")
    with pytest.raises(DatasetError, match="holds no examples"):
        load_qa_dataset(write(tmp_path, "\n"))


def test_real_nq_open_file_loads(nq_open_path):
    dataset = load_qa_dataset(nq_open_path, limit=20)
    assert len(dataset.examples) == 20
    assert dataset.lines_in_file >= 3000


def test_skip_mode_goes_on_and_lists_every_bad_line(tmp_path):
    content = (
        line(question_id="a", question="Q1?", answer=["x"])
        + "{broken\n"
        + line(question_id="b", question="", answer=["y"])
        + line(question_id="a", question="Q3?", answer=["z"])
        + line(question_id="c", question="Q4?", answer="w")
    )
    dataset = load_qa_dataset(write(tmp_path, content), on_error="skip")
    assert [e.question_id for e in dataset.examples] == ["a", "c"]
    assert [(p.line, p.field) for p in dataset.skipped] == [
        (2, "json"),
        (3, "question"),
        (4, "question_id"),
    ]
    with pytest.raises(DatasetError, match="3 invalid line"):
        load_qa_dataset(write(tmp_path, content))
    with pytest.raises(ValueError, match="dataset.on_error: 'ignore' is not one of strict, skip"):
        DatasetConfig(name="x", path="x.jsonl", on_error="ignore")  # checked where it is defined


def test_a_number_as_answer_is_read_as_its_text_and_said(tmp_path):
    path = write(
        tmp_path,
        line(question_id="a", question="When did WWII end?", answer=1945)
        + line(question_id="b", question="Pi to one place?", answer=[3.1, "three"])
        + line(question_id="c", question="Q?", answer=["x"]),
    )
    loaded = load_qa_dataset(path)
    assert [e.answers for e in loaded.examples] == [("1945",), ("3.1", "three"), ("x",)]
    assert loaded.noted == 2
    assert str(loaded.notes[0]) == f"{path}:1: answer: a number, read as the text '1945'"
    with pytest.raises(DatasetError, match=r":1: answer: must be a string"):
        load_qa_dataset(write(tmp_path, line(question_id="t", question="Q?", answer=True)))


def test_a_line_s_other_fields_are_kept_as_its_metadata(tmp_path):
    fields = {"category": "history", "source": {"book": "atlas", "page": 3}}
    path = write(tmp_path, line(question_id="a", question="Q?", answer=["x"], **fields))
    (example,) = load_qa_dataset(path).examples
    assert example.metadata == fields
    assert example.to_record()["metadata"] == fields

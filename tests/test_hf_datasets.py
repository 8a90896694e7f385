"""Hugging Face question sets (components/hf_datasets.py): a parquet file and a folder saved
by the datasets library, in other schemas than qa_pairs.jsonl (TriviaQA's nested answer
aliases, SimpleQA's problem/answer), mapped by ``dataset.fields``; nothing downloaded."""

from __future__ import annotations

import json

import pytest

from components.hf_datasets import FieldMap, HFDatasetError, is_hf, parse_hub, write_qa_pairs
from tests.conftest import make, run_cli, without_clearml_env

TRIVIA = [
    {
        "question_id": "tc_1",
        "question": "What is the capital of France?",
        "answer": {"value": "Paris", "aliases": ["Paris", "Paris, France"]},
    },
    {
        "question_id": "tc_2",
        "question": "Who wrote Hamlet?",
        "answer": {"value": "Shakespeare", "aliases": ["William Shakespeare", "Shakespeare"]},
    },
]
SIMPLEQA = [
    {"problem": "How many legs does a spider have?", "answer": "8", "topic": "science"},
    {"problem": "What colour is the sky on a clear day?", "answer": "blue", "topic": "other"},
]


def parquet(tmp_path, rows, name="trivia.parquet"):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / name
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def saved(tmp_path, rows):
    import datasets

    folder = tmp_path / "simpleqa"
    datasets.Dataset.from_list(rows).save_to_disk(str(folder))
    return folder


def test_triviaqa_s_nested_aliases_from_parquet(tmp_path):
    source = parquet(tmp_path, TRIVIA)
    assert is_hf(source) and not is_hf(tmp_path)
    target = tmp_path / "qa.jsonl"
    identity = write_qa_pairs(str(source), FieldMap(answer="answer.aliases"), target)
    records = [json.loads(line) for line in target.read_text().splitlines()]
    assert records[1] == {
        "question_id": "tc_2",
        "question": "Who wrote Hamlet?",
        "answer": ["William Shakespeare", "Shakespeare"],
    }
    assert identity["source"] == "parquet" and identity["fields"]["answer"] == "answer.aliases"


def test_simpleqa_s_problem_and_answer_from_a_saved_dataset(tmp_path):
    folder = saved(tmp_path, SIMPLEQA)
    assert is_hf(folder)
    target = tmp_path / "qa.jsonl"
    identity = write_qa_pairs(str(folder), FieldMap(question_id=None, question="problem"), target)
    records = [json.loads(line) for line in target.read_text().splitlines()]
    assert records[0] == {
        "question_id": "1",
        "question": "How many legs does a spider have?",
        "answer": ["8"],
    }
    assert identity["source"] == "saved-dataset" and identity["fingerprint"]


def test_a_field_the_set_lacks_is_named_with_the_setting_to_change(tmp_path):
    folder = saved(tmp_path, SIMPLEQA)
    with pytest.raises(HFDatasetError) as caught:
        write_qa_pairs(str(folder), FieldMap(question_id=None), tmp_path / "qa.jsonl")
    message = str(caught.value)
    assert f"{folder}: row 1: question: missing (set dataset.fields.question to one of" in message
    assert "'problem'" in message and not (tmp_path / "qa.jsonl").exists()


def test_hub_references_name_repo_config_revision_and_split():
    assert parse_hub("hf://mandarjoshi/trivia_qa:rc.nocontext@0f7faf3#validation") == {
        "repo": "mandarjoshi/trivia_qa",
        "config": "rc.nocontext",
        "revision": "0f7faf3",
        "split": "validation",
    }
    assert parse_hub("hf://basicv8vc/SimpleQA")["split"] == "test"


@pytest.mark.slow
def test_make_run_on_a_parquet_set_with_a_field_mapping(tmp_path):
    source = parquet(tmp_path, TRIVIA)
    out = tmp_path / "out"
    proc = run_cli(
        f"dataset.path={source}",
        "dataset.fields.answer=answer.aliases",
        "inference.max_new_tokens=8",
        f"experiment.output_dir={out}",
        "experiment.name=trivia",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads((out / "trivia" / "results.json").read_text())
    predictions = json.loads((out / "trivia" / "predictions.json").read_text())
    assert [p["question_id"] for p in predictions] == ["tc_1", "tc_2"]
    assert predictions[1]["answers"] == ["William Shakespeare", "Shakespeare"]
    identity = results["dataset"]["input"]["dataset"]
    assert identity["source"] == "parquet" and identity["fields"]["answer"] == "answer.aliases"
    assert identity["sha256"] == results["dataset"]["sha256"]


def test_make_enqueue_checks_a_parquet_set_through_its_field_mapping(tmp_path):
    """The submit-side check reads a parquet set as the load step will (it was read as JSONL
    and refused line 1), and a mapping that misses a column is named before anything is made."""
    source = parquet(tmp_path, TRIVIA)
    env = {"HOME": str(tmp_path)}
    good = make(
        "enqueue",
        f"ARGS=dataset.path={source} dataset.fields.answer=answer.aliases",
        base_env=without_clearml_env(),
        env=env,
        timeout=120,
    )
    assert good.returncode == 2
    assert "trivia.parquet" not in good.stderr and "2 things to fix first" in good.stderr
    bad = make(
        "enqueue",
        f"ARGS=dataset.path={source} dataset.fields.answer=answer.nope",
        base_env=without_clearml_env(),
        env=env,
        timeout=120,
    )
    assert bad.returncode == 2 and "3 things to fix first" in bad.stderr
    assert "trivia.parquet" in bad.stderr and "answer.nope" in bad.stderr

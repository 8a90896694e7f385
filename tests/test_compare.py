"""`make compare`: two hand-made prediction sets whose differences are known."""

from __future__ import annotations

import csv
import json
import zipfile

import pytest

from components.atomic import write_json_atomic
from components.compare import compare_predictions
from tests.conftest import make, make_dry_run


def pred(qid: str, prediction: str, recall: float | None) -> dict:
    return {
        "question_id": qid,
        "question": f"question {qid}",
        "answers": ["gold answer"],
        "prediction": prediction,
        "token_recall": recall,
        "exact_match": None if recall is None else recall == 1.0,
    }


A = [
    pred("q1", "gold answer", 1.0),
    pred("q2", "wrong", 0.0),
    pred("q3", "gold", 0.5),
    pred("q4", "gold answer", 1.0),
    pred("q5", "", None),
    pred("q6", "only in A", 0.0),
]
B = [
    pred("q1", "wrong", 0.0),
    pred("q2", "gold answer", 1.0),
    pred("q3", "answer", 0.5),
    pred("q4", "gold answer", 1.0),
    pred("q5", "", None),
    pred("q7", "only in B", 1.0),
]


def test_differences_are_found_sorted_and_paired():
    result = compare_predictions(A, B, samples=500)
    assert [(r["question_id"], r["difference"]) for r in result["rows"]] == [
        ("q1", -1.0),
        ("q2", 1.0),
        ("q3", 0.0),
    ]
    assert result["common"] == 5 and result["paired"] == 4
    assert result["only_a"] == ["q6"] and result["only_b"] == ["q7"]
    assert (result["b_better"], result["a_better"], result["same_recall_other_text"]) == (1, 1, 1)
    diff = result["difference"]
    assert diff["mean"] == 0.0 and diff["ci_low"] < 0 < diff["ci_high"]
    assert result["mean_a"] == result["mean_b"] == 0.625


def test_an_id_with_other_answers_is_not_paired_and_is_flagged():
    from components.compare import to_markdown

    other = [{**p, "answers": ["something else"]} if p["question_id"] == "q1" else p for p in B]
    result = compare_predictions(A, other, samples=200)
    assert result["mismatched"] == ["q1"] and result["paired"] == 3
    assert "q1" not in [r["question_id"] for r in result["rows"]]
    assert "1 question ids have other answers" in to_markdown(result, "a", "b")


def test_a_consistently_better_model_gives_an_interval_above_zero():
    a = [pred(f"q{i}", "no", 0.0) for i in range(40)]
    b = [pred(f"q{i}", "gold answer", 1.0 if i % 4 else 0.0) for i in range(40)]
    diff = compare_predictions(a, b, samples=1000)["difference"]
    assert diff["mean"] == 0.75 and diff["ci_low"] > 0.5


@pytest.fixture
def two_runs(tmp_path):
    for name, preds in (("run_a", A), ("run_b", B)):
        write_json_atomic(tmp_path / name / "predictions.json", preds)
        write_json_atomic(
            tmp_path / name / "results.json", {"experiment": name, "run_id": f"id_{name}"}
        )
    return tmp_path


def test_make_compare_on_two_experiments_writes_md_and_csv(two_runs):
    proc = make("compare", "A=run_a", "B=run_b", f"ARGS=experiment.output_dir={two_runs}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = two_runs / "compare" / "run_a_vs_run_b"
    with (out / "compare.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["question_id"] for r in rows] == ["q1", "q2", "q3"]
    assert rows[0]["prediction_a"] == "gold answer" and rows[0]["prediction_b"] == "wrong"
    markdown = (out / "compare.md").read_text()
    assert markdown.startswith("# run_a.id_run_a vs run_b.id_run_b\n")  # A first, as the folder
    assert "paired difference B - A: 0.000 [" in markdown
    assert (
        "| question q1 | gold answer | gold answer | wrong | 1.000 | 0.000 | -1.000 |" in markdown
    )
    assert "paired difference B - A" in proc.stdout


def test_make_compare_names_what_it_could_not_find(tmp_path):
    proc = make("compare", "A=nowhere", "B=run_b", f"ARGS=experiment.output_dir={tmp_path}")
    assert proc.returncode == 2
    assert "'nowhere': no finished run in nowhere" in proc.stderr
    assert "make compare A=" in make("compare", "A=x").stderr


def test_make_passes_a_name_with_quotes_backticks_and_dollars_as_text(two_runs):
    """Names reach the program as typed: a quote, backtick, `$(...)` or `${...}` in A=, B=,
    RUNS=, EXPERIMENT=, SRC= or DEST= is text, never shell, make or resolver code."""
    odd = 'it\'s "a" run'
    (two_runs / "run_a").rename(two_runs / odd)
    where = f"ARGS=experiment.output_dir={two_runs}"
    proc = make("compare", f"A={odd}", "B=run_b", where)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "paired difference B - A" in proc.stdout
    trap = two_runs / "ran"
    for value in (f"`touch {trap}`", f"$(touch {trap})", f"x'; touch {trap}; '", "${oc.env:HOME}"):
        proc = make("compare", f"A={value}", "B=run_b", where)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert f"error: {value!r}: no finished run" in proc.stderr, proc.stderr[-2000:]
    assert not trap.exists()
    for verb, variable, key in (
        ("leaderboard", "RUNS", "leaderboard.runs"),
        ("publish", "EXPERIMENT", "files.run_dir"),
        ("fetch", "SRC", "files.source"),
        ("fetch", "DEST", "files.dest"),
    ):
        dry = make_dry_run(verb, f"{variable}=a'`b$(c)")
        assert f"'{key}='\\''a\\'\\''`b$(c)'\\'''" in dry, dry


def test_compare_recorded_as_an_offline_clearml_task_with_the_table(two_runs):
    proc = make(
        "compare",
        f"A={two_runs / 'run_a'}",
        f"B={two_runs / 'run_b'}",
        f"ARGS=clearml.mode=offline experiment.output_dir={two_runs}",
        env={"HOME": str(two_runs)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    zip_path = next(
        line.split()[0] for line in proc.stdout.splitlines() if "offline session)" in line
    )
    with zipfile.ZipFile(zip_path) as zf:
        text = "".join(zf.read(n).decode("utf-8", "replace") for n in zf.namelist())
    assert "differing questions" in text and "question q1" in text
    assert "compare_csv" in text
    assert (
        json.loads((two_runs / "compare" / "run_a_vs_run_b" / "compare.json").read_text())["paired"]
        == 4
    )

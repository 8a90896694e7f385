"""Every context mode run as users run them, on the project's own example with passages and
the real model: `make run` in retrieval mode, a sweep over the modes with its context report,
`make rescore`, and a MIRAGE folder."""

import csv
import json

import pytest

from pipelines.config import compose, to_container
from pipelines.local import run_local
from tests.conftest import ROOT, check_run_folder, make

pytestmark = pytest.mark.slow
SHORT = ("dataset.limit=4", "inference.max_new_tokens=8")


def test_make_run_in_retrieval_mode_shows_and_keeps_the_passages(tmp_path):
    args = f"experiment_mode=retriever_context dataset=sample_passages {' '.join(SHORT)} \
experiment.output_dir={tmp_path}"
    proc = make("run", f"ARGS={args}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = tmp_path / "smollm2_135m_sample_passages_retriever_context"
    results = check_run_folder(run_dir, 4)
    context, retrieval = results["context"], results["retrieval"]
    assert context["mode"] == "retriever_context" and context["max_context_tokens"] == 512
    assert 0 < context["context_tokens"]["mean"] <= context["context_tokens"]["max"] <= 512
    assert retrieval["retriever"] == "bm25" and retrieval["k"] == 3
    assert retrieval["gold_recall_at_k"] == 1.0 and retrieval["index_bytes"] > 0
    assert list(results["steps"])[:2] == ["load_dataset", "retrieve"]
    predictions = json.loads((run_dir / "predictions.json").read_text())
    for p in predictions:
        assert 1 <= len(p["passages"]) <= 3 and all("score" in x for x in p["passages"])
        assert p["context_tokens"] > 0 and p["answer_in_context"] is True
    assert "retrieval       bm25 top 3: gold recall 1.000" in proc.stdout


def test_a_sweep_over_the_modes_reports_what_context_does_then_rescores(tmp_path):
    proc = make(
        "sweep",
        "MODELS=smollm2_135m",
        "DATASETS=sample_passages",
        "MODES=no_context,oracle_context,oracle_long_context",
        f"ARGS={' '.join(SHORT)} experiment.output_dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = (
        tmp_path
        / "sweeps"
        / ("smollm2_135m_x_sample_passages_x_no_context-oracle_context-oracle_long_context")
    )
    rows = list(csv.DictReader((sweep / "leaderboard.csv").open()))
    assert sorted(r["mode"] for r in rows) == [
        "no_context",
        "oracle_context",
        "oracle_long_context",
    ]
    by_mode = {r["mode"]: r for r in rows}
    assert by_mode["no_context"]["experiment"] == "smollm2_135m_sample_passages"
    long = json.loads(
        (tmp_path / "smollm2_135m_sample_passages_oracle_long_context" / "results.json").read_text()
    )
    short = json.loads(
        (tmp_path / "smollm2_135m_sample_passages_oracle_context" / "results.json").read_text()
    )
    # The long oracle shows the gold passage and its neighbours: more than the oracle alone.
    assert long["context"]["context_tokens"]["mean"] > short["context"]["context_tokens"]["mean"]
    reports = sorted((sweep / "context").glob("*/context_report.md"))
    assert len(reports) == 2
    text = reports[0].read_text()
    assert "gained with context:" in text and "lost with context:" in text
    data = json.loads(reports[0].with_suffix(".json").read_text())
    counts = data["counts"]
    assert counts["gained"] + counts["lost"] + counts["both"] + counts["neither"] == 4

    # Corrected answers: every answer of one question replaced by one the model never says.
    data_file = tmp_path / "corrected.jsonl"
    lines = (ROOT / "data" / "sample" / "with_passages.jsonl").read_text().splitlines()[:4]
    first = json.loads(lines[0]) | {"answer": ["zzyzx"]}
    data_file.write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")
    proc = make(
        "rescore",
        "RUN=smollm2_135m_sample_passages_oracle_context",
        f"DATASET={data_file}",
        f"ARGS=experiment.output_dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rescored = json.loads(
        (
            tmp_path / "smollm2_135m_sample_passages_oracle_context_rescored" / "results.json"
        ).read_text()
    )
    assert rescored["rescored"]["answers_changed"] == 1
    preds = json.loads(
        (
            tmp_path / "smollm2_135m_sample_passages_oracle_context_rescored" / "predictions.json"
        ).read_text()
    )
    assert preds[0]["answers"] == ["zzyzx"] and preds[0]["token_recall"] == 0.0
    assert preds[0]["passages"]  # what the question was shown is kept


def test_a_mirage_folder_runs_in_the_oracle_mode(tmp_path):
    cfg = to_container(
        compose(
            [
                "dataset=qa_pairs",
                f"dataset.path={ROOT / 'tests' / 'fixtures' / 'mirage'}",
                "experiment_mode=oracle_context",
                "inference.max_new_tokens=8",
                f"experiment.output_dir={tmp_path}",
            ]
        )
    )
    run_local(cfg)
    run_dir = tmp_path / "smollm2_135m_mirage_oracle_context"  # named after its folder
    results = check_run_folder(run_dir, 2)
    assert results["context"]["answer_in_context"] == 1.0
    predictions = json.loads((run_dir / "predictions.json").read_text())
    assert [p["passages"][0]["id"] for p in predictions] == ["nq-1/1", "popqa-7/0"]

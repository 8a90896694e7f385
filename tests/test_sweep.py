"""Sweeps: the local `make sweep` with real models, reuse, the leaderboard's numbers, and the
ClearML side (one pipeline per combination, a summary step) built under offline mode."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

from components.leaderboard import leaderboard_row, to_markdown
from components.run_upload import publish_run
from components.stats import bootstrap_mean
from tests.conftest import ROOT, make

NQ_LIKE = [
    {"question": "who wrote the novel moby dick", "answer": ["Herman Melville"]},
    {"question": "what is the capital city of japan", "answer": ["Tokyo"]},
    {"question": "how many legs does a spider have", "answer": ["eight", "8"]},
]


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def fake_run(recalls: list[float | None], name: str = "m_d") -> tuple[dict, list[dict]]:
    predictions = [
        {
            "question_id": f"q{i}",
            "question": f"question {i}",
            "answers": ["x"],
            "prediction": "x" if r == 1 else "y",
            "token_recall": r,
            "exact_match": None if r is None else r == 1,
        }
        for i, r in enumerate(recalls)
    ]
    scored = [r for r in recalls if r is not None]
    results = {
        "experiment": name,
        "run_id": "abc123",
        "model": {"name": name.split("_")[0]},
        "dataset": {"name": name.split("_")[1]},
        "counts": {"examples": len(recalls)},
        "exact_match": sum(r == 1 for r in scored) / len(scored),
        "throughput": {"questions_per_s": 12.345, "output_tokens_per_s": 100.0},
        "memory": {"peak_rss_bytes": 2 * 2**30, "peak_gpu_bytes": {"0": {"used": 3 * 2**30}}},
    }
    return results, predictions


def test_leaderboard_row_has_the_mean_its_interval_and_the_run_figures():
    results, predictions = fake_run([1.0, 0.0, 0.5, 1.0, None])
    row = leaderboard_row(results, predictions, samples=500)
    assert row["token_recall"] == 0.625 and row["examples"] == 5
    assert row["recall_ci_low"] <= 0.625 <= row["recall_ci_high"]
    assert 0.0 <= row["recall_ci_low"] < row["recall_ci_high"] <= 1.0
    assert row["exact_match"] == 0.5 and row["questions_per_s"] == 12.35
    assert row["peak_gpu_gib"] == 3.0 and row["peak_rss_gib"] == 2.0
    assert leaderboard_row(results, predictions, samples=500) == row  # seeded
    table = to_markdown([row], "t")
    assert "| m | d | no_context | 5 | 0.625 [" in table and "| 3.00 | 2.00 |" in table


def test_bootstrap_interval_narrows_with_more_questions():
    small = bootstrap_mean([1.0, 0.0] * 10)
    large = bootstrap_mean([1.0, 0.0] * 1000)
    assert small.mean == large.mean == 0.5
    assert (large.high - large.low) < (small.high - small.low) / 5
    assert bootstrap_mean([]).mean is None


@pytest.fixture
def nq_like(tmp_path) -> Path:
    path = tmp_path / "nq_like.jsonl"
    path.write_text("".join(json.dumps(q) + "\n" for q in NQ_LIKE))
    return path


@pytest.mark.slow
def test_local_sweep_two_models_two_datasets_then_reuse(tmp_path, nq_like):
    out = tmp_path / "out"
    args = f"dataset.limit=3 inference.max_new_tokens=8 experiment.output_dir={out}"
    env = {"NQ_OPEN_PATH": str(nq_like)}
    sweep = ["sweep", "MODELS=smollm2_135m,gemma3_270m", "DATASETS=sample,nq_open"]
    proc = make(*sweep, f"ARGS={args}", env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    board = out / "sweeps" / "smollm2_135m-gemma3_270m_x_sample-nq_open"
    rows = read_csv(board / "leaderboard.csv")
    assert {(r["model"], r["dataset"]) for r in rows} == {
        (m, d) for m in ("smollm2_135m", "gemma3_270m") for d in ("sample", "nq_open")
    }
    for row in rows:
        run_dir = out / row["experiment"]
        results = json.loads((run_dir / "results.json").read_text())
        predictions = json.loads((run_dir / "predictions.json").read_text())
        recalls = [p["token_recall"] for p in predictions]
        assert int(row["examples"]) == 3 == len(recalls)
        assert float(row["token_recall"]) == pytest.approx(sum(recalls) / 3, abs=1e-4)
        assert float(row["recall_ci_low"]) <= float(row["token_recall"])
        assert float(row["token_recall"]) <= float(row["recall_ci_high"])
        assert float(row["exact_match"]) == pytest.approx(results["exact_match"], abs=1e-4)
        assert float(row["questions_per_s"]) == pytest.approx(
            results["throughput"]["questions_per_s"], abs=0.01
        )
        assert float(row["peak_rss_gib"]) > 0 and row["run_id"] == results["run_id"]
        # Model-major order: each model is loaded for its first dataset only.
        assert results["inference"]["model_reused"] == (row["dataset"] == "nq_open")
    assert (board / "leaderboard.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (board / "leaderboard.md").read_text().count("\n| ") == 5  # header + 4 rows
    assert "| gemma3_270m | nq_open | no_context | 3 |" in proc.stdout

    again = make(*sweep, f"ARGS={args}", env=env)
    assert again.returncode == 0, again.stderr[-4000:]
    assert again.stdout.count("reused") == 4
    assert read_csv(board / "leaderboard.csv") == [{**r, "reused": "True"} for r in rows]

    # New content in the dataset file: only its combinations run again.
    with nq_like.open("a") as fh:
        fh.write(json.dumps({"question": "what color is the sky", "answer": ["blue"]}) + "\n")
    changed = make(*sweep, f"ARGS={args}", env=env)
    assert changed.returncode == 0, changed.stderr[-4000:]
    assert changed.stdout.count("reused") == 2
    assert "smollm2_135m x nq_open: running" in changed.stdout

    # Results from another kind of machine ("auto" resolved to CUDA there) are not reused.
    results_path = out / "gemma3_270m_sample" / "results.json"
    results = json.loads(results_path.read_text())
    results["inference"]["device"] = "cuda"
    results_path.write_text(json.dumps(results))
    elsewhere = make(*sweep, f"ARGS={args}", env=env)
    assert "gemma3_270m x sample: running" in elsewhere.stdout
    assert elsewhere.stdout.count("reused") == 3

    forced = make("sweep", "MODELS=smollm2_135m", "DATASETS=sample", "FORCE=true", f"ARGS={args}")
    assert forced.returncode == 0 and "running" in forced.stdout and "reused" not in forced.stdout
    redone = json.loads((out / "smollm2_135m_sample" / "results.json").read_text())
    assert redone["counts"]["resumed"] == 0  # regenerated, not read back from the checkpoint


def test_sweep_checks_every_combination_before_running_any(tmp_path):
    proc = make(
        "sweep",
        "MODELS=smollm2_135m,nope",
        "DATASETS=sample",
        f"ARGS=experiment.output_dir={tmp_path}",
    )
    assert proc.returncode == 2
    assert "model: unknown nope; one of" in proc.stderr
    missing = make(
        "sweep",
        "MODELS=smollm2_135m",
        "DATASETS=sample,nq_open",
        f"ARGS=experiment.output_dir={tmp_path}",
        env={"NQ_OPEN_PATH": str(tmp_path / "absent.jsonl")},
    )
    assert missing.returncode == 2
    assert "smollm2_135m x nq_open: dataset.path: no such file" in missing.stderr
    assert not (tmp_path / "smollm2_135m_sample").exists()  # nothing ran
    shared = make(
        "sweep",
        "MODELS=smollm2_135m",
        "DATASETS=sample,qa_pairs",
        f"ARGS=experiment.name=fixed dataset.path={ROOT / 'data/sample/qa_pairs.jsonl'}",
    )
    assert shared.returncode == 2 and "experiment.name: the combinations share" in shared.stderr


def test_summary_reads_finished_runs_from_s3_and_lists_the_missing(settings, tmp_path):
    from components.atomic import write_json_atomic
    from pipelines.executor import RunContext
    from pipelines.steps import leaderboard_step
    from pipelines.stores import LocalStore

    runs = []
    for name, recalls in (("m1_d", [1.0, 1.0, 0.0]), ("m2_d", [0.0, 0.0, 1.0])):
        results, predictions = fake_run(recalls, name)
        folder = tmp_path / name
        write_json_atomic(folder / "results.json", results)
        write_json_atomic(folder / "predictions.json", predictions)
        publish_run(settings, folder, name, f"id{name}")
        runs.append({"id": f"id{name}", "experiment": name, "model": name[:2], "dataset": "d"})
    runs.append({"id": "idgone", "experiment": "m3_d", "model": "m3", "dataset": "d"})
    for run in runs:
        run["reused"] = False
    board = tmp_path / "board"
    context = RunContext("sweep-s", "r", "now", board, LocalStore(board), storage=settings)
    sweep = {"bootstrap_samples": 200, "confidence": 0.95, "seed": 0}
    summary = leaderboard_step(runs, sweep, "s", context)
    assert [(r["model"], r["token_recall"]) for r in summary["rows"]] == [
        ("m1", 0.6667),
        ("m2", 0.3333),
    ]
    assert [m["id"] for m in summary["missing"]] == ["idgone"]
    assert len(read_csv(tmp_path / "board" / "leaderboard.csv")) == 2


def test_make_enqueue_sweep_without_a_server_fails_before_creating_anything(tmp_path):
    env = {"HOME": str(tmp_path), "CLEARML_CONFIG_FILE": str(tmp_path / "none.conf")}
    env.update({k: "" for k in os.environ if k.startswith("CLEARML_API")})
    proc = make(
        "enqueue-sweep",
        "QUEUE=gpu",
        "MODELS=smollm2_135m,gemma3_270m",
        "DATASETS=sample",
        "ARGS=storage.endpoint=http://127.0.0.1:9",
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "no ClearML server is configured" in proc.stderr
    assert not (tmp_path / ".clearml").exists()


def test_make_leaderboard_ranks_finished_runs(tmp_path):
    from components.atomic import write_json_atomic

    out = tmp_path / "out"
    for name, recalls in (("m1_d", [1.0, 0.0, 0.0]), ("m2_d", [1.0, 1.0, 0.0])):
        results, predictions = fake_run(recalls, name)
        write_json_atomic(out / name / "results.json", results)
        write_json_atomic(out / name / "predictions.json", predictions)
    (out / "unfinished").mkdir()
    write_json_atomic(out / "unfinished" / "predictions.json", [])
    proc = make("leaderboard", "RUNS=m1_d,m2_d", f"ARGS=experiment.output_dir={out}")
    assert proc.returncode == 0, proc.stderr
    rows = read_csv(out / "sweeps" / "m1_d-m2_d" / "leaderboard.csv")
    assert [(r["experiment"], r["token_recall"]) for r in rows] == [
        ("m2_d", "0.6667"),
        ("m1_d", "0.3333"),
    ]
    assert proc.stdout.index("| m2 |") < proc.stdout.index("| m1 |")
    again = make("leaderboard", "RUNS=m1_d,unfinished", f"ARGS=experiment.output_dir={out}")
    assert again.returncode == 2 and "not a finished run (no results.json)" in again.stderr


def test_two_runs_of_one_model_and_dataset_are_told_apart_on_the_leaderboard():
    """Other settings, same model and dataset: two rows that name their experiments and two
    bars (one hid the other), with F1 and answer length beside recall."""
    from components.leaderboard import plot

    rows = []
    for name, recalls in (("m_d", [1.0, 1.0]), ("m_d-2", [0.0, 1.0])):
        results, predictions = fake_run(recalls, name=name)
        results["dataset"]["name"] = "d"
        results["token_f1"], results["answer_words"] = {"mean": 0.25}, {"mean": 12.0}
        rows.append(leaderboard_row(results, predictions, samples=200))
    assert rows[0]["token_f1"] == 0.25 and rows[0]["answer_words"] == 12.0
    table = to_markdown(rows, "t")
    assert "| 0.250 | 12.0 |" in table and "| m_d |" in table and "| m_d-2 |" in table
    figure = plot(rows, "a title long enough to be cut off at the figure's edge " * 3)
    try:
        assert len(figure.axes[0].patches) == 2
        assert "\n" in figure.axes[0].get_title()
    finally:
        import matplotlib.pyplot as plt

        plt.close(figure)

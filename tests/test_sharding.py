"""inference.shards=N locally: contiguous shards, run one after another, merged in order."""

import json
from pathlib import Path

import pytest

from components.atomic import read_jsonl, write_jsonl_atomic
from components.backends.pool import keep_loaded
from components.inference.report import GenerationReport
from components.inference.run import shard_bounds
from pipelines.config import compose, to_container
from pipelines.executor import RunContext
from pipelines.local import run_local
from pipelines.steps import merge_shards_step
from pipelines.stores import LocalStore

SHARD_1 = {"sample-003", "sample-004"}


def test_shards_are_contiguous_cover_everything_and_differ_by_at_most_one():
    for count in (0, 1, 7, 10):
        for shards in (1, 2, 3, 4):
            bounds = [shard_bounds(count, i, shards) for i in range(shards)]
            assert bounds[0][0] == 0 and bounds[-1][1] == count
            assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False))
            sizes = [high - low for low, high in bounds]
            assert max(sizes) - min(sizes) <= 1


def _shard(tmp_path, index, ids, **extra):
    path = tmp_path / f"generations.shard{index}.jsonl"
    write_jsonl_atomic(
        path,
        ({"question_id": i, "prediction": i, "prompt_tokens": 1, "output_tokens": 1} for i in ids),
    )
    report = GenerationReport(
        generations_path=str(path),
        checkpoint="x",
        examples=len(ids),
        resumed=0,
        generated=len(ids),
        generated_output_tokens=len(ids),
        prompt_tokens=len(ids),
        output_tokens=len(ids),
        load_seconds=1.0,
        generate_seconds=2.0,
        model_path="x",
        model_source="x",
        gguf_sha256="x",
        backend="x",
        backend_reason="x",
        device="x",
        dtype="x",
        batch_size=None,
        batch_size_reason=None,
        model_reused=False,
        environment={},
        shard=index,
        shards=2,
    )
    return {**report.to_dict(), **extra}


def test_merge_refuses_a_shard_that_misses_or_repeats_an_answer(tmp_path):
    examples = tmp_path / "examples.jsonl"
    write_jsonl_atomic(examples, ({"question_id": f"q{i}"} for i in range(5)))
    run = RunContext("e", "r", "now", tmp_path, LocalStore(tmp_path))
    good = [_shard(tmp_path, 0, ["q0", "q1"]), _shard(tmp_path, 1, ["q2", "q3", "q4"])]
    merged = merge_shards_step(str(examples), good, [g["generations_path"] for g in good], run)
    ids = [g["question_id"] for g in read_jsonl(merged["generations_path"])]
    assert ids == ["q0", "q1", "q2", "q3", "q4"]
    assert merged["questions_per_s"] == 5 / 4.0  # per GPU-second, comparable to one shard
    for answers in (["q2", "q2", "q4"], ["q2", "q3"], ["q2", "q3", "q4", "q4"]):
        bad = [_shard(tmp_path, 0, ["q0", "q1"]), _shard(tmp_path, 1, answers)]
        with pytest.raises(RuntimeError, match="shard 1: .* does not answer examples 2..4"):
            merge_shards_step(str(examples), bad, [b["generations_path"] for b in bad], run)
        kept = [g["question_id"] for g in read_jsonl(merged["generations_path"])]
        assert kept == ids  # the refused merge left the earlier file as it was


@pytest.mark.slow
def test_sharded_run_equals_unsharded_and_a_lost_shard_is_redone_alone(tmp_path, smollm2_path):
    def run(name: str, shards: int) -> dict:
        cfg = to_container(
            compose(
                [
                    "dataset.limit=7",
                    "inference.max_new_tokens=10",
                    "inference.dtype=float32",
                    f"inference.shards={shards}",
                    f"experiment.name={name}",
                    f"experiment.output_dir={tmp_path}",
                ]
            )
        )
        run_local(cfg)
        return json.loads((tmp_path / name / "results.json").read_text())

    def predictions(name: str) -> list:
        data = json.loads((tmp_path / name / "predictions.json").read_text())
        return [(p["question_id"], p["prediction"]) for p in data]

    with keep_loaded():  # one model for the three runs
        whole = run("whole", 1)
        sharded = run("sharded", 3)
        assert predictions("sharded") == predictions("whole")
        ids = [i for i, _ in predictions("sharded")]
        assert len(ids) == len(set(ids)) == 7
        assert sharded["inference"]["shards"] == 3 and whole["inference"]["shards"] == 1
        assert [s["examples"] for s in sharded["timing"]["shards"]] == [2, 2, 3]
        assert sharded["token_recall"] == whole["token_recall"]

        # A finished run leaves no checkpoint. One killed after shards 0 and 2 finished left
        # theirs (the answers it had saved, in the checkpoint's own format): a rerun redoes
        # shard 1 only.
        lost = json.loads((tmp_path / "sharded" / "results.json").read_text())
        assert not list((tmp_path / "sharded").glob("checkpoint-*.jsonl"))
        checkpoint = Path(lost["inference"]["checkpoint"])
        saved = json.loads((tmp_path / "sharded" / "predictions.json").read_text())
        fields = ("question_id", "prediction", "prompt_tokens", "output_tokens")
        answers = [{f: p[f] for f in fields} for p in saved]
        write_jsonl_atomic(checkpoint, [a for a in answers if a["question_id"] not in SHARD_1])
        again = run("sharded", 3)
    assert [s["resumed"] for s in again["timing"]["shards"]] == [2, 0, 3]
    assert predictions("sharded") == predictions("whole")
    assert again["run_id"] != lost["run_id"]
    # Another shard count resumes from the same checkpoint: nothing is generated again.
    write_jsonl_atomic(checkpoint, answers)
    with keep_loaded():
        two = run("sharded", 2)
    assert sum(s["resumed"] for s in two["timing"]["shards"]) == 7

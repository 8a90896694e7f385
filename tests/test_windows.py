"""An inference step tokenizes and generates a window of examples at a time: what the run
decides from its prompts (checkpoint key, shared prefix, longest prompt) is the same whatever
the window, and answers reach the checkpoint and the generations file window by window."""

from __future__ import annotations

import itertools
import json
import tracemalloc

import pytest

from components.atomic import read_jsonl
from components.checkpoint import FileCheckpoint, prompts_digest
from components.inference.config import InferenceConfig
from components.inference.plan import plan_inference, walk_prompts
from components.inference.run import generate_answers
from components.inference.windows import encode_windows
from components.model_files import ModelConfig
from components.modes import CONTEXT_TEMPLATE, ModeConfig
from components.passages import load_corpus
from components.prompts import PromptFormat, encode_prompts, load_tokenizer, shared_prefix
from pipelines.config import section
from tests.conftest import ROOT, SMOLLM2

SAMPLE = ROOT / "data" / "sample"
ORACLE = ModeConfig(
    name="oracle_context", template=CONTEXT_TEMPLATE, completion_template=CONTEXT_TEMPLATE
)


def with_passages() -> list[dict]:
    corpus = load_corpus(SAMPLE / "passages.jsonl")
    records = [json.loads(x) for x in (SAMPLE / "with_passages.jsonl").read_text().splitlines()]
    return [{**r, "passages": [corpus.get(g).to_record() for g in r["gold"]]} for r in records]


def test_windows_read_the_examples_only_as_they_are_needed(smollm2_path):
    def examples():
        for i in itertools.count():
            assert i < 4, "the examples were read past the first window"
            yield {"question": f"What is {i} plus one?"}

    tokenizer = load_tokenizer(smollm2_path)
    first = next(encode_windows(tokenizer, examples(), PromptFormat(), ModeConfig(), 3))
    assert len(first.prompts) == 3 and first.contexts is None


def test_the_whole_run_s_prompts_decide_the_same_whatever_the_window(smollm2_path):
    """Closed-book and with passages: a window of 1, 4 or all gives the digest, prefix and
    longest prompt of the whole run encoded at once (so checkpoints made before windows
    resume)."""
    tokenizer = load_tokenizer(smollm2_path)
    examples = with_passages()
    for mode, fmt in [
        (ModeConfig(), PromptFormat()),
        (ORACLE, PromptFormat(template=CONTEXT_TEMPLATE)),
    ]:
        windows = next(encode_windows(tokenizer, examples, fmt, mode, len(examples)))
        whole = windows.prompts
        walks = {
            size: walk_prompts(tokenizer, fmt, encode_windows(tokenizer, examples, fmt, mode, size))
            for size in (1, 4, 100)
        }
        assert len({w for w in walks.values()}) == 1, walks
        walk = walks[1]
        assert walk.digest == prompts_digest(whole)
        assert walk.shared_prefix == shared_prefix(tokenizer, fmt, whole) > 0
        assert (walk.examples, walk.longest) == (len(examples), max(map(len, whole)))
        if mode.uses_context:
            assert whole == encode_prompts(
                tokenizer,
                [e["question"] for e in examples],
                fmt,
                [c.text for c in windows.contexts],
            )
            assert "Background:" in walk.first and examples[0]["question"] in walk.first


class Reads:
    """Examples as a step gets them (walked once per pass), counting what each pass read."""

    def __init__(self, records: list[dict]) -> None:
        self.records, self.read = records, 0

    def __iter__(self):
        self.read = 0
        for record in self.records:
            self.read += 1
            yield record


def test_answers_go_window_by_window_in_dataset_order_around_resumed_ones(tmp_path):
    """Five questions, two already in the checkpoint, a window of two: each batch saved holds
    at most two answers, the first is saved before the third question is read, and the
    answers come out in dataset order with the resumed ones kept."""
    examples = Reads(
        [
            {"question_id": f"q{i}", "question": f"What is {i} plus one?", "answers": [str(i + 1)]}
            for i in range(5)
        ]
    )
    kept = [
        {"question_id": q, "prediction": f"kept {q}", "prompt_tokens": 9, "output_tokens": 2}
        for q in ("q1", "q3")
    ]
    appends: list[tuple[int, int]] = []  # (answers saved, questions read by then)

    class Watched(FileCheckpoint):
        def append(self, records):
            records = list(records)
            appends.append((len(records), examples.read))
            super().append(records)

    FileCheckpoint(tmp_path, "k").append(kept)
    stale = tmp_path / ".generations.jsonl.killed.tmp"  # what a SIGKILL mid-write leaves
    stale.write_text('{"question_id": "q0"')
    report = generate_answers(
        section(ModelConfig, SMOLLM2, "model"),
        section(InferenceConfig, {"max_new_tokens": 4, "batch_size": 32}, "inference"),
        examples,
        checkpoint_for=lambda key: Watched(tmp_path, "k"),
        generations_path=tmp_path / "generations.jsonl",
        environment={},
        window=2,
    )
    got = list(read_jsonl(tmp_path / "generations.jsonl"))
    assert [g["question_id"] for g in got] == [f"q{i}" for i in range(5)]
    assert [g["prediction"] for g in got if g["question_id"] in ("q1", "q3")] == [
        "kept q1",
        "kept q3",
    ]
    assert all(g["prediction"] and not g["prediction"].startswith("kept") for g in got[::2])
    assert [n for n, _ in appends] == [1, 1, 1], appends  # q0, q2, q4: one window each
    assert appends[0][1] <= 2, f"the whole shard was read before the first answer: {appends}"
    assert (report.examples, report.resumed, report.generated) == (5, 2, 3)
    assert not stale.exists()
    assert report.prompt_tokens == sum(g["prompt_tokens"] for g in got)


def test_a_resume_holds_the_checkpoint_s_answers_on_disk_not_in_memory(tmp_path):
    """20,000 saved answers (2 MB): loading them, asking for each and reading them back
    stays far below what a dict of them would take (about 15 MB here)."""
    checkpoint = FileCheckpoint(tmp_path, "k")
    saved = [
        {"question_id": f"q{i}", "prediction": f"answer number {i}", "prompt_tokens": 40,
         "output_tokens": 3}
        for i in range(20_000)
    ]  # fmt: skip
    checkpoint.append(saved)
    size = checkpoint.path.stat().st_size
    tracemalloc.start()
    try:
        done = checkpoint.load()
        assert all(f"q{i}" in done for i in range(0, 20_000, 7)) and "q-1" not in done
        assert done["q19999"] == saved[-1] and len(done) == 20_000
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < size / 4, f"loading {size} bytes of answers took {peak} bytes of memory"


class Untouchable(list):
    def __iter__(self):
        raise AssertionError("the examples were read before the settings were checked")


def test_settings_this_machine_refuses_fail_before_any_prompt_is_tokenized():
    model = section(ModelConfig, SMOLLM2, "model")
    inference = section(InferenceConfig, {"tensor_parallel_size": 2}, "inference")
    examples = Untouchable([{"question": "Who wrote Hamlet?"}])
    with pytest.raises(ValueError, match="tensor_parallel_size: > 1 needs the vllm backend"):
        plan_inference(model, inference, examples)


def test_sampled_windows_do_not_replay_one_random_stream(tmp_path):
    """One question four times, a window of two, sampling with a seed: the second window's
    answers are not the first's again (each backend reseeds per call)."""
    examples = [
        {"question_id": f"q{i}", "question": "Name a colour.", "answers": ["red"]} for i in range(4)
    ]
    settings = {"max_new_tokens": 12, "temperature": 1.0, "seed": 7, "batch_size": 2}
    generate_answers(
        section(ModelConfig, SMOLLM2, "model"),
        section(InferenceConfig, settings, "inference"),
        examples,
        checkpoint_for=lambda key: FileCheckpoint(tmp_path, key),
        generations_path=tmp_path / "generations.jsonl",
        environment={},
        window=2,
    )
    got = [g["prediction"] for g in read_jsonl(tmp_path / "generations.jsonl")]
    assert got[:2] != got[2:], got

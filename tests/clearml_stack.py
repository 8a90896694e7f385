"""A real ClearML server with agents, for the tests and the overhead benchmark.

The server is the clearml-server code itself (apiserver + fileserver) on stand-ins for
MongoDB and Elasticsearch, started by ../shared/tools/clearml-server (or the folder named by
CLEARML_SERVER_TOOLS); S3 is moto's standalone server, standing in for MinIO. Agents run in
docker mode as users run them (`make agent`, or the bare `clearml-agent daemon --docker`,
with a clearml.conf made from docker/clearml.conf.example: tests/docker_stack.py), or, for
the overhead benchmark's comparison, in venv mode in this project's own environment.
Everything started here is stopped by PID (and containers by the agent's label).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.clearml.containers import ALLOW_ENV
from tests import docker_stack

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / os.environ.get("CLEARML_SERVER_TOOLS", "../shared/tools/clearml-server")
BUCKET = "clearml-artifacts"
S3_KEYS = ("stack-key-id", "stack-secret")
# The server's watchdog stops a task whose agent stopped answering after this long
# (production default: 7200 s; docs/clearml.md says how to lower it). A server restart
# counts against it: the restart test's outage plus the SDK's retry backoff stays below.
WATCHDOG = {"threshold_sec": 60, "watch_interval_sec": 5}
# Fixed by the server's tools: Redis and osmem (its Elasticsearch stand-in).
SERVER_PORTS = (6379, 9200)
# Packaged models converted once, shared by the host and the step containers (make agent's
# MODEL_CACHE), fixed before a test points HOME elsewhere.
MODEL_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "slm-qa-eval"
WHERE_TO_GET_IT = (
    f"{TOOLS} is absent: the real-server tests need the clearml-server source and its "
    "scripts (setup.sh, start.sh, stop.sh); get clearml-server from "
    "https://github.com/clearml/clearml-server and point CLEARML_SERVER_TOOLS at a folder "
    "holding clearml-server-src.tar.gz with those scripts"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


class PortsTaken(RuntimeError):
    """The server's fixed ports are held by something that is not a server of ours."""


class Api:
    """The server's REST API, as the web UI calls it (no SDK state in the test process)."""

    def __init__(self, host: str, key: str, secret: str) -> None:
        import requests

        self.host, self.session = host, requests.Session()
        login = self.session.post(f"{host}/auth.login", auth=(key, secret), timeout=30)
        login.raise_for_status()
        self.session.headers["Authorization"] = f"Bearer {login.json()['data']['token']}"

    def __call__(self, endpoint: str, **payload) -> dict:
        reply = self.session.post(f"{self.host}/{endpoint}", json=payload, timeout=60)
        body = reply.json()
        if reply.status_code != 200:
            raise RuntimeError(f"{endpoint}: {body.get('meta', {}).get('result_msg')}")
        return body["data"]

    def task(self, task_id: str) -> dict:
        return self("tasks.get_all_ex", id=[task_id])["tasks"][0]

    def children(self, task_id: str) -> dict[str, dict]:
        """A pipeline's step tasks by step name."""
        tasks = self("tasks.get_all_ex", parent=task_id, only_fields=[])["tasks"]
        return {t["name"]: t for t in tasks}

    def log(self, task_id: str) -> str:
        events = self("events.get_task_log", task=task_id, batch_size=10000)["events"]
        return "".join(e.get("msg", "") for e in sorted(events, key=lambda e: e["timestamp"]))

    def log_with(self, task_id: str, text: str, timeout: float = 60) -> str:
        """The task's log once it holds ``text``: a task's last lines are sent by a thread
        and can reach the server after its status does."""

        def holding() -> str | None:
            log = self.log(task_id)
            return log if text in log else None

        return wait_until(holding, timeout, what=f"{text!r} in the log of {task_id}")

    def wait(self, task_id: str, timeout: float) -> dict:
        """The task once it is completed, failed or stopped."""
        final = ("completed", "failed", "stopped", "closed", "published")
        return wait_until(
            lambda: (t := self.task(task_id))["status"] in final and t,
            timeout,
            what=f"task {task_id} to finish",
        )


# The test-only fault hooks (components/fault_injection.py), passed as a step's docker
# argument `--env=SLM_QA_EVAL_TEST_...=N`: allowed by this test deployment only, on both sides
# (the controller's check and clearml-agent's docker_args_filters).
TEST_HOOK_ARGS = "--env=SLM_QA_EVAL_TEST_[A-Z_]+=[0-9]+"
TEST_HOOK_FILTER = "^--env=SLM_QA_EVAL_TEST_"


@dataclass
class Stack:
    home: Path  # CLEARML_LOCAL_DIR: the server's install, logs and PIDs
    work: Path  # this session's files: clearml.conf, agent logs
    s3_endpoint: str
    api_host: str = ""
    files_host: str = ""
    config_file: Path = Path()
    docker_config_file: Path = Path()  # docker/clearml.conf.example, filled in
    agents: dict[str, subprocess.Popen] = field(default_factory=dict)
    worker_ids: dict[str, str] = field(default_factory=dict)
    server_env: dict[str, str] = field(default_factory=dict)  # what start.sh ran with

    @property
    def env(self) -> dict[str, str]:
        """For `make enqueue` and friends: the stack's clearml.conf, no AWS_* variables
        (the S3 keys are read from clearml.conf, as on a user's machine)."""
        base = {k: v for k, v in os.environ.items() if not k.startswith(("CLEARML_", "AWS_"))}
        return {
            **base,
            ALLOW_ENV: TEST_HOOK_ARGS,
            "CLEARML_CONFIG_FILE": str(self.config_file),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
        }

    def start(self) -> Stack:
        stop_stale_server(self.home)
        busy = [p for p in SERVER_PORTS if port_in_use(p)]
        if busy:
            raise PortsTaken(
                f"ports {busy} are taken by something other than a clearml-server-local of "
                f"{self.home} (Redis and osmem need them): stop it and run again"
            )
        env = {
            **os.environ,
            "CLEARML_LOCAL_DIR": str(self.home),
            "CLEARML_LOCAL_API_PORT": str(free_port()),
            "CLEARML_LOCAL_FILES_PORT": str(free_port()),
            **{
                f"CLEARML__services__tasks__non_responsive_tasks_watchdog__{k}": str(v)
                for k, v in WATCHDOG.items()
            },
        }
        self.server_env = env
        log = self.work / "server-start.log"
        with log.open("wb") as out:  # a file, not a pipe: the server's daemons inherit it
            proc = subprocess.run(
                ["bash", str(TOOLS / "start.sh")], env=env, stdout=out, stderr=out, timeout=900
            )
        if proc.returncode != 0:
            raise RuntimeError(f"clearml-server did not start:\n{log.read_text()[-3000:]}")
        self.api_host = f"http://127.0.0.1:{env['CLEARML_LOCAL_API_PORT']}"
        self.files_host = f"http://127.0.0.1:{env['CLEARML_LOCAL_FILES_PORT']}"
        host = self.s3_endpoint.split("://", 1)[1]
        server_conf = (self.home / "clearml.conf").read_text()
        self.config_file = self.work / "clearml.conf"
        credentials = f'host: "{host}", key: "{S3_KEYS[0]}", secret: "{S3_KEYS[1]}"'
        self.config_file.write_text(
            server_conf
            + f"sdk {{ aws {{ s3 {{ credentials: [ {{ {credentials}, secure: false }} ] }} }} }}\n"
            + "sdk { development { worker { ping_period_sec: 5, report_period_sec: 2 } } }\n"
        )
        (self.work / "hf-cache").mkdir(exist_ok=True)
        self.docker_config_file = docker_stack.conf_from_example(
            self.work / "clearml-docker.conf",
            api=self.api_host,
            files=self.files_host,
            web="http://127.0.0.1:8080",
            s3_host=host,
            hf_cache=self.work / "hf-cache",
            model_cache=MODEL_CACHE,
        )
        return self

    @property
    def data(self) -> Path:
        """A folder the agents' containers see at the same path: datasets for the steps."""
        folder = self.work / "data"
        folder.mkdir(exist_ok=True)
        return folder

    def credentials(self) -> tuple[str, str]:
        text = self.config_file.read_text()
        found = re.search(r'access_key: "([^"]+)", secret_key: "([^"]+)"', text)
        return found[1], found[2]

    def api(self) -> Api:
        return Api(self.api_host, *self.credentials())

    def ensure_queue(self, name: str) -> None:
        """Two agents started at once with --create-queue race to create their queue, and the
        loser exits (E11000 duplicate key): the queue is made here first."""
        api = self.api()
        if not api("queues.get_all", name=f"^{re.escape(name)}$")["queues"]:
            api("queues.create", name=name)

    def agent_env(self, name: str, docker: bool) -> dict[str, str]:
        """A user's agent machine: in docker mode the clearml.conf made from
        docker/clearml.conf.example with its keys in the environment, as deploy.md has it."""
        key, secret = self.credentials()
        worker_id = f"{name}:{os.getpid()}"
        self.worker_ids[name] = worker_id
        common = {"CLEARML_AGENT_QUEUE_POLL_FREQ_SEC": "1", "CLEARML_WORKER_ID": worker_id}
        if not docker:
            return {
                **self.env,
                **common,
                "CLEARML_AGENT_SKIP_PIP_VENV_INSTALL": sys.executable,
                "CLEARML_AGENT_SKIP_PYTHON_ENV_INSTALL": "1",
            }
        return {
            **{k: v for k, v in self.env.items() if k != "CLEARML_CONFIG_FILE"},
            **common,
            "CLEARML_CONFIG_FILE": str(self.docker_config_file),
            "CLEARML_API_ACCESS_KEY": key,
            "CLEARML_API_SECRET_KEY": secret,
            "AWS_ACCESS_KEY_ID": S3_KEYS[0],
            "AWS_SECRET_ACCESS_KEY": S3_KEYS[1],
        }

    def start_agent(
        self,
        name: str,
        queue: str,
        services: bool = False,
        extra_env: dict | None = None,
        docker: bool = True,
    ) -> subprocess.Popen:
        """An agent in its own process group (so it and the tasks it runs can be killed
        together, as when a machine is lost). Docker mode: `make agent QUEUE=...` as
        docs/deploy.md gives it, in the foreground, the gpu queue without GPUs."""
        self.ensure_queue(queue)
        env = {**self.agent_env(name, docker), **(extra_env or {})}
        if docker:
            command = [
                "make",
                "--no-print-directory",
                "agent",
                f"QUEUE={queue}",
                "GPUS=none",  # no GPU here: the gpu queue is served on the CPU
                # Data folders are the user's to mount (the tests' own at the same path).
                f"AGENT_DOCKER_ARGS={docker_stack.HOST_NETWORK} -e HF_HUB_OFFLINE=1 "
                f"-v {self.data}:{self.data} -e {ALLOW_ENV}={TEST_HOOK_ARGS}",
                # This deployment lets tasks switch the test-only fault hooks on.
                f"DOCKER_ARGS_FILTERS=^--ipc=host ^--shm-size= {TEST_HOOK_FILTER}",
                f"HF_CACHE={self.work / 'hf-cache'}",
                f"MODEL_CACHE={MODEL_CACHE}",
                "FOREGROUND=1",
            ]
        else:
            command = [str(Path(sys.executable).parent / "clearml-agent"), "daemon"]
            command += ["--queue", queue, "--create-queue", "--foreground", "--cpu-only"]
            if services:
                command.append("--services-mode")
        return self._spawn(name, command, env)

    def start_bare_agent(self, name: str, queue: str, services: bool = False) -> subprocess.Popen:
        """The design card's `clearml-agent daemon --queue <queue> --docker`, with only
        docker/clearml.conf.example (filled in) behind it: the image comes from each task,
        mounts, bootstrap settings and the queue polling from the conf (nothing from the
        environment but the keys). ``--cpu-only``: no GPU here."""
        self.ensure_queue(queue)
        agent = str(Path(sys.executable).parent / "clearml-agent")
        command = [agent, "daemon", "--queue", queue, "--docker", "--cpu-only"]
        env = self.agent_env(name, docker=True)
        del env["CLEARML_AGENT_QUEUE_POLL_FREQ_SEC"]
        return self._spawn(name, [*command, *(["--services-mode"] if services else [])], env)

    def _spawn(self, name: str, command: list[str], env: dict[str, str]) -> subprocess.Popen:
        log = open(self.work / f"agent-{name}.log", "ab")  # noqa: SIM115  (closed with the agent)
        self.agents[name] = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self.agents[name]

    def kill_agent(self, name: str, sig: int = signal.SIGKILL) -> None:
        """The agent, everything it started and its containers, at once: a lost machine."""
        import psutil

        proc = self.agents.pop(name)
        family = [proc.pid]
        with contextlib.suppress(psutil.Error):
            family += [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
        for pid in family:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        proc.wait(timeout=30)
        worker = self.worker_ids.get(name)
        if worker and shutil.which("docker"):
            running = docker_stack.containers("clearml-parent-worker-id", worker)
            if running:
                docker_stack.docker("kill", *running, check=False)

    def restart_api(self, down_s: float) -> None:
        """The apiserver restarted as an upgrade or a crash would, its data kept (the tool's
        restart-api.sh), held down ``down_s`` seconds more; returns once it answers."""
        log = self.work / "server-restart.log"
        with log.open("ab") as out:
            proc = subprocess.run(
                ["bash", str(TOOLS / "restart-api.sh")],
                env={**self.server_env, "DOWN_S": f"{down_s:g}"},
                stdout=out,
                stderr=out,
                timeout=300,
            )
        if proc.returncode != 0:
            raise RuntimeError(f"the apiserver did not restart:\n{log.read_text()[-3000:]}")

    def stop_agents(self) -> None:
        for name in list(self.agents):
            self.kill_agent(name, signal.SIGTERM)

    def stop(self) -> None:
        self.stop_agents()
        subprocess.run(
            ["bash", str(TOOLS / "stop.sh")],
            env={**os.environ, "CLEARML_LOCAL_DIR": str(self.home)},
            capture_output=True,
            timeout=120,
        )


def stop_stale_server(home: Path) -> None:
    """A server of ours left by a killed run (its PID files remain) is stopped first."""
    if any((home / "run").glob("*.pid")):
        subprocess.run(
            ["bash", str(TOOLS / "stop.sh")],
            env={**os.environ, "CLEARML_LOCAL_DIR": str(home)},
            capture_output=True,
            timeout=120,
        )
        wait_until(
            lambda: not any(port_in_use(p) for p in SERVER_PORTS),
            30,
            poll=0.5,
            what="the stale server's ports to be free",
        )


def why_not_available() -> str | None:
    """A reason the server cannot start here, or None."""
    if not (TOOLS / "start.sh").is_file():
        return WHERE_TO_GET_IT
    if not shutil.which("redis-server") and os.geteuid() != 0:
        return "redis-server is missing and only root can install it: apt-get install redis-server"
    return None


def server_home() -> Path:
    """Where setup.sh put the server's environment (CLEARML_LOCAL_DIR, as the tool has it)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return Path(os.environ.get("CLEARML_LOCAL_DIR") or cache / "clearml-server-local")


def wait_until(check, timeout: float, poll: float = 1.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(poll)
    raise TimeoutError(f"{what}: not reached in {timeout:.0f} s")

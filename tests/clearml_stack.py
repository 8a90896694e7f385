"""A real ClearML server with agents, for the tests and the overhead benchmark.

The server is the clearml-server code itself (apiserver + fileserver) on stand-ins for
MongoDB and Elasticsearch, started by ../shared/tools/clearml-server (or the folder named by
CLEARML_SERVER_TOOLS); S3 is moto's standalone server, standing in for MinIO; agents run in
venv mode in this project's own environment, as `clearml-agent daemon` would in a worker
image. Everything started here is stopped by PID.
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

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / os.environ.get("CLEARML_SERVER_TOOLS", "../shared/tools/clearml-server")
BUCKET = "clearml-artifacts"
S3_KEYS = ("stack-key-id", "stack-secret")
# The server's watchdog stops a task whose agent stopped answering after this long
# (production default: 7200 s; docs/clearml.md says how to lower it).
WATCHDOG = {"threshold_sec": 30, "watch_interval_sec": 5}
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


@dataclass
class Stack:
    home: Path  # CLEARML_LOCAL_DIR: the server's install, logs and PIDs
    work: Path  # this session's files: clearml.conf, agent logs
    s3_endpoint: str
    api_host: str = ""
    config_file: Path = Path()
    agents: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        """For `make enqueue` and friends: the stack's clearml.conf, no AWS_* variables
        (the S3 keys are read from clearml.conf, as on a user's machine)."""
        base = {k: v for k, v in os.environ.items() if not k.startswith(("CLEARML_", "AWS_"))}
        return {
            **base,
            "CLEARML_CONFIG_FILE": str(self.config_file),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
        }

    def start(self) -> Stack:
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
        log = self.work / "server-start.log"
        with log.open("wb") as out:  # a file, not a pipe: the server's daemons inherit it
            proc = subprocess.run(
                ["bash", str(TOOLS / "start.sh")], env=env, stdout=out, stderr=out, timeout=900
            )
        if proc.returncode != 0:
            raise RuntimeError(f"clearml-server did not start:\n{log.read_text()[-3000:]}")
        self.api_host = f"http://127.0.0.1:{env['CLEARML_LOCAL_API_PORT']}"
        host = self.s3_endpoint.split("://", 1)[1]
        server_conf = (self.home / "clearml.conf").read_text()
        self.config_file = self.work / "clearml.conf"
        credentials = f'host: "{host}", key: "{S3_KEYS[0]}", secret: "{S3_KEYS[1]}"'
        self.config_file.write_text(
            server_conf
            + f"sdk {{ aws {{ s3 {{ credentials: [ {{ {credentials}, secure: false }} ] }} }} }}\n"
            + "sdk { development { worker { ping_period_sec: 5, report_period_sec: 2 } } }\n"
        )
        return self

    def api(self) -> Api:
        text = self.config_file.read_text()
        key = re.search(r'access_key: "([^"]+)"', text)[1]
        secret = re.search(r'secret_key: "([^"]+)"', text)[1]
        return Api(self.api_host, key, secret)

    def ensure_queue(self, name: str) -> None:
        """Two agents started at once with --create-queue race to create their queue, and the
        loser exits (E11000 duplicate key): the queue is made here first."""
        api = self.api()
        if not api("queues.get_all", name=f"^{re.escape(name)}$")["queues"]:
            api("queues.create", name=name)

    def start_agent(
        self, name: str, queue: str, services: bool = False, extra_env: dict | None = None
    ) -> subprocess.Popen:
        """An agent in its own process group (so it and the tasks it runs can be killed
        together, as when a machine is lost)."""
        self.ensure_queue(queue)
        env = {
            **self.env,
            "CLEARML_AGENT_SKIP_PIP_VENV_INSTALL": sys.executable,
            "CLEARML_AGENT_SKIP_PYTHON_ENV_INSTALL": "1",
            "CLEARML_AGENT_QUEUE_POLL_FREQ_SEC": "1",
            "CLEARML_WORKER_ID": f"{name}:{os.getpid()}",
            **(extra_env or {}),
        }
        command = [str(Path(sys.executable).parent / "clearml-agent"), "daemon", "--queue", queue]
        command += ["--create-queue", "--foreground", "--cpu-only"]
        if services:
            command.append("--services-mode")
        log = open(self.work / f"agent-{name}.log", "ab")  # noqa: SIM115  (closed with the agent)
        self.agents[name] = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        return self.agents[name]

    def kill_agent(self, name: str, sig: int = signal.SIGKILL) -> None:
        """The agent and everything it started, at once: a lost machine."""
        import psutil

        proc = self.agents.pop(name)
        family = [proc.pid]
        with contextlib.suppress(psutil.Error):
            family += [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
        for pid in family:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        proc.wait(timeout=30)

    def stop(self) -> None:
        for name in list(self.agents):
            self.kill_agent(name, signal.SIGTERM)
        subprocess.run(
            ["bash", str(TOOLS / "stop.sh")],
            env={**os.environ, "CLEARML_LOCAL_DIR": str(self.home)},
            capture_output=True,
            timeout=120,
        )


def why_not_available() -> str | None:
    """A reason to skip, or None when a stack can start here."""
    if not (TOOLS / "start.sh").is_file():
        return WHERE_TO_GET_IT
    if not shutil.which("redis-server") and os.geteuid() != 0:
        return "redis-server is missing and only root can install it: apt-get install redis-server"
    busy = [p for p in (6379, 9200) if port_in_use(p)]
    if busy:
        return (
            f"ports {busy} are taken (another clearml-server-local or Redis/Elasticsearch "
            f"runs here): stop it ({TOOLS / 'stop.sh'}) and run the tests again"
        )
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

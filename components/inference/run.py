"""One attempt of an inference step: what its checkpoint already holds is not generated
again; the rest is, batch by batch, each batch saved to the checkpoint as it ends (a killed
attempt loses at most the batch in flight); the answers are written in dataset order."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tqdm import tqdm

from components import memory
from components.atomic import read_jsonl, write_jsonl_atomic
from components.checkpoint import Checkpoint
from components.contexts import contains_answer
from components.fault_injection import hold_after_first_batch
from components.inference.config import InferenceConfig
from components.inference.engine import generate, load_backend
from components.inference.plan import plan_inference
from components.inference.report import GenerationReport
from components.model_files import ModelConfig, ModelFiles
from components.modes import ModeConfig


def shard_bounds(count: int, shard: int, shards: int) -> tuple[int, int]:
    """Contiguous shards whose sizes differ by at most one, in dataset order."""
    return count * shard // shards, count * (shard + 1) // shards


def shards_in_order(
    examples_path: str | Path, shards: list[tuple[int, str]]
) -> Iterator[dict[str, Any]]:
    """The answers of ``shards`` ((recorded shard index, generations file), by index) as
    one stream in dataset order, each checked against the examples as it passes."""
    count = sum(1 for _ in read_jsonl(examples_path))
    ids = (e["question_id"] for e in read_jsonl(examples_path))
    for index, (recorded, path) in enumerate(shards):
        low, high = shard_bounds(count, index, len(shards))
        answered, whole = 0, recorded == index
        for got in read_jsonl(path):
            if not whole or answered == high - low or got["question_id"] != next(ids):
                whole = False
                break
            answered += 1
            yield got
        if not whole or answered != high - low:
            raise RuntimeError(
                f"shard {index}: {path} does not answer examples {low}..{high - 1} in order "
                f"(answer {answered + 1} differs); rerun that shard"
            )


def generate_answers(
    model: ModelConfig,
    inference: InferenceConfig,
    examples: list[dict[str, Any]],
    *,
    checkpoint_for: Callable[[str], Checkpoint],
    generations_path: Path,
    environment: dict[str, Any],
    shard: int = 0,
    shards: int = 1,
    batch_cap: int | None = None,
    mode: ModeConfig | None = None,
    fetched: ModelFiles | None = None,
) -> GenerationReport:
    """The answers of shard ``shard`` of ``shards`` of ``examples``; the prompts (and so the
    checkpoint key) are those of the whole run, whichever shard this is."""
    low, high = shard_bounds(len(examples), shard, shards)
    mine = examples[low:high]
    with memory.stage("model_load"):
        started = time.perf_counter()
        plan = plan_inference(model, inference, examples, mode, fetched)
        checkpoint = checkpoint_for(plan.key)
        done = checkpoint.load() if mine else {}
        todo = [(i, e) for i, e in enumerate(mine) if e["question_id"] not in done]
        resumed = len(mine) - len(todo)
        if resumed:
            print(
                f"resuming: {resumed} of {len(mine)} answers in {checkpoint.location}", flush=True
            )
        prompts = [plan.prompts[low + i] for i, _ in todo]
        loaded = load_backend(plan, inference, model.revision, prompts, batch_cap) if todo else None
        load_seconds = time.perf_counter() - started

    saved: list[int] = []  # batches checkpointed by this attempt

    def shown(i: int) -> dict:
        """What example ``i`` of this shard was shown besides its question."""
        if plan.contexts is None:
            return {}
        context = plan.contexts[low + todo[i][0]]
        return {
            "passages": context.passages,
            "context_tokens": context.tokens,
            "context_truncated": context.truncated,
            "answer_in_context": contains_answer(context.text, todo[i][1]["answers"]),
        }

    def keep(indices: list[int], generations: list) -> None:
        records = [
            {
                "question_id": todo[i][1]["question_id"],
                "prediction": g.text,
                "prompt_tokens": g.prompt_tokens,
                "output_tokens": g.output_tokens,
                **shown(i),
            }
            for i, g in zip(indices, generations, strict=True)
        ]
        checkpoint.append(records)
        done.update((r["question_id"], r) for r in records)
        saved.append(len(records))
        hold_after_first_batch(resumed, len(saved))

    with memory.stage("generate"):
        started = time.perf_counter()
        backend = plan.backend_name
        desc = f"generate ({backend})" + (f" shard {shard + 1}/{shards}" if shards > 1 else "")
        with tqdm(total=len(mine), initial=resumed, desc=desc, unit="q") as bar:
            if loaded is not None:
                generate(plan, loaded, prompts, on_batch=keep, on_progress=bar.update)
        generate_seconds = time.perf_counter() - started

    write_jsonl_atomic(generations_path, (done[e["question_id"]] for e in mine))
    answers = [done[e["question_id"]] for e in mine]
    new = [done[e["question_id"]] for _, e in todo]
    return GenerationReport(
        generations_path=str(generations_path),
        checkpoint=checkpoint.location,
        examples=len(mine),
        resumed=resumed,
        generated=len(new),
        generated_output_tokens=sum(g["output_tokens"] for g in new),
        prompt_tokens=sum(g["prompt_tokens"] for g in answers),
        output_tokens=sum(g["output_tokens"] for g in answers),
        load_seconds=load_seconds,
        generate_seconds=generate_seconds,
        model_path=plan.files.path,
        model_source=plan.files.source,
        gguf_sha256=plan.files.gguf_sha256,
        weights_sha256=plan.files.weights_sha256,
        model_input=plan.files.identity,
        prompt=plan.prompt,
        backend=backend,
        backend_reason=plan.execution.backend.reason,
        device=plan.device,
        dtype=plan.dtype,
        batch_size=loaded.batch.size if loaded else None,
        batch_size_reason=loaded.batch.reason if loaded else None,
        model_reused=loaded.reused if loaded else False,
        environment=environment,
        shard=shard,
        shards=shards,
    )

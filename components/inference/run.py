"""One attempt of an inference step: what its checkpoint already holds is not generated
again; the rest is, a window of examples at a time and batch by batch within it, each batch
saved to the checkpoint as it ends (a killed attempt loses at most the batch in flight); the
answers are written in dataset order as each window ends."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

from tqdm import tqdm

from components import memory
from components.atomic import read_jsonl, remove_stale_temps, write_jsonl_atomic
from components.backends import Generation
from components.backends.pool import release
from components.checkpoint import Checkpoint
from components.contexts import contains_answer
from components.fault_injection import hold_after_first_batch
from components.inference.config import InferenceConfig
from components.inference.engine import generate, load_backend
from components.inference.plan import plan_inference
from components.inference.report import GenerationReport
from components.inference.windows import WINDOW, Window, chunks
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


@dataclass
class Tokens:
    """Running sums over the answers a step writes, for its report."""

    prompt: int = 0
    output: int = 0
    generated: int = 0
    generated_output: int = 0


def answer_record(window: Window, i: int, generation: Generation) -> dict[str, Any]:
    """Example ``i`` of ``window`` answered: what the checkpoint and generations file hold."""
    example = window.examples[i]
    record = {
        "question_id": example["question_id"],
        "prediction": generation.text,
        "prompt_tokens": generation.prompt_tokens,
        "output_tokens": generation.output_tokens,
    }
    if window.contexts is not None:  # what the example was shown besides its question
        context = window.contexts[i]
        record.update(
            passages=context.passages,
            context_tokens=context.tokens,
            context_truncated=context.truncated,
            answer_in_context=contains_answer(context.text, example["answers"]),
        )
    return record


def generate_answers(
    model: ModelConfig,
    inference: InferenceConfig,
    examples: Iterable[dict[str, Any]],
    *,
    checkpoint_for: Callable[[str], Checkpoint],
    generations_path: Path,
    environment: dict[str, Any],
    shard: int = 0,
    shards: int = 1,
    batch_cap: int | None = None,
    mode: ModeConfig | None = None,
    fetched: ModelFiles | None = None,
    window: int = WINDOW,
) -> GenerationReport:
    """The answers of shard ``shard`` of ``shards`` of ``examples`` (walked three times: a
    list, or a JsonLines file), ``window`` examples tokenized and generated at a time; the
    prompts (and so the checkpoint key) are those of the whole run, whichever shard this is."""
    if iter(examples) is examples:
        raise TypeError("examples: read more than once; give a list or a JsonLines file")
    with memory.stage("model_load"):
        started = time.perf_counter()
        plan = plan_inference(model, inference, examples, mode, fetched, window)
        low, high = shard_bounds(plan.examples, shard, shards)
        checkpoint = checkpoint_for(plan.key)
        done = checkpoint.load()
        todo = sum(e["question_id"] not in done for e in islice(examples, low, high))
        resumed = high - low - todo
        if resumed:
            print(
                f"resuming: {resumed} of {high - low} answers in {checkpoint.location}",
                flush=True,
            )
        loaded = load_backend(plan, inference, model.revision, todo, batch_cap) if todo else None
        load_seconds = time.perf_counter() - started

    saved: list[int] = []  # batches checkpointed by this attempt
    tokens = Tokens()

    def generated(asked: Window, offset: int, bar: tqdm) -> dict[str, dict[str, Any]]:
        """A window's answers by question id, each batch checkpointed as it ends."""
        fresh: dict[str, dict[str, Any]] = {}

        def keep(indices: list[int], generations: list[Generation]) -> None:
            records = [
                answer_record(asked, i, g) for i, g in zip(indices, generations, strict=True)
            ]
            checkpoint.append(records)
            fresh.update((r["question_id"], r) for r in records)
            saved.append(len(records))
            hold_after_first_batch(resumed, len(saved))

        if loaded is not None:
            generate(plan, loaded, asked.prompts, offset, on_batch=keep, on_progress=bar.update)
        return fresh

    def answered(bar: tqdm) -> Iterator[dict[str, Any]]:
        """The shard's answers in dataset order, a window generated as it is reached."""
        for n, chunk in enumerate(chunks(islice(examples, low, high), window)):
            asked = [e for e in chunk if e["question_id"] not in done]
            fresh = generated(plan.encode(asked), low + n * window, bar) if asked else {}
            for example in chunk:
                qid = example["question_id"]
                record = fresh[qid] if qid in fresh else done[qid]
                tokens.prompt += record["prompt_tokens"]
                tokens.output += record["output_tokens"]
                if qid in fresh:
                    tokens.generated += 1
                    tokens.generated_output += record["output_tokens"]
                yield record

    with memory.stage("generate"):
        started = time.perf_counter()
        backend = plan.backend_name
        desc = f"generate ({backend})" + (f" shard {shard + 1}/{shards}" if shards > 1 else "")
        remove_stale_temps(generations_path)  # a killed attempt's half-written answers
        try:
            with tqdm(total=high - low, initial=resumed, desc=desc, unit="q") as bar:
                write_jsonl_atomic(generations_path, answered(bar))
        finally:
            if loaded is not None:
                release(loaded.backend)
        generate_seconds = time.perf_counter() - started

    return GenerationReport(
        generations_path=str(generations_path),
        checkpoint=checkpoint.location,
        examples=high - low,
        resumed=resumed,
        generated=tokens.generated,
        generated_output_tokens=tokens.generated_output,
        prompt_tokens=tokens.prompt,
        output_tokens=tokens.output,
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

"""The backend an inference step generates with: loaded (or kept from the previous run of a
sweep) with the batch size for these prompts, and its out-of-memory error made one that
says at which batch size, so a smaller one can be tried."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from components.backends import Backend, Generation, GenerationParams, create_backend
from components.backends.pool import acquire, backend_key
from components.batching import BatchChoice, resolve_batch_size
from components.inference.config import InferenceConfig
from components.inference.plan import InferencePlan


class GenerationOutOfMemory(RuntimeError):
    """The device ran out of memory at ``batch_size``: a smaller batch may fit."""

    def __init__(self, message: str, batch_size: int) -> None:
        super().__init__(message)
        self.batch_size = batch_size

    @property
    def smaller_batch(self) -> int | None:
        """The batch to try next (half), or None: a batch of one that does not fit is final."""
        return self.batch_size // 2 if self.batch_size > 1 else None


@dataclass(frozen=True)
class Loaded:
    backend: Backend
    batch: BatchChoice  # size None: the engine schedules its own batches (vLLM)
    reused: bool  # loaded by an earlier run of this process (a sweep)


def batch_for(
    plan: InferencePlan, inference: InferenceConfig, prompts: int, cap: int | None
) -> BatchChoice:
    """The batch size for ``prompts`` prompts (the run's longest decides the memory each
    needs), below ``cap`` after an attempt ran out of memory."""
    if plan.backend_name == "vllm":
        return BatchChoice(None, "vLLM schedules its own batches")
    batch = resolve_batch_size(
        inference.batch_size,
        device=plan.device,
        dtype=plan.dtype,
        prompts=prompts,
        longest_prompt=plan.longest_prompt,
        max_new_tokens=inference.max_new_tokens,
        shape=plan.execution.shape,
    )
    if cap is not None and batch.size is not None and batch.size > cap:
        reason = f"{batch.reason}; capped at {cap}: an earlier attempt ran out of memory"
        batch = BatchChoice(cap, reason)
    return batch


def load_backend(
    plan: InferencePlan,
    inference: InferenceConfig,
    revision: str | None,
    prompts: int,
    cap: int | None = None,
) -> Loaded:
    """The backend (kept loaded across runs of a sweep by the pool) at its batch size for
    ``prompts`` prompts to generate."""
    batch = batch_for(plan, inference, prompts, cap)
    if plan.backend_name == "vllm":
        options: dict[str, Any] = {
            **dataclasses.asdict(inference.vllm),
            "tensor_parallel_size": inference.tensor_parallel_size,
            "gpu_memory_utilization": inference.gpu_memory_utilization,
        }
    else:
        options = {"batch_size": batch.size}
    common = {"seed": inference.seed, "revision": revision}
    # The batch size changes per run (auto follows the prompts), the loaded model does not.
    kept = {k: v for k, v in options.items() if k != "batch_size"}
    key = backend_key(
        name=plan.backend_name,
        path=plan.files.path,
        device=plan.device,
        dtype=plan.dtype,
        **common,
        **kept,
    )
    backend, reused = acquire(
        key,
        lambda: create_backend(
            plan.backend_name,
            plan.files.path,
            device=plan.device,
            dtype=plan.dtype,
            tokenizer=plan.tokenizer,
            options=options,
            **common,
        ),
    )
    if "batch_size" in options:
        backend.batch_size = options["batch_size"]
    return Loaded(backend, batch, reused)


def _out_of_memory(exc: BaseException) -> bool:
    return "out of memory" in str(exc).lower() or type(exc).__name__ == "OutOfMemoryError"


def window_params(params: GenerationParams, offset: int) -> GenerationParams:
    """Sampling gives each window its own seed, the run's plus the place of the window's
    first example in the run: backends reseed per call, and windows must not replay one
    random stream. The first window, and greedy decoding, keep the run's settings."""
    if params.greedy or params.seed is None or offset == 0:
        return params
    return dataclasses.replace(params, seed=params.seed + offset)


def generate(
    plan: InferencePlan,
    loaded: Loaded,
    prompts: Sequence[list[int]],
    offset: int,
    on_batch: Callable[[list[int], list[Generation]], None],
    on_progress: Callable[[int], None],
) -> None:
    """Generates one window's prompts (its first example at ``offset`` in the run), handing
    each finished batch to ``on_batch``. Out of memory names the batch size it happened at."""
    params = window_params(plan.params, offset)
    try:
        loaded.backend.generate(prompts, params, on_progress=on_progress, on_batch=on_batch)
    except Exception as exc:
        if _out_of_memory(exc):
            rows = min(loaded.batch.size or 1, len(prompts))
            raise GenerationOutOfMemory(f"out of memory at batch size {rows}: {exc}", rows) from exc
        raise

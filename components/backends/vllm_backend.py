"""vLLM backend: the whole prompt list goes to the engine in one call; it schedules batches.

vLLM runs its engine in a child process. This backend makes that a spawned process, never a
forked one: a fork inherits the parent's CUDA state (a transformers model loaded earlier in a
sweep, or only ``torch.cuda.is_available()``), and CUDA then fails in the child with
"Cannot re-initialize CUDA in forked subprocess". Spawning re-imports the calling script, so
it needs an ``if __name__ == "__main__":`` guard (our entry points have one).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

from components.backends.base import Generation, GenerationParams

log = logging.getLogger(__name__)

START_METHOD_VARIABLE = "VLLM_WORKER_MULTIPROC_METHOD"


def prefer_spawn() -> str:
    """Spawn vLLM's engine and workers unless the user chose a start method; returns the one
    in force. Must run before vLLM reads its settings (it does when the engine starts)."""
    return os.environ.setdefault(START_METHOD_VARIABLE, "spawn")


class VLLMBackend:
    name = "vllm"

    def __init__(
        self,
        model_path: str,
        *,
        device: str,
        dtype: str,
        tokenizer: Any = None,
        seed: int | None = None,
        revision: str | None = None,
        chunk_size: int = 1024,
        enforce_eager: bool = True,
        max_num_seqs: int | None = None,
        max_model_len: int | None = None,
        gpu_memory_utilization: float = 0.85,
        tensor_parallel_size: int = 1,
        cpu_kvcache_space_gib: float = 2,
    ) -> None:
        """``tokenizer`` is taken for the common signature: the engine loads its own from
        ``model_path``. ``max_num_seqs``/``max_model_len``: None leaves vLLM's default.
        ``gpu_memory_utilization`` applies on CUDA, ``cpu_kvcache_space_gib`` on CPU (an
        exported VLLM_CPU_KVCACHE_SPACE wins)."""
        prefer_spawn()
        if device == "cpu":
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(cpu_kvcache_space_gib))
        from vllm import LLM

        self.device, self.dtype, self.chunk_size = device, dtype, int(chunk_size)
        options: dict[str, Any] = {
            "model": model_path,
            "revision": revision,
            "dtype": dtype,
            "seed": seed if seed is not None else 0,
            "enforce_eager": enforce_eager,
            "tensor_parallel_size": tensor_parallel_size,
        }
        if max_model_len:
            options["max_model_len"] = max_model_len
        if max_num_seqs:
            options["max_num_seqs"] = max_num_seqs
        if device == "cuda":
            options["gpu_memory_utilization"] = gpu_memory_utilization
        self.llm: Any = LLM(**options)

    def generate(
        self,
        prompts: Sequence[list[int]],
        params: GenerationParams,
        on_progress: Callable[[int], None] | None = None,
        on_batch: Callable[[list[int], list[Generation]], None] | None = None,
    ) -> list[Generation]:
        """The engine schedules its own batches within a call; calls hold ``chunk_size``
        prompts so a killed run keeps every finished chunk (0: the whole list at once)."""
        from vllm import SamplingParams

        sampling = SamplingParams(
            max_tokens=params.max_new_tokens,
            temperature=max(params.temperature, 0.0),
            top_p=params.top_p if not params.greedy else 1.0,
            seed=params.seed,
            stop=list(params.stop) or None,
            skip_special_tokens=True,
        )
        size = self.chunk_size or len(prompts) or 1
        results: list[Generation] = []
        for start in range(0, len(prompts), size):
            chunk = prompts[start : start + size]
            outputs = self.llm.generate(
                [{"prompt_token_ids": list(p)} for p in chunk], sampling, use_tqdm=True
            )
            done = [
                Generation(
                    o.outputs[0].text.strip(), len(o.prompt_token_ids), len(o.outputs[0].token_ids)
                )
                for o in outputs
            ]
            if on_batch is not None:
                on_batch(list(range(start, start + len(chunk))), done)
            if on_progress is not None:
                on_progress(len(done))
            results.extend(done)
        return results

    def close(self) -> None:
        """Stops the engine process now, freeing its memory (on CUDA: weights and KV cache)
        before the next model loads. ``LLM`` has no shutdown of its own in vLLM 0.20 or 0.32
        (``llm_engine.shutdown`` neither), so without this the engine lives until garbage
        collection. Both versions have ``llm_engine.engine_core.shutdown()``: for the default
        multiprocess client it stops and joins the engine core processes; in-process
        (VLLM_ENABLE_V1_MULTIPROCESSING=0) it shuts the engine core down."""
        import gc

        llm, self.llm = self.llm, None
        if llm is None:
            return
        shutdown = getattr(llm, "shutdown", None)  # a later vLLM may add LLM.shutdown()
        if not callable(shutdown):
            engine_core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
            shutdown = getattr(engine_core, "shutdown", None)
        if callable(shutdown):
            shutdown()
        else:
            log.warning("this vLLM has no engine shutdown; its engine lives until collected")
        del llm, shutdown
        gc.collect()
        if self.device == "cuda":
            import torch

            if torch.cuda.is_initialized():  # in-process engine: its cached blocks
                torch.cuda.empty_cache()

"""vLLM backend: the whole prompt list goes to the engine in one call; it schedules batches.

vLLM starts its engine in a spawned process, so the calling script needs an
``if __name__ == "__main__":`` guard (our entry points have one).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from components.backends.base import Generation, GenerationParams


class VLLMBackend:
    name = "vllm"

    def __init__(
        self,
        model_path: str,
        *,
        device: str,
        dtype: str,
        seed: int | None = None,
        revision: str | None = None,
        enforce_eager: bool = True,
        gpu_memory_utilization: float = 0.85,
        cpu_kvcache_space_gib: float = 2,
        max_model_len: int | None = None,
        tensor_parallel_size: int = 1,
        chunk_size: int = 1024,
        **_: object,
    ) -> None:
        if device == "cpu":
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(cpu_kvcache_space_gib))
        from vllm import LLM

        self.device, self.dtype, self.chunk_size = device, dtype, int(chunk_size)
        options: dict = {
            "model": model_path,
            "revision": revision,
            "dtype": dtype,
            "seed": seed if seed is not None else 0,
            "enforce_eager": enforce_eager,
            "tensor_parallel_size": tensor_parallel_size,
        }
        if max_model_len:
            options["max_model_len"] = max_model_len
        if device == "cuda":
            options["gpu_memory_utilization"] = gpu_memory_utilization
        self.llm = LLM(**options)

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
        import gc

        engine = getattr(self.llm, "llm_engine", None)
        shutdown = getattr(engine, "shutdown", None)
        if callable(shutdown):
            shutdown()
        del self.llm
        gc.collect()

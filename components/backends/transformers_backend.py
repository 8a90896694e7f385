"""Hugging Face transformers backend: batched, length-sorted, left-padded generation."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from components.backends.base import Generation, GenerationParams
from components.batching import CPU_BATCH
from components.fault_injection import out_of_memory_above
from components.prompts import decode_answer, eos_ids


class TransformersBackend:
    name = "transformers"

    def __init__(
        self,
        model_path: str,
        *,
        device: str,
        dtype: str,
        tokenizer: Any = None,
        seed: int | None = None,
        revision: str | None = None,
        batch_size: int = CPU_BATCH,
    ) -> None:
        """``seed`` is taken for the common signature: sampling is seeded per generate() call
        from ``GenerationParams.seed``. ``batch_size`` may be changed between calls."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device, self.dtype, self.batch_size = device, dtype, batch_size
        # The pipeline hands over the tokenizer it built the prompts with: loaded once.
        self.tokenizer = tokenizer or AutoTokenizer.from_pretrained(model_path, revision=revision)
        self.model = AutoModelForCausalLM.from_pretrained(
            model_path, revision=revision, dtype=getattr(torch, dtype)
        ).to(device)
        self.model.eval()
        self.eos_ids = set(eos_ids(self.model.generation_config.eos_token_id, self.tokenizer))
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else min(self.eos_ids)

    def _generation_config(self, params: GenerationParams):
        from transformers import GenerationConfig

        sampling = (
            {}
            if params.greedy
            else {"temperature": params.temperature, "top_p": params.top_p, "top_k": 0}
        )
        # Every knob set explicitly: generate() fills unset fields from the checkpoint's
        # generation_config (top_k, repetition_penalty, ...), which would change what we
        # measure and differ from vLLM, where they are off unless asked for.
        return GenerationConfig(
            max_new_tokens=params.max_new_tokens,
            do_sample=not params.greedy,
            repetition_penalty=1.0,
            no_repeat_ngram_size=0,
            pad_token_id=self.pad_id,
            eos_token_id=sorted(self.eos_ids),
            stop_strings=list(params.stop) or None,
            **sampling,
        )

    def generate(
        self,
        prompts: Sequence[list[int]],
        params: GenerationParams,
        on_progress: Callable[[int], None] | None = None,
        on_batch: Callable[[list[int], list[Generation]], None] | None = None,
    ) -> list[Generation]:
        import torch

        if params.seed is not None:
            torch.manual_seed(params.seed)
        config = self._generation_config(params)
        # Longest first: similar lengths share a batch (less padding) and a too-large
        # batch fails on a window's first step rather than at its end.
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        results: list[Generation | None] = [None] * len(prompts)
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            width = max(len(prompts[i]) for i in batch)
            ids = [[self.pad_id] * (width - len(prompts[i])) + prompts[i] for i in batch]
            mask = [[0] * (width - len(prompts[i])) + [1] * len(prompts[i]) for i in batch]
            out_of_memory_above(len(batch))
            with torch.inference_mode():
                out = self.model.generate(
                    input_ids=torch.tensor(ids, device=self.device),
                    attention_mask=torch.tensor(mask, device=self.device),
                    generation_config=config,
                    tokenizer=self.tokenizer if params.stop else None,
                )
            for row, index in zip(out[:, width:].tolist(), batch, strict=True):
                kept = []
                for token in row:
                    kept.append(token)
                    if token in self.eos_ids:
                        break
                text, count = decode_answer(self.tokenizer, kept, params.stop)
                results[index] = Generation(text, len(prompts[index]), count)
            if on_batch is not None:
                on_batch(batch, [results[i] for i in batch])  # type: ignore[misc]
            if on_progress is not None:
                on_progress(len(batch))
        return [r for r in results if r is not None]

    def close(self) -> None:
        """Frees the weights (idempotent)."""
        import gc

        import torch

        if self.model is None:
            return
        self.model = None
        gc.collect()
        if self.device == "cuda":
            torch.cuda.empty_cache()

"""``inference.batch_size: auto``: how many prompts the transformers backend generates at once.

On CPU the default 32. On CUDA the largest batch whose KV cache and activations fit in the GPU's
free memory beside the weights, capped where measurement stopped gaining. Arithmetic, the model's
config and NVML only: nothing here initialises CUDA (see components/device.py for why).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from components.device import gpu_memory
from components.model_files import model_config, stored_parameters

CPU_BATCH = 32
# One H100, SmolLM2-135M bf16, 3,610 NQ-open questions through this project
# (shared/tools/gpu-kit/README.md): 37 q/s at batch 32, 187 at 256, 389 at 1024, 312 at 2048.
# Past 1024 each new batch shape cost more than the larger batch saved.
CUDA_BATCH_CAP = 1024
# Beside weights and sequences: the CUDA context, cuBLAS workspaces, allocator fragmentation.
# Of what is left, only SAFETY is planned for (the per-sequence figure is an estimate).
RESERVED_BYTES = 2 * 2**30
SAFETY = 0.8
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
GIB = 2**30


@dataclass(frozen=True)
class BatchChoice:
    size: int | None  # None: the engine schedules its own batches (vLLM)
    reason: str  # one line for logs and results.json


@dataclass(frozen=True)
class ModelShape:
    """What a decoder's memory need is computed from."""

    parameters: int
    layers: int
    attention_heads: int
    kv_heads: int
    head_dim: int
    hidden_size: int
    intermediate_size: int
    vocab_size: int

    @classmethod
    def from_config(cls, config: Any, parameters: int | None = None) -> ModelShape:
        """From a transformers config (a multimodal one's language model); ``parameters``
        counted from the weight files, else estimated from the config."""
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        heads = int(text.num_attention_heads)
        hidden = int(text.hidden_size)
        shape = cls(
            parameters=0,
            layers=int(text.num_hidden_layers),
            attention_heads=heads,
            kv_heads=int(getattr(text, "num_key_value_heads", None) or heads),
            head_dim=int(getattr(text, "head_dim", None) or hidden // heads),
            hidden_size=hidden,
            intermediate_size=int(getattr(text, "intermediate_size", None) or 4 * hidden),
            vocab_size=int(text.vocab_size),
        )
        tied = bool(getattr(text, "tie_word_embeddings", False))
        return dataclasses.replace(shape, parameters=parameters or shape.estimated_parameters(tied))

    def estimated_parameters(self, tied: bool) -> int:
        """A dense decoder: embeddings (and an untied head), attention, a gated MLP, norms."""
        attention = self.hidden_size * self.head_dim * 2 * (self.attention_heads + self.kv_heads)
        mlp = 3 * self.hidden_size * self.intermediate_size
        embeddings = self.vocab_size * self.hidden_size * (1 if tied else 2)
        return (
            embeddings + self.layers * (attention + mlp + 2 * self.hidden_size) + self.hidden_size
        )

    def kv_bytes_per_token(self, dtype: str) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * DTYPE_BYTES[dtype]

    def sequence_bytes(self, tokens: int, dtype: str) -> int:
        """One sequence's share of generate()'s peak: its KV cache over ``tokens``, the
        prefill's widest activations (hidden states, the gated MLP's intermediates, one layer's
        attention scores in fp32) and the fp32 logits, scores and probabilities of a step."""
        kv = self.kv_bytes_per_token(dtype) * tokens
        activations = tokens * (4 * self.hidden_size + 3 * self.intermediate_size)
        scores = self.attention_heads * tokens * tokens * 4
        logits = 3 * self.vocab_size * 4
        return kv + activations * DTYPE_BYTES[dtype] + scores + logits


def model_shape(path: str, revision: str | None = None) -> ModelShape | None:
    """The shape of a model folder or cached hub id (parameters from its safetensors headers
    where present); None where its config cannot be read here."""
    try:
        config = model_config(path, revision)
        return ModelShape.from_config(config, stored_parameters(path, revision))
    except (OSError, ValueError, AttributeError, TypeError):
        return None


def auto_batch_size(
    *,
    device: str,
    dtype: str,
    prompts: int,
    prompt_tokens: int,
    max_new_tokens: int,
    shape: ModelShape | None = None,
    free_bytes: int | None = None,
) -> BatchChoice:
    """The batch for ``inference.batch_size: auto``. ``prompt_tokens``: the longest prompt
    (batches go longest first, so the first is padded to it); ``free_bytes``: the GPU's free
    memory before this model loads (an already loaded model only makes the choice smaller)."""
    if device != "cuda":
        return BatchChoice(CPU_BATCH, f"{device}: the default {CPU_BATCH}")
    prompts = max(prompts, 1)
    if shape is None or free_bytes is None:
        unknown = "the model's config" if shape is None else "the GPU's free memory (NVML)"
        return BatchChoice(
            min(CPU_BATCH, prompts), f"cuda: {unknown} unknown; the default {CPU_BATCH}"
        )
    tokens = prompt_tokens + max_new_tokens
    weights = shape.parameters * DTYPE_BYTES[dtype]
    per_sequence = shape.sequence_bytes(tokens, dtype)
    budget = int((free_bytes - weights - RESERVED_BYTES) * SAFETY)
    fits = max(budget // per_sequence, 0)
    size = max(1, min(fits, CUDA_BATCH_CAP, prompts))
    sizing = (
        f"{fits} sequences of {tokens} tokens ({per_sequence / 2**20:.1f} MiB each) fit in "
        f"{free_bytes / GIB:.1f} GiB free beside {weights / GIB:.2f} GiB of {dtype} weights"
    )
    if fits < 1:
        return BatchChoice(1, f"cuda: 1, memory is short: {sizing}")
    if size == prompts and prompts < min(fits, CUDA_BATCH_CAP):
        return BatchChoice(size, f"cuda: all {prompts} prompts at once; {sizing}")
    if size == CUDA_BATCH_CAP < fits:
        return BatchChoice(size, f"cuda: capped at {CUDA_BATCH_CAP} (fastest measured); {sizing}")
    return BatchChoice(size, f"cuda: {sizing}")


def resolve_batch_size(
    setting: int | str,
    *,
    device: str,
    dtype: str,
    prompts: int,
    longest_prompt: int,
    max_new_tokens: int,
    shape: ModelShape | None = None,
) -> BatchChoice:
    """``inference.batch_size`` as run: a number as given, ``auto`` from ``shape`` (see
    model_shape; only needed on CUDA) and the GPU's free memory read now through NVML."""
    if setting != "auto":  # checked by InferenceConfig
        return BatchChoice(int(setting), "inference.batch_size")
    free = None
    if device == "cuda":
        memory = gpu_memory()
        free = memory[0] if memory else None
    return auto_batch_size(
        device=device,
        dtype=dtype,
        prompts=prompts,
        prompt_tokens=longest_prompt,
        max_new_tokens=max_new_tokens,
        shape=shape,
        free_bytes=free,
    )

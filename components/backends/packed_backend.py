"""Packed bf16 backend: a Llama-family model's own weights, computed in bf16 on the CPU with
prompts packed together, and answers that do not depend on the batch.

Why not transformers' ``generate`` in bf16: it pads a batch to its longest prompt, and bf16
answers then change with the batch (64% identical at batch 1, 8 and 32 with the gold
passage, docs/benchmarks.md). Why not CTranslate2: it has no bf16 on a CPU, and where the CPU
multiplies bf16 matrices in hardware (AMX) its int8 ran at less than half the speed of this.

How answers stay batch-invariant: a matrix product's row depends only on that row when the
product's shape is fixed (oneDNN picks its kernel, and with it the order of the sums, by
the number of rows), so every product runs on blocks of exactly ``BLOCK`` rows (prefill)
or ``DECODE_BLOCK`` (decoding), the last one padded. Each prompt is padded to its slot (its
length rounded up to ``SLOT``) and attends only to itself, causally, with the prompts of the
same slot; decoding multiplies every unfinished answer's row together and computes the
attention per slot, the slot's padding masked. So a row's shapes, and its answer, never
depend on which prompts share its batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from components.backends.base import Generation, GenerationParams
from components.backends.packed_attention import AttentionShape, SlotGroup, spans_of
from components.batching import CPU_BATCH
from components.fault_injection import out_of_memory_above
from components.prompts import decode_answer, end_ids, eos_ids, load_tokenizer

# Rows of every matrix product: oneDNN's bf16 kernels ran 1.3-1.6 TFLOP/s on two cores at
# 256-512 rows against 0.6 at 32 (2026-12-07, a Xeon with AMX).
BLOCK = 512
# Decoding multiplies one row per prompt: blocks of this many rows (a batch of 32 fills one).
DECODE_BLOCK = 32
# A prompt's keys sit in a slot of its length rounded up to this.
SLOT = 32
SUPPORTED = ("LlamaForCausalLM",)  # SmolLM2 among them; what the tests run
SETTINGS_DTYPES = ("auto", "bfloat16")  # the inference.dtype values it runs


def unsupported_reason(config: Any) -> str | None:
    """None when this backend computes the model, else why not."""
    names = getattr(config, "architectures", None) or []
    if not any(n in SUPPORTED for n in names):
        return f"the packed backend computes {', '.join(SUPPORTED)}, not {', '.join(names)}"
    return None


def slot(length: int, max_new_tokens: int) -> int:
    """The keys' slot of a prompt: its own length rounded up (then the answer's tokens)."""
    return -(-length // SLOT) * SLOT + max_new_tokens


class PackedBackend:
    name = "packed"

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
        import torch
        from transformers import AutoModelForCausalLM

        if device != "cpu" or dtype != "bfloat16":
            raise ValueError(f"packed backend: runs bfloat16 on the cpu, not {dtype} on {device}")
        self.device, self.dtype, self.batch_size = device, dtype, batch_size
        self.tokenizer = tokenizer or load_tokenizer(model_path, revision)
        model = AutoModelForCausalLM.from_pretrained(
            model_path, revision=revision, dtype=torch.bfloat16
        ).eval()
        why_not = unsupported_reason(model.config)
        if why_not is not None:
            raise ValueError(why_not)
        self.model = model
        config = model.config
        self.eps = config.rms_norm_eps
        self.layers = self._weights()
        model.model.layers = torch.nn.ModuleList()  # their weights now live in self.layers
        self.head = _Linear(model.lm_head.weight)
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads or self.heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.shape = AttentionShape(self.heads, self.kv_heads, self.head_dim, len(self.layers))
        self.eos_ids = eos_ids(model.generation_config.eos_token_id, self.tokenizer)
        self._stop_ids: dict[tuple[str, ...], set[int]] = {}

    def _end_ids(self, stop: tuple[str, ...]) -> set[int]:
        if stop not in self._stop_ids:
            size = self.model.config.vocab_size
            self._stop_ids[stop] = set(end_ids(self.tokenizer, self.eos_ids, stop, size))
        return self._stop_ids[stop]

    def _weights(self) -> list[dict[str, Any]]:
        """Each layer's matrices, the three attention inputs and the two MLP inputs each
        joined into one (fewer, larger products)."""
        layers = []
        for layer in self.model.model.layers:
            attention, mlp = layer.self_attn, layer.mlp
            layers.append(
                {
                    "qkv": _Linear.of(attention.q_proj, attention.k_proj, attention.v_proj),
                    "o": _Linear.of(attention.o_proj),
                    "gate_up": _Linear.of(mlp.gate_proj, mlp.up_proj),
                    "down": _Linear.of(mlp.down_proj),
                    "norm_in": layer.input_layernorm.weight,
                    "norm_post": layer.post_attention_layernorm.weight,
                }
            )
        return layers

    def _attention_inputs(self, weights, h, cos, sin):
        """Queries, keys and values of a block of rows (hidden states), rotated: one matrix
        (rows x (heads + 2 kv heads) x head_dim)."""
        qkv = weights["qkv"](self._norm(h, weights["norm_in"]))
        qkv = qkv.view(h.shape[0], self.heads + 2 * self.kv_heads, self.head_dim)
        half = self.head_dim // 2
        first = qkv[:, : self.heads + self.kv_heads, :half]
        second = qkv[:, : self.heads + self.kv_heads, half:]
        cos, sin = cos[:, None, :half], sin[:, None, :half]
        first, second = first * cos - second * sin, second * cos + first * sin
        qkv[:, : self.heads + self.kv_heads, :half] = first
        qkv[:, : self.heads + self.kv_heads, half:] = second
        return qkv

    def _norm(self, h, weight):
        """RMSNorm as the model computes it (in fp32, then its bf16 weight), with one fused
        reduction (torch's rms_norm ran 2.4x slower here on bf16 rows)."""
        import torch

        norm = torch.linalg.vector_norm(h, dim=-1, keepdim=True, dtype=torch.float32)
        scale = norm.square_().div_(h.shape[-1]).add_(self.eps).rsqrt_()
        return (h * scale).to(torch.bfloat16) * weight

    def _layer_rest(self, weights, h, attended) -> None:
        """The layer after attention for a block of rows, in place: output projection, MLP,
        residuals."""
        import torch.nn.functional as F

        h += weights["o"](attended)
        gate, up = weights["gate_up"](self._norm(h, weights["norm_post"])).chunk(2, dim=1)
        h += weights["down"](F.silu(gate).mul_(up))

    def _next_tokens(self, h):
        """The greedy next token of each row of ``h``, DECODE_BLOCK rows at a time."""
        import torch

        count = h.shape[0]
        total = -(-count // DECODE_BLOCK) * DECODE_BLOCK
        if total > count:
            h = torch.cat([h, h.new_zeros(total - count, h.shape[1])])
        norm = self.model.model.norm.weight
        return torch.cat(
            [
                self.head(self._norm(h[start : start + DECODE_BLOCK], norm)).float().argmax(-1)
                for start in range(0, total, DECODE_BLOCK)
            ]
        )[:count]

    def _layers(self, h, positions, attend, rows: int):
        """Every layer over ``h`` (tokens x hidden) in blocks of exactly ``rows`` rows (the
        tokens padded with zero rows to a whole number of blocks), so every matrix product
        has the same shape whatever the number of tokens; ``attend(index, q, k, v)`` gives
        the attention output of the tokens' queries (tokens x heads x head_dim)."""
        import torch

        count = h.shape[0]
        cos, sin = self.model.model.rotary_emb(h, positions[None])
        cos, sin = cos[0], sin[0]
        total = -(-count // rows) * rows
        if total > count:
            h, cos, sin = (
                torch.cat([x, x.new_zeros(total - count, x.shape[1])]) for x in (h, cos, sin)
            )
        qkv = h.new_empty(total, self.heads + 2 * self.kv_heads, self.head_dim)
        attended = h.new_zeros(total, self.heads * self.head_dim)
        blocks = [slice(start, start + rows) for start in range(0, total, rows)]
        split = [self.heads, self.kv_heads, self.kv_heads]
        for index, weights in enumerate(self.layers):
            for block in blocks:
                qkv[block] = self._attention_inputs(weights, h[block], cos[block], sin[block])
            q, k, v = qkv[:count].split(split, dim=1)
            attended[:count] = attend(index, q, k, v).reshape(count, -1)
            for block in blocks:
                self._layer_rest(weights, h[block], attended[block])
        return h[:count]

    def _generate_batch(self, prompts: list[list[int]], params, end) -> list[list[int]]:
        """Greedy answers of a batch: prompts grouped by slot, every group prefilled padded
        to its slot (each prompt attends to itself alone), then one token per step for the
        answers not yet finished, the matrix products over all of them at once and the
        attention group by group."""
        import torch

        by_slot: dict[int, list[int]] = {}
        for row, prompt in enumerate(prompts):
            by_slot.setdefault(slot(len(prompt), params.max_new_tokens), []).append(row)
        groups = [
            SlotGroup(self.shape, [prompts[r] for r in rows], rows, width, params.max_new_tokens)
            for width, rows in sorted(by_slot.items())
        ]
        h = self.model.model.embed_tokens(torch.cat([g.ids.view(-1) for g in groups]))
        positions = torch.cat([torch.arange(g.room).repeat(len(g.rows)) for g in groups])
        spans = spans_of([len(g.rows) * g.room for g in groups])

        def prefill(index, q, k, v):
            return torch.cat(
                [
                    g.prefill(index, q[a:b], k[a:b], v[a:b])
                    for g, (a, b) in zip(groups, spans, strict=True)
                ]
            )

        h = self._layers(h, positions, prefill, BLOCK)
        last = torch.cat(
            [
                h[a:b].view(len(g.rows), g.room, -1)[torch.arange(len(g.rows)), g.lengths - 1]
                for g, (a, b) in zip(groups, spans, strict=True)
            ]
        )
        token = self._next_tokens(last)
        answers: list[list[int]] = [[] for _ in prompts]
        for step in range(params.max_new_tokens):
            tokens = token.tolist()
            kept, offset = [], 0
            for g in groups:
                done = tokens[offset : offset + len(g.rows)]
                for row, t in zip(g.rows, done, strict=True):
                    answers[row].append(t)
                going = [i for i, t in enumerate(done) if t not in end]
                g.keep(going)
                kept += [offset + i for i in going]
                offset += len(done)
            groups = [g for g in groups if g.rows]
            if not groups or step == params.max_new_tokens - 1:
                break
            spans = spans_of([len(g.rows) for g in groups])

            def decode(index, q, k, v, step=step, groups=groups, spans=spans):
                return torch.cat(
                    [
                        g.decode(index, step, q[a:b], k[a:b], v[a:b])
                        for g, (a, b) in zip(groups, spans, strict=True)
                    ]
                )

            positions = torch.cat([g.lengths + step for g in groups])
            h = self._layers(
                self.model.model.embed_tokens(token[kept]), positions, decode, DECODE_BLOCK
            )
            token = self._next_tokens(h)
        return answers

    def generate(
        self,
        prompts: Sequence[list[int]],
        params: GenerationParams,
        on_progress: Callable[[int], None] | None = None,
        on_batch: Callable[[list[int], list[Generation]], None] | None = None,
    ) -> list[Generation]:
        import torch

        if not params.greedy:
            raise ValueError("packed backend: greedy decoding only (inference.temperature=0)")
        end = self._end_ids(params.stop)
        # Longest first (a batch too large fails at once), prompts of one slot together.
        order = sorted(range(len(prompts)), key=lambda i: -slot(len(prompts[i]), 0))
        batches = [
            order[start : start + self.batch_size]
            for start in range(0, len(order), self.batch_size)
        ]
        results: list[Generation | None] = [None] * len(prompts)
        with torch.inference_mode():
            for batch in batches:
                out_of_memory_above(len(batch))
                answers = self._generate_batch([list(prompts[i]) for i in batch], params, end)
                generations = []
                for index, answer in zip(batch, answers, strict=True):
                    text, count = decode_answer(self.tokenizer, answer, params.stop)
                    generations.append(Generation(text, len(prompts[index]), count))
                    results[index] = generations[-1]
                if on_batch is not None:
                    on_batch(batch, generations)
                if on_progress is not None:
                    on_progress(len(batch))
        return [r for r in results if r is not None]

    def close(self) -> None:
        """Frees the weights (idempotent)."""
        self.model = self.head = None
        self.layers = []


class _Linear:
    """``x @ weight.T (+ bias)`` for blocks of BLOCK or DECODE_BLOCK rows, the weight
    reordered once per block size for oneDNN (what torch.compile's CPU backend does: 1.3-1.6x
    faster here than reordering it on every call). Where oneDNN has no bf16 kernel for this
    CPU (no AVX-512), in fp32 on the same shapes, then rounded to bf16: torch's own bf16
    product ran 5x slower than fp32 there (an AMD EPYC with AVX2, 2026-12-07)."""

    def __init__(self, weight, bias=None) -> None:
        import torch

        self.weight, self.bias = weight, bias
        self.packed: dict[int, Any] = {}
        for rows in (BLOCK, DECODE_BLOCK):
            try:
                self.packed[rows] = torch.ops.mkldnn._reorder_linear_weight(weight, rows)
            except (AttributeError, RuntimeError):
                self.packed = {}
                self.weight = weight.float()
                self.bias = None if bias is None else bias.float()
                break

    @classmethod
    def of(cls, *linears) -> _Linear:
        """One product for these ``nn.Linear`` of one input, their outputs side by side."""
        import torch

        weight = torch.cat([linear.weight for linear in linears])
        if linears[0].bias is None:
            return cls(weight)
        return cls(weight, torch.cat([linear.bias for linear in linears]))

    def __call__(self, x):
        import torch
        import torch.nn.functional as F

        packed = self.packed.get(x.shape[0])
        if packed is None:
            return F.linear(x.to(self.weight.dtype), self.weight, self.bias).to(x.dtype)
        return torch.ops.mkldnn._linear_pointwise(x, packed, self.bias, "none", [], "")

"""The packed backend's attention: prompts of one slot (their length rounded up to the same
size) together, each attending only to itself, and their keys and values kept for decoding.
Why per slot: a row's attention then has the same shapes whatever else is in its batch
(components/backends/packed_backend.py)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AttentionShape:
    heads: int
    kv_heads: int
    head_dim: int
    layers: int


def spans_of(sizes: list[int]) -> list[tuple[int, int]]:
    """(start, end) of consecutive parts of these sizes."""
    spans, start = [], 0
    for size in sizes:
        spans.append((start, start + size))
        start += size
    return spans


class SlotGroup:
    """The prompts of one slot in a batch: per layer their keys and values (each prompt
    padded to ``room``, then its answer's tokens), and which are still answering."""

    def __init__(
        self, shape: AttentionShape, prompts: list[list[int]], rows: list[int], width: int, new: int
    ) -> None:
        import torch

        self.rows, self.room = list(rows), width - new
        self.heads, self.head_dim = shape.heads, shape.head_dim
        self.ids = torch.zeros(len(prompts), self.room, dtype=torch.long)
        for row, prompt in enumerate(prompts):
            self.ids[row, : len(prompt)] = torch.tensor(prompt)
        self.lengths = torch.tensor([len(p) for p in prompts])
        size = (len(prompts), shape.kv_heads, width, shape.head_dim)
        self.keys = [torch.zeros(size, dtype=torch.bfloat16) for _ in range(shape.layers)]
        self.values = [torch.zeros(size, dtype=torch.bfloat16) for _ in range(shape.layers)]
        self.visible = torch.arange(width)[None, :] < self.lengths[:, None]

    def prefill(self, index: int, q, k, v):
        """Causal attention of each padded prompt to itself (padding comes after the prompt,
        so no prompt token sees it); keeps the keys and values."""
        import torch.nn.functional as F

        count, room, dim = len(self.rows), self.room, self.head_dim
        keys, values = self.keys[index], self.values[index]
        keys[:, :, :room] = k.reshape(count, room, -1, dim).transpose(1, 2)
        values[:, :, :room] = v.reshape(count, room, -1, dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(
            q.reshape(count, room, self.heads, dim).transpose(1, 2),
            keys[:, :, :room],
            values[:, :, :room],
            is_causal=True,
            enable_gqa=True,
        )
        return out.transpose(1, 2).reshape(count * room, self.heads, dim)

    def decode(self, index: int, step: int, q, k, v):
        """One new token per prompt: its key and value kept at ``room + step``, attention over
        the prompt and the answer so far (the slot's padding masked)."""
        import torch.nn.functional as F

        at = self.room + step
        self.keys[index][:, :, at] = k
        self.values[index][:, :, at] = v
        if index == 0:
            self.visible[:, at] = True
        out = F.scaled_dot_product_attention(
            q[:, :, None],
            self.keys[index][:, :, : at + 1],
            self.values[index][:, :, : at + 1],
            attn_mask=self.visible[:, None, None, : at + 1],
            enable_gqa=True,
        )
        return out[:, :, 0]

    def keep(self, going: list[int]) -> None:
        """Only these prompts (positions in the group) answer on."""
        import torch

        if len(going) == len(self.rows):
            return
        index = torch.tensor(going, dtype=torch.long)
        self.rows = [self.rows[i] for i in going]
        self.lengths = self.lengths.index_select(0, index)
        self.visible = self.visible.index_select(0, index)
        self.keys = [k.index_select(0, index) for k in self.keys]
        self.values = [v.index_select(0, index) for v in self.values]

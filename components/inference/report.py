"""What an inference step hands on: where its answers are and how they came about (model,
backend, device, dtype, batch as resolved), how long it took and how fast it went. The
shards of a sharded run merge into one report, so a sharded run reads like an unsharded one."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

SHARD_FIELDS = ("shard", "examples", "resumed", "load_seconds", "generate_seconds")


@dataclass(frozen=True)
class GenerationReport:
    generations_path: str
    checkpoint: str
    examples: int
    resumed: int  # answers taken from the checkpoint, not generated here
    generated: int
    generated_output_tokens: int
    prompt_tokens: int
    output_tokens: int
    load_seconds: float
    generate_seconds: float
    model_path: str
    model_source: str
    gguf_sha256: str | None
    backend: str
    backend_reason: str
    device: str
    dtype: str
    batch_size: int | None
    batch_size_reason: str | None
    model_reused: bool
    environment: dict[str, Any]  # the machine that generated the answers
    shard: int = 0
    shards: int = 1
    shard_details: list[dict[str, Any]] = field(default_factory=list)
    weights_sha256: str | None = None  # the loaded folder's content, where not a GGUF
    model_input: dict[str, Any] | None = None  # where model.path was fetched from
    prompt: dict[str, Any] | None = None  # the template and system prompt, where from, one shown

    @property
    def questions_per_s(self) -> float | None:
        """Speed of what this run generated; resumed answers took no time here."""
        seconds = self.generate_seconds
        return self.generated / seconds if self.generated and seconds else None

    @property
    def output_tokens_per_s(self) -> float | None:
        seconds = self.generate_seconds
        return self.generated_output_tokens / seconds if self.generated and seconds else None

    def to_dict(self) -> dict[str, Any]:
        return {
            **dataclasses.asdict(self),
            "questions_per_s": self.questions_per_s,
            "output_tokens_per_s": self.output_tokens_per_s,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GenerationReport:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def merged(cls, shards: Sequence[GenerationReport], generations_path: str) -> GenerationReport:
        """The shards as one: counts and seconds summed (speed is per step-second, so a
        sharded run compares with an unsharded one), the setup of the first that had work."""
        ordered = sorted(shards, key=lambda r: r.shard)
        first = next((r for r in ordered if r.examples), ordered[0])
        total = {
            f: sum(getattr(r, f) for r in ordered)
            for f in (
                "examples",
                "resumed",
                "generated",
                "generated_output_tokens",
                "prompt_tokens",
                "output_tokens",
                "load_seconds",
                "generate_seconds",
            )
        }
        return dataclasses.replace(
            first,
            generations_path=generations_path,
            shard=0,
            shards=len(ordered),
            shard_details=[{f: getattr(r, f) for f in SHARD_FIELDS} for r in ordered],
            **total,
        )

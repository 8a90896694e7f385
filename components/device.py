"""Pick the device and dtype a run actually uses, so results.json can say what ran."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

DTYPES = ("auto", "float32", "bfloat16", "float16")


@lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """avx512_bf16 or AMX: there bf16 matmul runs several times faster than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags.split() for f in ("avx512_bf16", "amx_bf16"))


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if cuda_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise ValueError(f"inference.device: {device!r} is not one of auto, cpu, cuda")
    if device == "cuda" and not cuda_available():
        raise ValueError("inference.device: cuda was asked for but torch sees no CUDA device")
    return device


def resolve_dtype(dtype: str, device: str) -> str:
    if dtype not in DTYPES:
        raise ValueError(f"inference.dtype: {dtype!r} is not one of {', '.join(DTYPES)}")
    if dtype != "auto":
        return dtype
    if device == "cuda":
        import torch

        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "bfloat16" if cpu_has_native_bf16() else "float32"

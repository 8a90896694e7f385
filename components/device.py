"""Pick the device and dtype a run actually uses, so results.json can say what ran.

Nothing here initialises CUDA in this process, nor calls ``torch.cuda.is_available()``: its
cudaGetDeviceCount marks the process so that a forked child cannot use CUDA ("Cannot
re-initialize CUDA in forked subprocess") while ``torch.cuda.is_initialized()`` stays False,
so vLLM does not know to spawn its engine instead of forking it. What the GPU is and how much
memory it has free come from NVML, which reads the driver without a CUDA context.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (/proc/cpuinfo), read once; empty where there is none."""
    try:
        return frozenset(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return frozenset()


def cpu_has_native_bf16() -> bool:
    """avx512_bf16 or AMX: there bf16 matmul runs several times faster than fp32."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def cpu_has_amx() -> bool:
    """Intel AMX with bf16 tiles: bf16 matrix products several times faster than avx512_bf16
    alone (what the packed backend is chosen for, docs/benchmarks.md)."""
    return "amx_bf16" in cpu_flags()


def torch_built_with_cuda() -> bool:
    """What torch's own version file says of CUDA, read without importing torch (1-2 s a
    process on a CPU run that never needs it); True where the file cannot tell."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return False
    try:
        text = (Path(list(spec.submodule_search_locations)[0]) / "version.py").read_text()
    except OSError:
        return True
    # ROCm builds answer to torch.cuda too: their file names hip instead.
    for name in ("cuda", "hip"):
        found = re.search(rf"^{name}\s*(?::[^=]*)?=\s*(.+?)\s*$", text, re.MULTILINE)
        if found is None or found.group(1) != "None":
            return True
    return False


def cuda_available() -> bool:
    """torch has CUDA and a GPU is visible, counted through NVML (torch's own
    ``device_count()`` does that until CUDA is initialised), so no fork is poisoned."""
    if not torch_built_with_cuda():
        return False
    import torch

    return bool(torch.backends.cuda.is_built()) and torch.cuda.device_count() > 0


def _nvml_handle(index: int = 0) -> Any:
    """NVML's handle of the GPU that CUDA calls ``cuda:<index>`` here (CUDA_VISIBLE_DEVICES
    renumbers devices, or names them by UUID); None where NVML cannot tell. On machines with
    mixed GPU models set CUDA_DEVICE_ORDER=PCI_BUS_ID so both count in the same order."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible is None:
            return pynvml.nvmlDeviceGetHandleByIndex(index)
        entry = [e.strip() for e in visible.split(",") if e.strip()][index]
        if entry.isdigit():
            return pynvml.nvmlDeviceGetHandleByIndex(int(entry))
        return pynvml.nvmlDeviceGetHandleByUUID(entry)
    except (pynvml.NVMLError, IndexError):
        return None


def cuda_capability(index: int = 0) -> tuple[int, int] | None:
    """(major, minor) compute capability of ``cuda:<index>`` through NVML; None if unknown."""
    handle = _nvml_handle(index)
    if handle is None:
        return None
    import pynvml

    try:
        major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
    except pynvml.NVMLError:
        return None
    return int(major), int(minor)


def gpu_memory(index: int = 0) -> tuple[int, int] | None:
    """(free, total) bytes of ``cuda:<index>`` as the driver reports them (every process's
    use counted, vLLM's engine included); None where NVML cannot tell."""
    handle = _nvml_handle(index)
    if handle is None:
        return None
    import pynvml

    try:
        info = pynvml.nvmlDeviceGetMemoryInfo(handle)
    except pynvml.NVMLError:
        return None
    return int(info.free), int(info.total)


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if cuda_available() else "cpu"
    if device == "cuda" and not cuda_available():
        raise ValueError("inference.device: cuda was asked for but torch sees no CUDA device")
    return device


def cuda_dtype(capability: tuple[int, int] | None) -> str:
    """bf16 from compute capability 8.0 (Ampere) on, where it is native; fp16 below, and
    where the capability is unknown, since every CUDA GPU runs fp16."""
    return "bfloat16" if capability is not None and capability >= (8, 0) else "float16"


def resolve_dtype(dtype: str, device: str) -> str:
    if dtype != "auto":  # InferenceConfig checked it
        return dtype
    if device == "cuda":
        capability = cuda_capability()
        if capability is None:
            log.warning(
                "inference.dtype: auto cannot read the GPU's compute capability (NVML); using "
                "float16 (set inference.dtype=bfloat16 on an Ampere or newer GPU)"
            )
        return cuda_dtype(capability)
    return "bfloat16" if cpu_has_native_bf16() else "float32"

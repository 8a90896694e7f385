"""Device, dtype, backend and batch-size resolution: right answers, and CUDA left untouched.

vLLM forks or spawns its engine; a parent that has initialised CUDA, or only asked
``torch.cuda.is_available()`` (cudaGetDeviceCount poisons fork without marking CUDA as
initialised), breaks a forked engine. So resolution must reach the GPU through NVML only.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys

import pytest

from components.backends import resolve_backend
from components.backends.choice import vllm_installed
from components.batching import (
    CPU_BATCH,
    CUDA_BATCH_CAP,
    ModelShape,
    auto_batch_size,
    model_shape,
    resolve_batch_size,
)
from components.device import (
    cuda_available,
    cuda_capability,
    cuda_dtype,
    gpu_memory,
    resolve_device,
    resolve_dtype,
)

needs_cuda = pytest.mark.skipif(not cuda_available(), reason="no CUDA device here")
GIB = 2**30
H100_FREE = 80 * GIB

# SmolLM2-135M-Instruct's config.json (the packaged model, as converted).
SMOLLM2_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "head_dim": 64,
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_attention_heads": 9,
    "num_hidden_layers": 30,
    "num_key_value_heads": 3,
    "tie_word_embeddings": True,
    "vocab_size": 49152,
    "max_position_embeddings": 8192,
}
SMOLLM2 = ModelShape(
    parameters=134_515_008,
    layers=30,
    attention_heads=9,
    kv_heads=3,
    head_dim=64,
    hidden_size=576,
    intermediate_size=1536,
    vocab_size=49152,
)
# SmolLM2-1.7B-Instruct (no grouped KV heads: its KV cache per token is 8.5x the 135M's).
SMOLLM2_1_7B = ModelShape(
    parameters=1_711_376_384,
    layers=24,
    attention_heads=32,
    kv_heads=32,
    head_dim=64,
    hidden_size=2048,
    intermediate_size=8192,
    vocab_size=49152,
)


@pytest.fixture
def smollm2_config_folder(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(SMOLLM2_CONFIG))
    return str(tmp_path)


def test_resolution_never_initialises_cuda_nor_poisons_fork(smollm2_config_folder):
    """Records every call into torch's CUDA entry points that initialise CUDA or poison fork
    while everything a run resolves before loading is resolved, for CPU and for CUDA."""
    import torch

    forbidden_python = {
        f.__code__: f.__name__
        for f in (
            torch.cuda.is_available,
            torch.cuda.init,
            torch.cuda._lazy_init,
            torch.cuda.current_device,
            torch.cuda.get_device_properties,
            torch.cuda.get_device_capability,
            torch.cuda.is_bf16_supported,
            torch.cuda.mem_get_info,
        )
    }
    forbidden_c = {"_cuda_getDeviceCount", "_cuda_init", "_cuda_getDevice"}
    calls: list[str] = []

    def profile(frame, event, arg):
        if event == "call" and frame.f_code in forbidden_python:
            calls.append(forbidden_python[frame.f_code])
        elif event == "c_call" and getattr(arg, "__name__", "") in forbidden_c:
            calls.append(arg.__name__)

    sys.setprofile(profile)
    try:
        device = resolve_device("auto")
        for target in ("cpu", "cuda"):
            dtype = resolve_dtype("auto", target)
            shape = model_shape(smollm2_config_folder)
            resolve_backend("auto", target, parameters=shape.parameters, questions=3610)
            resolve_batch_size(
                "auto",
                device=target,
                dtype=dtype,
                prompts=2,
                longest_prompt=60,
                max_new_tokens=32,
                shape=shape,
            )
        if vllm_installed():
            with pytest.raises(ValueError) if cuda_available() else contextlib.nullcontext():
                resolve_backend("vllm", "cpu")  # asks whether CUDA is there
    finally:
        sys.setprofile(None)
    assert calls == []
    assert device in ("cpu", "cuda")
    assert not torch.cuda.is_initialized()


def test_device_follows_what_torch_and_nvml_see():
    if cuda_available():
        assert resolve_device("auto") == "cuda"
        assert gpu_memory() is not None
    else:
        assert resolve_device("auto") == "cpu"
        with pytest.raises(ValueError, match="inference.device: cuda was asked for"):
            resolve_device("cuda")
    from components.inference.config import InferenceConfig

    with pytest.raises(ValueError, match="inference.device: 'tpu' is not one of auto"):
        InferenceConfig(device="tpu")  # checked where the setting is defined


def test_cuda_dtype_is_bf16_from_ampere_on():
    assert cuda_dtype((9, 0)) == "bfloat16"  # H100
    assert cuda_dtype((8, 0)) == "bfloat16"  # A100
    assert cuda_dtype((7, 5)) == "float16"  # T4
    assert cuda_dtype(None) == "float16"  # NVML could not tell: fp16 runs everywhere
    assert resolve_dtype("auto", "cuda") == cuda_dtype(cuda_capability())
    assert resolve_dtype("float32", "cuda") == "float32"


# ---- inference.batch_size: auto ---------------------------------------------------------


def test_model_shape_from_a_config_folder(smollm2_config_folder):
    """No weight files: parameters estimated from the config, exactly SmolLM2's count."""
    assert model_shape(smollm2_config_folder) == SMOLLM2
    assert model_shape("/nonexistent/model") is None


def test_kv_cache_arithmetic_for_smollm2():
    # K and V x 30 layers x 3 KV heads x 64 dims x 2 bytes (bf16)
    assert SMOLLM2.kv_bytes_per_token("bfloat16") == 2 * 30 * 3 * 64 * 2 == 23_040
    assert SMOLLM2.kv_bytes_per_token("float32") == 46_080
    # 96 tokens: KV 2,211,840 + activations 96 x (4x576 + 3x1536) x 2 = 1,327,104
    # + fp32 attention scores 9 x 96^2 x 4 = 331,776 + three fp32 logit rows 589,824
    assert SMOLLM2.sequence_bytes(96, "bfloat16") == 4_460_544


def test_auto_batch_on_an_h100_is_capped_for_a_small_model():
    choice = auto_batch_size(
        device="cuda",
        dtype="bfloat16",
        prompts=3610,
        prompt_tokens=64,
        max_new_tokens=32,
        shape=SMOLLM2,
        free_bytes=H100_FREE,
    )
    # (80 GiB - 0.25 GiB weights - 2 GiB reserve) x 0.8 / 4.25 MiB: ~15,000 sequences fit
    assert choice.size == CUDA_BATCH_CAP == 1024
    assert "capped at 1024" in choice.reason and "80.0 GiB free" in choice.reason


def test_auto_batch_follows_free_memory_prompt_length_and_dtype():
    def size(**overrides):
        settings = dict(
            device="cuda",
            dtype="bfloat16",
            prompts=3610,
            prompt_tokens=64,
            max_new_tokens=32,
            shape=SMOLLM2,
            free_bytes=4 * GIB,
        )
        return auto_batch_size(**{**settings, **overrides})

    # (4 GiB - 269,030,016 B weights - 2 GiB) x 0.8 = 1,502,762,905 B / 4,460,544 B = 336
    assert size().size == 336
    assert "336 sequences of 96 tokens" in size().reason
    assert size(free_bytes=3 * GIB).size < 336
    assert size(prompt_tokens=512).size < 336
    assert size(dtype="float32").size < 336
    assert size(free_bytes=GIB).size == 1 and "memory is short" in size(free_bytes=GIB).reason
    few = size(prompts=60, free_bytes=H100_FREE)
    assert few.size == 60 and "all 60 prompts" in few.reason


def test_auto_batch_for_a_1_7b_model_with_long_prompts_is_set_by_memory():
    choice = auto_batch_size(
        device="cuda",
        dtype="bfloat16",
        prompts=3610,
        prompt_tokens=2048,
        max_new_tokens=32,
        shape=SMOLLM2_1_7B,
        free_bytes=H100_FREE,
    )
    # KV 196,608 B/token x 2080 tokens = 390 MiB, attention scores 32 x 2080^2 x 4 = 528 MiB
    assert 50 < choice.size < CUDA_BATCH_CAP
    assert choice.reason.startswith(f"cuda: {choice.size} sequences of 2080 tokens")


def test_auto_batch_on_cpu_and_without_figures():
    cpu = auto_batch_size(
        device="cpu", dtype="bfloat16", prompts=3610, prompt_tokens=64, max_new_tokens=32
    )
    assert cpu.size == CPU_BATCH == 32
    unknown = auto_batch_size(
        device="cuda",
        dtype="bfloat16",
        prompts=3610,
        prompt_tokens=64,
        max_new_tokens=32,
        shape=SMOLLM2,
        free_bytes=None,
    )
    assert unknown.size == 32 and "free memory (NVML) unknown" in unknown.reason


def test_resolve_batch_size_keeps_a_number_the_schema_checked():
    from components.inference.config import InferenceConfig
    from components.settings import ConfigError

    numbered = resolve_batch_size(
        64, device="cuda", dtype="bfloat16", prompts=1, longest_prompt=10, max_new_tokens=32
    )
    assert numbered.size == 64
    for bad in (0, True, 2.5, "many"):  # checked once, where the setting is defined
        with pytest.raises(ConfigError, match="inference.batch_size: must be an integer >= 1"):
            InferenceConfig(batch_size=bad)
    assert InferenceConfig(batch_size="32").batch_size == 32  # as ClearML hands it over
    here = resolve_batch_size(
        "auto", device="cpu", dtype="float32", prompts=2, longest_prompt=20, max_new_tokens=32
    )
    assert here.size == CPU_BATCH


@pytest.mark.slow
def test_model_shape_of_the_converted_smollm2_counts_its_stored_weights(smollm2_path):
    """Parameters from the safetensors headers (tied head stored once) = the estimate."""
    assert model_shape(smollm2_path) == SMOLLM2


# ---- on a GPU --------------------------------------------------------------------------------


@pytest.mark.cuda
@needs_cuda
def test_after_resolution_a_forked_child_can_still_use_cuda(smollm2_config_folder):
    """The failure seen on the H100: resolution in the parent, then a fork that uses CUDA."""
    import multiprocessing

    import torch

    device = resolve_device("auto")
    dtype = resolve_dtype("auto", device)
    shape = model_shape(smollm2_config_folder)
    resolve_backend("auto", device, parameters=shape.parameters, questions=10)
    resolve_batch_size(
        "auto",
        device=device,
        dtype=dtype,
        prompts=1,
        longest_prompt=50,
        max_new_tokens=32,
        shape=shape,
    )
    assert not torch.cuda.is_initialized()
    child = multiprocessing.get_context("fork").Process(target=_use_cuda)
    child.start()
    child.join(120)
    assert child.exitcode == 0


def _use_cuda() -> None:
    import torch

    torch.zeros(1, device="cuda")


@pytest.mark.cuda
@needs_cuda
def test_nvml_agrees_with_torch_about_the_gpu():
    """Checked in a fresh interpreter, so this process stays CUDA-free."""
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json, torch; free, total = torch.cuda.mem_get_info(0); "
            "print(json.dumps([list(torch.cuda.get_device_capability(0)), total]))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    capability, total = json.loads(proc.stdout.strip().splitlines()[-1])
    assert cuda_capability() == tuple(capability)
    assert gpu_memory()[1] == pytest.approx(total, rel=0.02)  # NVML may count reserved memory


def test_torch_s_cuda_build_is_read_without_importing_it():
    """The device of a CPU run is settled without torch's import; what the file says is what
    torch says of itself."""
    import torch

    from components.device import torch_built_with_cuda

    assert torch_built_with_cuda() == torch.backends.cuda.is_built()

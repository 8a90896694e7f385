"""Backend benchmark on the same questions: one at a time vs batched, fp32 vs bf16, vLLM.

    make bench                       # CPU, writes bench/results/inference_cpu.json
    python bench/bench_inference.py --device cuda --skip-vllm   # a CUDA machine

Questions: the first N of NQ-open (../shared/data) when present, else the shipped sample.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from components.atomic import write_json_atomic  # noqa: E402
from components.backends import GenerationParams, create_backend  # noqa: E402
from components.backends.choice import vllm_installed  # noqa: E402
from components.dataset import load_qa_dataset  # noqa: E402
from components.device import cpu_has_native_bf16  # noqa: E402
from components.inference.config import InferenceConfig  # noqa: E402
from components.model_files import ModelConfig, resolve_model  # noqa: E402
from components.prompts import PromptFormat, encode_prompts, load_tokenizer  # noqa: E402
from components.provenance import environment  # noqa: E402
from components.scoring import token_recall  # noqa: E402
from pipelines.config import compose, section, to_container  # noqa: E402

NQ_OPEN = ROOT.parent / "shared" / "data" / "nq_open_dev.jsonl"
SAMPLE = ROOT / "data" / "sample" / "qa_pairs.jsonl"


def matmul_gflops(dtype_name: str, device: str, n: int = 2048, repeats: int = 10) -> float:
    import torch

    dtype = getattr(torch, dtype_name)
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    for _ in range(2):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * repeats / (time.perf_counter() - started) / 1e9


def run_variant(backend, prompts, examples, params, batch_size: int) -> dict:
    backend.batch_size = batch_size
    backend.generate(prompts[:batch_size][:4], params)  # warm-up: first-call setup is not speed
    started = time.perf_counter()
    generations = backend.generate(prompts, params)
    seconds = time.perf_counter() - started
    recalls = [token_recall(g.text, e.answers) for g, e in zip(generations, examples, strict=True)]
    scored = [r for r in recalls if r is not None]
    out_tokens = sum(g.output_tokens for g in generations)
    return {
        "batch_size": batch_size,
        "seconds": seconds,
        "questions_per_s": len(prompts) / seconds,
        "output_tokens_per_s": out_tokens / seconds,
        "mean_token_recall": statistics.fmean(scored) if scored else None,
        "texts": [g.text for g in generations],
    }


def load(name: str, path: str, device: str, dtype: str, **options):
    started = time.perf_counter()
    backend = create_backend(name, path, device=device, dtype=dtype, **options)
    return backend, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--skip-vllm", action="store_true")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()

    source = NQ_OPEN if NQ_OPEN.is_file() else SAMPLE
    examples = load_qa_dataset(source, limit=args.questions).examples
    cfg = to_container(compose())
    model = section(ModelConfig, cfg["model"], "model")
    model_path = resolve_model(model).path
    fmt = PromptFormat.from_config(model.prompt, section(InferenceConfig, cfg["inference"]))
    prompts = encode_prompts(load_tokenizer(model_path), [e.question for e in examples], fmt)
    params = GenerationParams(max_new_tokens=args.max_new_tokens)
    print(f"{len(examples)} questions from {source}, {args.max_new_tokens} new tokens, greedy")

    variants: dict[str, dict] = {}
    fp32, fp32_load = load("transformers", model_path, args.device, "float32")
    variants["batch1_fp32"] = run_variant(fp32, prompts, examples, params, 1)
    print(f"batch 1 fp32: {variants['batch1_fp32']['questions_per_s']:.2f} q/s")
    variants["batched_fp32"] = run_variant(fp32, prompts, examples, params, args.batch_size)
    print(f"batched fp32: {variants['batched_fp32']['questions_per_s']:.2f} q/s")
    fp32.close()

    bf16_ok = args.device == "cuda" or cpu_has_native_bf16()
    bf16_load = None
    if bf16_ok:
        bf16, bf16_load = load("transformers", model_path, args.device, "bfloat16")
        variants["batched_bf16"] = run_variant(bf16, prompts, examples, params, args.batch_size)
        print(f"batched bf16: {variants['batched_bf16']['questions_per_s']:.2f} q/s")
        bf16.close()

    vllm_load = None
    if not args.skip_vllm and vllm_installed():
        vllm, vllm_load = load(
            "vllm", model_path, args.device, "bfloat16" if bf16_ok else "float32", seed=0
        )
        variants["vllm"] = run_variant(vllm, prompts, examples, params, len(prompts))
        print(f"vllm: {variants['vllm']['questions_per_s']:.2f} q/s (load {vllm_load:.0f} s)")
        vllm.close()

    one, batched = variants["batch1_fp32"], variants["batched_fp32"]
    identical = sum(a == b for a, b in zip(one["texts"], batched["texts"], strict=True))
    bf16_v, vllm_v = variants.get("batched_bf16"), variants.get("vllm")
    summary = {
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "device": args.device,
        "questions": len(examples),
        "source": str(source.relative_to(ROOT.parent) if source == NQ_OPEN else "sample"),
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size,
        "batch1_questions_per_s": one["questions_per_s"],
        "batched_questions_per_s": batched["questions_per_s"],
        "speedup": batched["questions_per_s"] / one["questions_per_s"],
        "identical_fraction": identical / len(examples),
        "bf16_questions_per_s": bf16_v["questions_per_s"] if bf16_v else None,
        "vllm_questions_per_s": vllm_v["questions_per_s"] if vllm_v else None,
        "output_tokens_per_s": {k: v["output_tokens_per_s"] for k, v in variants.items()},
        "mean_token_recall": {k: v["mean_token_recall"] for k, v in variants.items()},
        "bf16_recall_delta": (
            bf16_v["mean_token_recall"] - batched["mean_token_recall"] if bf16_v else None
        ),
        "load_seconds": {
            "transformers_fp32": fp32_load,
            "transformers_bf16": bf16_load,
            "vllm": vllm_load,
        },
        "matmul_gflops": {
            "float32": matmul_gflops("float32", args.device),
            "bfloat16": matmul_gflops("bfloat16", args.device) if bf16_ok else None,
        },
        "environment": environment(ROOT),
    }
    output = args.output or ROOT / "bench" / "results" / f"inference_{args.device}.json"
    write_json_atomic(output, summary)
    shown = {k: v for k, v in summary.items() if k != "environment"}
    print(json.dumps(shown, indent=2))
    print(f"wrote {output}")


if __name__ == "__main__":
    main()

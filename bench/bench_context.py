"""The context modes' speed and quality per CPU engine, and BM25's, on SQuAD v1.1 dev.

    make bench                      # also writes bench/results/context_cpu.json
    python bench/bench_context.py --questions 200 --modes no_context,oracle_context

For each mode the prompts are built the way a run builds them (the load_dataset and retrieve
steps' passages, contexts cut by the model's tokenizer, the mode's template), then each engine
answers them as bench_inference.py measures an engine: questions/s at batch 32, mean token
recall, the share of the first ``--invariance-questions`` answered identically at batch
1, 8 and 32, and the share answered as transformers fp32 answers. Retrieval: the index's
build time and size, questions/s over all 5,033 questions, gold recall@3. Data:
../shared/data/squad_dev (skipped where absent).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_inference import engines, measure  # noqa: E402

from components.atomic import read_jsonl, write_json_atomic  # noqa: E402
from components.backends import GenerationParams  # noqa: E402
from components.backends.ctranslate2_backend import cpu_threads  # noqa: E402
from components.contexts import fit_contexts  # noqa: E402
from components.dataset import DatasetConfig, QAExample  # noqa: E402
from components.inference.config import InferenceConfig  # noqa: E402
from components.model_files import ModelConfig, resolve_model  # noqa: E402
from components.modes import ModeConfig  # noqa: E402
from components.prompts import (  # noqa: E402
    PromptFormat,
    encode_prompts,
    load_tokenizer,
    shared_prefix,
)
from components.provenance import environment  # noqa: E402
from pipelines.config import compose, section, to_container  # noqa: E402
from pipelines.executor import RunContext  # noqa: E402
from pipelines.steps import load_dataset_step, retrieve_step  # noqa: E402
from pipelines.stores import LocalStore  # noqa: E402

SQUAD = ROOT.parent / "shared" / "data" / "squad_dev"


def examples_for(mode: ModeConfig, dataset: DatasetConfig, folder: Path) -> list[dict]:
    """The examples.jsonl a run's steps would hand the inference step in this mode."""
    run = RunContext("bench", mode.name, "now", folder / mode.name, LocalStore(folder))
    run.dir.mkdir(parents=True, exist_ok=True)
    loaded = load_dataset_step(dataset, mode, run)
    path = loaded["examples_path"]
    if mode.retrieves:
        path = retrieve_step(mode, dataset, path, run)["examples_path"]
    return list(read_jsonl(path))


def retrieval_row(dataset: DatasetConfig, folder: Path) -> dict:
    """BM25 over the whole question set, with the index built here (not from a cache)."""
    previous = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(folder / "empty-cache")
    mode = section(ModeConfig, config(["experiment_mode=retriever_context"])["experiment_mode"])
    full = DatasetConfig(name="squad", path=dataset.path, corpus=dataset.corpus)
    run = RunContext("bench", "retrieval", "now", folder / "retrieval", LocalStore(folder))
    run.dir.mkdir(parents=True, exist_ok=True)
    loaded = load_dataset_step(full, mode, run)
    started = time.perf_counter()
    out = retrieve_step(mode, full, loaded["examples_path"], run)["retrieval"]
    out["step_seconds"] = round(time.perf_counter() - started, 3)
    if previous is None:
        os.environ.pop("XDG_CACHE_HOME")
    else:
        os.environ["XDG_CACHE_HOME"] = previous
    keep = ("index_bytes", "index_build_seconds", "index_from", "search_seconds")
    return {
        "questions": loaded["count"],
        "corpus_passages": out["corpus"]["passages"],
        **{k: out[k] for k in keep},
        "questions_per_s": round(out["questions_per_s"]),
        "gold_recall_at_3": round(out["gold_recall_at_k"], 4),
        "answer_in_context_at_3": round(out["answer_in_context_at_k"], 4),
        "settings": out["settings"],
    }


def config(overrides: list[str]) -> dict:
    return to_container(compose(overrides))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=200)
    parser.add_argument("--invariance-questions", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--modes", default="no_context,oracle_context,retriever_context")
    parser.add_argument("--model", default="smollm2_135m")
    parser.add_argument(
        "--skip",
        default="vllm,llamacpp",
        help="engines to leave out: vllm,llamacpp,ctranslate2,packed or a row's label",
    )
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument(
        "--retrieval-only", action="store_true", help="measure BM25 again, keep the rows"
    )
    parser.add_argument(
        "--append", action="store_true", help="add these modes' rows to the results file"
    )
    args = parser.parse_args()
    if not (SQUAD / "corpus.jsonl").is_file():
        print(f"skipped: {SQUAD} is absent (only beside the project's own checkout)")
        return 0
    dataset = DatasetConfig(
        name="squad_dev",
        path=str(SQUAD / "questions.jsonl"),
        corpus=str(SQUAD / "corpus.jsonl"),
        limit=args.questions,
    )
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    output = args.output or ROOT / "bench" / "results" / "context_cpu.json"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        retrieval = retrieval_row(dataset, Path(tmp))
        print(json.dumps(retrieval), flush=True)
        if args.retrieval_only:
            kept = json.loads(output.read_text(encoding="utf-8"))
            write_json_atomic(output, {**kept, "retrieval": retrieval})
            print(f"wrote {output}")
            return 0
        for name in args.modes.split(","):
            cfg = config([f"model={args.model}", f"experiment_mode={name}"])
            model = section(ModelConfig, cfg["model"], "model")
            mode = section(ModeConfig, cfg["experiment_mode"], "experiment_mode")
            inference = section(InferenceConfig, cfg["inference"], "inference")
            fmt = PromptFormat.from_config(model.prompt, inference, mode)
            path = resolve_model(model).path
            tokenizer = load_tokenizer(path)
            records = examples_for(mode, dataset, Path(tmp))
            contexts = fit_contexts(tokenizer, records, mode)
            texts = [c.text for c in contexts] if contexts is not None else None
            prompts = encode_prompts(tokenizer, [r["question"] for r in records], fmt, texts)
            examples = [
                QAExample(r["question_id"], r["question"], tuple(r["answers"])) for r in records
            ]
            params = GenerationParams(
                max_new_tokens=args.max_new_tokens,
                stop=fmt.stop,
                shared_prefix=shared_prefix(tokenizer, fmt, prompts),
            )
            tokens = [len(p) for p in prompts]
            reference = None
            for label, factory in engines(model, path, tokenizer, params, skip, "cpu"):
                print(f"{name}: {label} ...", flush=True)
                answers, close, loaded = factory()
                try:
                    row = measure(answers, prompts, examples, args.invariance_questions, loaded)
                finally:
                    close()
                answered = row.pop("answers")
                reference = reference or answered
                row["same_answers_as_transformers_fp32"] = round(
                    sum(a == b for a, b in zip(answered, reference, strict=True)) / len(answered),
                    4,
                )
                row["prompt_tokens_mean"] = round(sum(tokens) / len(tokens), 1)
                row["questions"] = len(prompts)
                row["invariance_questions"] = args.invariance_questions
                rows.append({"mode": name, "engine": label, **row})
                print(json.dumps(rows[-1]), flush=True)
    for row in rows:
        fp32 = next(r for r in rows if r["mode"] == row["mode"] and r["engine"].endswith("fp32"))
        row["speed_vs_transformers_fp32"] = round(
            row["questions_per_s"] / fp32["questions_per_s"], 2
        )
        row["recall_minus_fp32"] = round(row["mean_token_recall"] - fp32["mean_token_recall"], 4)
    if args.append and output.is_file():
        kept = json.loads(output.read_text(encoding="utf-8"))
        fresh = {(r["mode"], r["engine"]) for r in rows}
        for r in kept["rows"]:
            r.setdefault("questions", kept.get("questions"))
            r.setdefault("invariance_questions", kept.get("invariance_questions"))
        rows = [r for r in kept["rows"] if (r["mode"], r["engine"]) not in fresh] + rows
    result = {
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "source": "../shared/data/squad_dev (the first questions; BM25 over all 5,033)",
        "model": args.model,
        "questions": "per row",
        "max_new_tokens": args.max_new_tokens,
        "cpu_threads": cpu_threads(),
        "retrieval": retrieval,
        "rows": rows,
        "environment": environment(ROOT),
    }
    write_json_atomic(output, result)
    print(table(rows))
    print(f"wrote {output}")
    return 0


def table(rows: list[dict]) -> str:
    lines = [
        "| mode | engine | prompt tokens | q/s | x fp32 | recall | - fp32 | identical 1/8/32 |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['engine']} | {r['prompt_tokens_mean']} | "
            f"{r['questions_per_s']} | {r['speed_vs_transformers_fp32']} | "
            f"{r['mean_token_recall']} | {r['recall_minus_fp32']:+.4f} | "
            f"{r['identical_at_1_8_32']:.0%} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

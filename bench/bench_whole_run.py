"""The whole process, model load included: `make run` with defaults against today's
transformers fp32 and against lm-evaluation-harness (HF backend, batch 32, fp32), on the same
NQ-open questions with the same chat template, system prompt and 24 new tokens.

    make bench          # after bench_inference.py; writes bench/results/whole_run_cpu.json

Each command runs ``--repeats`` times as a fresh process (the median wall time is quoted); the
answers of each are scored by the project's token recall, lm-eval's from its logged samples.
lm-eval lives in a venv of its own (``LM_EVAL_PYTHON``, made by `make bench`); it is skipped,
saying so, where that is absent. Questions: ../shared/data/nq_open_dev.jsonl.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from components.atomic import write_json_atomic  # noqa: E402
from components.dataset import load_qa_dataset  # noqa: E402
from components.inference.config import SYSTEM_PROMPT  # noqa: E402
from components.model_files import ModelConfig, resolve_model  # noqa: E402
from components.provenance import environment  # noqa: E402
from components.scoring import token_recall  # noqa: E402
from pipelines.config import compose, section, to_container  # noqa: E402

NQ_OPEN = ROOT.parent / "shared" / "data" / "nq_open_dev.jsonl"
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
LM_EVAL_TASK = """\
task: nq_open_bench
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{answer[0]}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: {tokens}
  do_sample: false
metric_list:
  - metric: exact_match
"""


def timed(command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return seconds


def make_run(label: str, extra: str, args, work: Path) -> dict:
    """`make run` as a user types it; the answers come from its results and predictions."""
    out = work / "".join(c if c.isalnum() else "_" for c in label)
    overrides = (
        f"dataset=nq_open dataset.path={NQ_OPEN} dataset.limit={args.questions} "
        f"inference.max_new_tokens={args.max_new_tokens} experiment.name=bench "
        f"experiment.output_dir={out} {extra}"
    )
    env = {**os.environ, **OFFLINE}
    times = [timed(["make", "-s", "run", f"ARGS={overrides}"], env) for _ in range(args.repeats)]
    results = json.loads((out / "bench" / "results.json").read_text())
    inf = results["inference"]
    return {
        "command": f'make run ARGS="{overrides.replace(str(out), "<dir>")}"',
        "engine": f"{inf['backend']} {inf['dtype']} (batch {inf['batch_size']})",
        "seconds": times,
        "median_s": round(statistics.median(times), 2),
        "model_load_s": round(results["timing"]["model_load_seconds"], 2),
        "questions_per_s_generating": round(results["throughput"]["questions_per_s"], 2),
        "mean_token_recall": round(results["token_recall"]["mean"], 4),
    }


def lm_eval(python: str, model_dir: str, examples, args, work: Path) -> dict:
    data = work / "lm_eval_questions.jsonl"
    with data.open("w") as fh:
        for e in examples:
            fh.write(json.dumps({"question": e.question, "answer": list(e.answers)}) + "\n")
    tasks = work / "lm_eval_tasks"
    tasks.mkdir(exist_ok=True)
    task = LM_EVAL_TASK.format(data=data, tokens=args.max_new_tokens)
    (tasks / "nq_open_bench.yaml").write_text(task)
    out = work / "lm_eval_out"
    command = [
        python, "-m", "lm_eval", "--model", "hf",
        "--model_args", f"pretrained={model_dir},dtype=float32",
        "--device", "cpu", "--batch_size", "32", "--tasks", "nq_open_bench",
        "--include_path", str(tasks), "--apply_chat_template",
        "--system_instruction", SYSTEM_PROMPT,
        "--output_path", str(out), "--log_samples",
    ]  # fmt: skip
    env = {**os.environ, **OFFLINE}
    times = [timed(command, env) for _ in range(args.repeats)]
    samples = sorted(out.rglob("samples_nq_open_bench_*.jsonl"))[-1]
    recalls = []
    for line in samples.read_text().splitlines():
        row = json.loads(line)
        text = row["filtered_resps"][0] if row.get("filtered_resps") else row["resps"][0][0]
        recalls.append(token_recall(text, row["doc"]["answer"]))
    scored = [r for r in recalls if r is not None]
    return {
        "command": "lm_eval --model hf --model_args pretrained=<model cache>,dtype=float32 "
        "--batch_size 32 --apply_chat_template --system_instruction <the same> "
        "--tasks nq_open_bench (generate_until, max_gen_toks "
        f"{args.max_new_tokens}, until newline)",
        "engine": "lm-evaluation-harness 0.4.13, HF transformers fp32 (batch 32)",
        "seconds": times,
        "median_s": round(statistics.median(times), 2),
        "mean_token_recall": round(statistics.fmean(scored), 4) if scored else None,
        "answers": len(recalls),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path, default=ROOT / "bench/results/whole_run_cpu.json")
    args = parser.parse_args()
    if not NQ_OPEN.is_file():
        print(f"skipped: {NQ_OPEN} is absent (only beside the project's own checkout)")
        return 0
    examples = load_qa_dataset(NQ_OPEN, args.questions).examples
    model = section(ModelConfig, to_container(compose([]))["model"], "model")
    model_dir = resolve_model(model).path
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench-whole-run-") as tmp:
        work = Path(tmp)
        fp32 = "inference.backend=transformers inference.dtype=float32"
        for label, extra in (("make run (defaults)", ""), ("make run transformers fp32", fp32)):
            print(f"{label} x{args.repeats} ...", flush=True)
            rows[label] = make_run(label, extra, args, work)
            print(json.dumps(rows[label]), flush=True)
        python = os.environ.get("LM_EVAL_PYTHON", "")
        if python and Path(python).is_file():
            print(f"lm-evaluation-harness x{args.repeats} ...", flush=True)
            rows["lm-eval"] = lm_eval(python, model_dir, examples, args, work)
            print(json.dumps(rows["lm-eval"]), flush=True)
        else:
            print("lm-eval: skipped (LM_EVAL_PYTHON is not set to a python; make bench sets it)")
    default = rows["make run (defaults)"]["median_s"]
    ratios = {label: round(row["median_s"] / default, 2) for label, row in rows.items()}
    result = {
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "questions": len(examples),
        "max_new_tokens": args.max_new_tokens,
        "repeats": args.repeats,
        "rows": rows,
        "times_slower_than_default": ratios,
        "environment": environment(ROOT),
    }
    write_json_atomic(args.output, result)
    print("| command | engine | whole process, median s | x default | recall |")
    print("| --- | --- | ---: | ---: | ---: |")
    for label, row in rows.items():
        print(
            f"| {label} | {row['engine']} | {row['median_s']} | {ratios[label]} | "
            f"{row['mean_token_recall']} |"
        )
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

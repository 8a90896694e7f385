"""What a large dataset costs the steps around generation: peak RSS and seconds of the
load step (with `dataset.limit=10`, and whole), the score step, the publish step (results
and the highlights a tracked run reports; the upload streams in 8 MiB parts and is left
out) and the inference step with every answer already in its checkpoint (every prompt
tokenized for the checkpoint key, the checkpoint read, the answers written in order), at
10k, 100k and 1M lines. Generation is replaced by a prepared generations file (each
prediction the first answer), so the numbers are those of reading, checking, tokenizing,
scoring and writing alone.

    make bench          # writes bench/results/scale_cpu.json, docs/images/scale_memory.png

Each measurement is a fresh process (its peak RSS is the kernel's ru_maxrss). Questions are
NQ-open's (../shared/data/nq_open_dev.jsonl), repeated with new ids to reach each size;
synthetic ones where that file is absent. Target (issue 27): at most 300 MB for 1M lines.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NQ_OPEN = ROOT.parent / "shared" / "data" / "nq_open_dev.jsonl"
SIZES = (10_000, 100_000, 1_000_000)
TARGET_MB = 300
STAGES = ("load_limit_10", "load_all", "score_all", "publish_all", "inference_resumed")
PREPARED = {"inference_resumed": "checkpoint"}  # a stage's unmeasured preparation

# One stage in a fresh interpreter; argv: stage, dataset, work folder.
STAGE = """
import dataclasses, json, sys, time
from pathlib import Path
from components.dataset import DatasetConfig
from components.inference.report import GenerationReport
from components.memory import MemoryMonitor
from components.modes import ModeConfig
from pipelines.executor import RunContext
from pipelines.stores import LocalStore
from pipelines.steps import inference_step, load_dataset_step, publish_step, score_step

stage, dataset, work = sys.argv[1], sys.argv[2], Path(sys.argv[3])
run = RunContext("bench", "bench", "now", work, LocalStore(work))
if stage == "publish_all":
    from pipelines.config import compose, to_container

    config = to_container(compose([f"dataset.path={dataset}"]))
    memory = work / "steps.memory.json"
    sampler = MemoryMonitor().start()
    sampler.stop()
    memory.write_text(json.dumps({"step": "bench", **sampler.report()}))
    generated = GenerationReport(
        str(work / "generations.jsonl"), "", 0, 0, 0, 0, 0, 0, 0.0, 0.0, "bench", "local",
        None, "ctranslate2", "bench", "cpu", "int8", 8, "bench", False, {},
    ).to_dict()
    run.report = lambda **what: None  # a tracked run: its highlights are read too
started = time.perf_counter()
if stage.startswith("load"):
    limit = 10 if stage == "load_limit_10" else None
    config = DatasetConfig(name="bench", path=dataset, limit=limit)
    out = load_dataset_step(config, ModeConfig(), run)
    assert out["lines_in_file"] > 0
    (work / f"{stage}.json").write_text(json.dumps(out))
elif stage == "score_all":
    mode = dataclasses.asdict(ModeConfig())
    out = score_step(str(work / "examples.jsonl"), str(work / "generations.jsonl"), mode, run)
    (work / "score_all.json").write_text(json.dumps(out))
elif stage in ("checkpoint", "inference_resumed"):
    import shutil
    from components.atomic import JsonLines
    from components.inference.config import InferenceConfig
    from components.inference.plan import plan_inference
    from components.model_files import ModelConfig
    from pipelines.config import compose, section, to_container

    config = to_container(compose([f"dataset.path={dataset}"]))
    model = section(ModelConfig, config["model"], "model")
    inference = section(InferenceConfig, config["inference"], "inference")
    examples = str(work / "examples.jsonl")
    if stage == "checkpoint":  # every answer saved under the key the step will compute
        key = plan_inference(model, inference, JsonLines(examples)).key
        shutil.copy(work / "generations.jsonl", work / f"checkpoint-{key}.jsonl")
    else:
        out = inference_step(model, inference, ModeConfig(), examples, run)
        assert out["resumed"] == out["examples"] and out["generated"] == 0, out
else:
    loaded = json.loads((work / "load_all.json").read_text())
    scores = json.loads((work / "score_all.json").read_text())
    out = publish_step(config, loaded, [], generated, scores, scores["predictions_path"],
                       [str(memory)], [], run)
    assert out["results"]["counts"]["examples"] == loaded["count"]
print(time.perf_counter() - started)
"""


def questions() -> list[dict]:
    if NQ_OPEN.is_file():
        with NQ_OPEN.open(encoding="utf-8") as fh:
            return [json.loads(line) for line in fh if line.strip()]
    return [{"question": f"who wrote book {i}?", "answer": [f"author {i}"]} for i in range(3610)]


def write_inputs(folder: Path, lines: int, pool: list[dict]) -> Path:
    dataset = folder / "qa_pairs.jsonl"
    with (
        dataset.open("w", encoding="utf-8") as qa,
        (folder / "generations.jsonl").open("w", encoding="utf-8") as gen,
    ):
        for i in range(lines):
            source = pool[i % len(pool)]
            qid = f"q{i}"
            record = {
                "question_id": qid,
                "question": source["question"],
                "answer": source["answer"],
            }
            qa.write(json.dumps(record, ensure_ascii=False) + "\n")
            generation = {
                "question_id": qid,
                "prediction": source["answer"][0],
                "prompt_tokens": 30,
                "output_tokens": 8,
            }
            gen.write(json.dumps(generation, ensure_ascii=False) + "\n")
    return dataset


def measure(stage: str, dataset: Path, work: Path) -> dict:
    """Run by ``measure_alone``'s fresh parent: the children's ru_maxrss is this stage's."""
    proc = subprocess.run(
        [sys.executable, "-c", STAGE, stage, str(dataset), str(work)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{stage}: {proc.stderr[-2000:]}")
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    seconds = float(proc.stdout.strip().splitlines()[-1])
    return {"peak_rss_mb": round(peak_kb / 1024, 1), "seconds": round(seconds, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=list(SIZES))
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "scale_cpu.json"))
    args = parser.parse_args()
    pool = questions()
    rows = []
    for lines in sorted(args.sizes):
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            dataset = write_inputs(folder, lines, pool)
            row = {"lines": lines, "dataset_mb": round(dataset.stat().st_size / 2**20, 1)}
            for stage in STAGES:
                if stage in PREPARED:
                    measure_alone(PREPARED[stage], dataset, folder)
                row[stage] = measure_alone(stage, dataset, folder)
                print(lines, stage, row[stage], flush=True)
            rows.append(row)
    result = {
        "date": dt.date.today().isoformat(),
        "questions": "<shared>/data/nq_open_dev.jsonl" if NQ_OPEN.is_file() else "synthetic",
        "target_peak_rss_mb_at_1m": TARGET_MB,
        "rows": rows,
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    plot(result, ROOT / "docs" / "images" / "scale_memory.png")
    print(f"wrote {args.out} and docs/images/scale_memory.png")


def plot(result: dict, path: Path) -> None:
    """Peak RSS and seconds against lines, one line per stage, the target drawn in."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    lines = [r["lines"] for r in rows]
    fig, (rss, secs) = plt.subplots(1, 2, figsize=(10, 4))
    for stage in STAGES:
        rss.plot(lines, [r[stage]["peak_rss_mb"] for r in rows], marker="o", label=stage)
        secs.plot(lines, [r[stage]["seconds"] for r in rows], marker="o", label=stage)
    rss.axhline(result["target_peak_rss_mb_at_1m"], color="grey", linestyle="--", label="target")
    for axis, label in ((rss, "peak RSS (MB)"), (secs, "seconds")):
        axis.set_xscale("log")
        axis.set_xlabel("lines in qa_pairs.jsonl")
        axis.set_ylabel(label)
        axis.legend()
    secs.set_yscale("log")
    fig.suptitle(f"the steps around generation by dataset size ({result['date']}, 2 CPU cores)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def measure_alone(stage: str, dataset: Path, work: Path) -> dict:
    """Through a fresh parent too, so ru_maxrss is this stage's own peak."""
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); "
        "from bench.bench_scale import measure; from pathlib import Path; "
        "print(json.dumps(measure(sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]))))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(ROOT), stage, str(dataset), str(work)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{stage}: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()

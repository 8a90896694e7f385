"""The pipeline's steps: load dataset -> [retrieve] -> inference (or shards + merge) -> score
-> publish.

Each is a thin adapter: the typed config section it reads (the executor builds it), paths and
its parents' outputs in; the logic of components/ called; its files written into the run's
folder; small JSON-able outputs back. The executor (pipelines/executor.py) runs them the same
way on one machine and on ClearML agents; nothing here imports torch until a step needs it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import yaml

from components.atomic import (
    JsonLines,
    atomic_writer,
    file_info,
    read_json_array,
    read_jsonl,
    sha256_file,
    write_json_atomic,
    write_jsonl_atomic,
    write_text_atomic,
)
from components.checkpoint import short_digest
from components.contexts import (
    load_passages,
    load_with_passages,
)
from components.dataset import DatasetConfig
from components.inference.config import InferenceConfig
from components.inference.report import GenerationReport
from components.inference.run import generate_answers, shards_in_order
from components.leaderboard import leaderboard_row, write_leaderboard
from components.memory import merge_reports
from components.model_files import ModelConfig, default_cache_dir
from components.modes import ModeConfig
from components.predictions import highlights, in_order, write_predictions
from components.provenance import code_identity, environment, utc_now
from components.results import build_results
from components.retrieval import create_retriever, index_key
from components.retrieval.bm25 import MARKER as INDEX_MARKER
from components.retrieval.run import retrieve_all
from components.run_upload import publish_run, run_folder_files
from components.secrets import redact
from components.stats import bootstrap_options
from components.storage import ARTIFACT_NAMES, StorageError
from pipelines.config import PROJECT_ROOT
from pipelines.executor import RunContext
from pipelines.inputs import fetched_dataset, fetched_model
from pipelines.stores import share_folder, shared_folder

MAX_SKIPPED_SHOWN = 20


def load_dataset_step(dataset: DatasetConfig, mode: ModeConfig, run: RunContext) -> dict[str, Any]:
    """Validates the whole file (and its corpus), then writes the examples this run uses (in
    an oracle mode with their passages). With S3, the examples of a file's content (its
    sha256, hashed here where the file is read), corpus, limit and mode are reused from the
    cache, if they are still there and intact."""
    reference = dataset.path
    dataset, inputs = fetched_dataset(dataset, run)
    examples_path = run.dir / "examples.jsonl"
    key = None
    if run.store.caching and Path(dataset.path).is_file():
        key = short_digest(
            {
                "sha256": sha256_file(dataset.path),
                "corpus": sha256_file(dataset.corpus) if dataset.corpus else None,
                "limit": dataset.limit,
                "on_error": dataset.on_error,
                "passages": [mode.name, mode.max_context_tokens] if mode.needs_gold else None,
            }
        )
        hit = run.store.cached("examples", key, run.dir / "cache")
        if hit and {"examples.jsonl", "meta.json"} <= set(hit):
            meta = json.loads(hit["meta.json"].read_text(encoding="utf-8"))
            hit["examples.jsonl"].replace(examples_path)
            print(f"examples of {reference} (sha256 {meta['dataset_sha256'][:12]}) from the cache")
            paths = {"examples_path": str(examples_path), "dataset_path": reference}
            return {**meta, **paths, "input": inputs, "cached": True}
    with atomic_writer(examples_path) as fh:  # nothing is left of it when a line is bad
        write = fh.write
        loaded, corpus = load_with_passages(
            dataset, mode, lambda r: write(json.dumps(r, ensure_ascii=False) + "\n")
        )
    for problem in loaded.skipped[:MAX_SKIPPED_SHOWN]:
        print(f"skipped {problem}")
    if len(loaded.skipped) > MAX_SKIPPED_SHOWN:
        more = len(loaded.skipped) - MAX_SKIPPED_SHOWN
        print(f"skipped {more} more lines (all listed in results.json)")
    if loaded.noted:  # accepted as they are, said once: numbers read as answer text
        more = f" (and {loaded.noted - 1} more lines)" if loaded.noted > 1 else ""
        print(f"note: {loaded.notes[0]}{more}")
    meta = {
        "dataset_sha256": loaded.sha256,
        "corpus": corpus.meta() if corpus else None,
        "count": loaded.count,
        "lines_in_file": loaded.lines_in_file,
        "skipped_lines": [
            {"line": p.line, "field": p.field, "reason": p.message} for p in loaded.skipped
        ],
    }
    if key is not None:
        meta_path = write_json_atomic(run.dir / "cache" / "meta.json", meta)
        run.store.cache("examples", key, {"examples.jsonl": examples_path, "meta.json": meta_path})
    paths = {"examples_path": str(examples_path), "dataset_path": reference}
    return {**meta, **paths, "input": inputs, "cached": False}


def retrieve_step(
    mode: ModeConfig, dataset: DatasetConfig, examples_path: str, run: RunContext
) -> dict[str, Any]:
    """Each example's ``top_k`` passages of the corpus, scoring above ``min_score``. The
    index is built once per corpus and settings: kept in the local cache and, with S3, in
    the store's cache for the agents of later runs."""
    corpus = load_passages(fetched_dataset(dataset, run)[0])
    cache_dir = default_cache_dir() / "retrieval"
    key = index_key(mode.retriever, corpus)
    fetched = key is not None and shared_folder(
        run.store, "index", key, cache_dir / key, INDEX_MARKER
    )
    retriever = create_retriever(mode.retriever, corpus, cache_dir)
    if key is not None and not fetched:
        share_folder(run.store, "index", key, cache_dir / key)
    if key is None:
        index_from = "none"
    else:
        index_from = "built" if retriever.build_seconds else ("store" if fetched else "cache")
    records, retrieval = retrieve_all(
        retriever, corpus, list(read_jsonl(examples_path)), mode, index_from
    )
    path = write_jsonl_atomic(run.dir / "retrieved.jsonl", records)
    return {"examples_path": str(path), "retrieval": retrieval}


def inference_step(
    model: ModelConfig,
    inference: InferenceConfig,
    mode: ModeConfig,
    examples_path: str,
    run: RunContext,
    shard: int = 0,
    shards: int = 1,
) -> dict[str, Any]:
    """One answer per example (of shard ``shard`` of ``shards``), resuming from the run's
    checkpoint: answers already there are not generated again."""
    suffix = f".shard{shard}" if shards > 1 else ""
    report = generate_answers(
        model,
        inference,
        JsonLines(examples_path),
        checkpoint_for=run.store.checkpoint,
        generations_path=run.dir / f"generations{suffix}.jsonl",
        environment=environment(PROJECT_ROOT),
        shard=shard,
        shards=shards,
        batch_cap=run.batch_cap,
        mode=mode,
        fetched=fetched_model(model, run),
    )
    return report.to_dict()


def merge_shards_step(
    examples_path: str,
    shard_outputs: list[dict[str, Any]],
    generations_paths: list[str],
    run: RunContext,
) -> dict[str, Any]:
    """Joins the shards' answers in dataset order, checking every example is answered
    exactly once."""
    reports = [GenerationReport.from_dict(o) for o in shard_outputs]
    pairs = sorted(zip(reports, generations_paths, strict=True), key=lambda p: p[0].shard)
    merged = shards_in_order(examples_path, [(r.shard, path) for r, path in pairs])
    generations_path = write_jsonl_atomic(run.dir / "generations.jsonl", merged)
    return GenerationReport.merged(reports, str(generations_path)).to_dict()


def score_step(
    examples_path: str, generations_path: str, mode: dict[str, Any], run: RunContext
) -> dict[str, Any]:
    """Scores every prediction and writes predictions.json (one record per example, with
    the passages it was shown), streaming both files."""
    generations = in_order(read_jsonl(generations_path), generations_path)
    return write_predictions(
        read_jsonl(examples_path), generations, run.dir / "predictions.json", mode
    )


def publish_step(
    config: dict[str, Any],
    dataset: dict[str, Any],
    retrieval: list[dict[str, Any]],
    inference: dict[str, Any],
    scores: dict[str, Any],
    predictions_path: str,
    memory_paths: list[str],
    ran: list[dict[str, Any]],
    run: RunContext,
) -> dict[str, Any]:
    """The run's three files in its folder (results.json last, with the size and sha256 of
    the others), uploaded to S3 when configured (results.json last again), and reported to
    ClearML when the run has a task."""
    predictions_file = run.dir / "predictions.json"
    if Path(predictions_path).resolve() != predictions_file.resolve():
        shutil.copyfile(predictions_path, predictions_file)
    memory = merge_reports([json.loads(Path(p).read_text(encoding="utf-8")) for p in memory_paths])
    memory_file = write_json_atomic(run.dir / "memory_usage.json", memory)
    config_text = yaml.safe_dump(redact(config), sort_keys=False, allow_unicode=True)
    write_text_atomic(run.dir / "config.yaml", config_text)
    artifacts = {p.name: file_info(p) for p in (predictions_file, memory_file)}
    meta = {
        "experiment": run.experiment,
        "run_id": run.run_id,
        "started_at": run.started_at,
        "finished_at": utc_now(),
        "memory": memory,
        # This step's own entry: the executor records the others' when they finish.
        "steps": {
            **{r["step"]: r for r in ran},
            "publish": {"step": "publish", "code": code_identity(PROJECT_ROOT)},
        },
    }
    results = build_results(
        config, dataset, inference, scores, meta, artifacts, retrieval[0] if retrieval else None
    )
    if run.cleanup_local and run.storage is not None:
        # What publish_run deletes here once every upload verified (the rest of the folder
        # under <run key>/files/); the copy of this file in S3 means it happened.
        files = f"{run.storage.run_key(run.experiment, run.run_id)}/files/"
        results["local_cleanup"] = {
            "deleted_after_verified_upload": sorted([*ARTIFACT_NAMES, *run_folder_files(run.dir)]),
            "files": run.storage.url(files),
        }
    results_path = write_json_atomic(run.dir / "results.json", results)
    # Read before publish_run, which may delete the local copy; only a reporter needs it.
    shown = highlights(read_json_array(predictions_file)) if run.report is not None else None
    uploaded: dict[str, dict[str, Any]] = {}
    if run.storage is not None:
        uploaded = publish_run(
            run.storage, run.dir, run.experiment, run.run_id, cleanup_local=run.cleanup_local
        )
    if run.report is not None:
        links = uploaded or {
            ARTIFACT_NAMES[name]: info
            for name, info in {**artifacts, "results.json": file_info(results_path)}.items()
        }
        run.report(results=results, highlights=shown, artifacts=links)
    return {
        "results": results,
        "results_path": str(results_path),
        "artifacts": artifacts,
        "uploaded": uploaded,
    }


def leaderboard_step(
    runs: list[dict[str, Any]], sweep: dict[str, Any], name: str, run: RunContext
) -> dict[str, Any]:
    """A ClearML sweep's summary: each finished pipeline's results from S3, one row each;
    pipelines without results (failed, stopped) are listed, not dropped."""
    assert run.storage is not None, "the controller checks storage.endpoint"
    stats = bootstrap_options(sweep)
    rows, missing = [], []
    for entry in runs:
        key = run.storage.run_key(entry["experiment"], entry["id"])
        names = ("results.json", "predictions.json")
        try:
            files = run.storage.fetch_artifacts(key, run.dir / "runs" / entry["id"], names)
        except StorageError as exc:
            missing.append({**entry, "error": str(exc)})
            continue
        results, predictions = (json.loads(files[n].read_text("utf-8")) for n in names)
        rows.append(leaderboard_row(results, predictions, reused=entry["reused"], **stats))
    if not rows:
        raise RuntimeError(f"no pipeline of sweep {name} has results: {missing}")
    paths = write_leaderboard(rows, run.dir, f"sweep {name}", stats["confidence"])
    if run.report is not None:
        run.report(leaderboard={"rows": rows, "missing": missing, "paths": paths}, runs=runs)
    return {
        "rows": rows,
        "missing": missing,
        **{f"{kind}_path": str(path) for kind, path in paths.items()},
    }

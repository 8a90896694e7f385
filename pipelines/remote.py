"""What each ClearML step runs on its agent: fetch inputs from S3, run the step function
from the shared definition, store its files in S3, hand on a small JSON string.

Steps never pass data as parameters: the JSON carries the settled config, counts, metrics
and the S3 URLs of the files (examples, generations, predictions, memory samples).
Intermediate files go to ``<prefix>/<experiment>.<pipeline id>/steps/<step>/<file>``.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from components.artifacts import write_json_atomic
from components.memory import IDLE, MemoryMonitor, merge_gpu_peaks, stage
from components.results import utc_now
from components.storage import StorageSettings, client, fetch_object, upload_verified
from pipelines.config import require_storage, settle_config, validate
from pipelines.definition import MERGE, SHARD_PREFIX, resolve_inputs, steps_for

log = logging.getLogger(__name__)


def current_ids() -> tuple[Any, str]:
    """(this step's task, the pipeline's id): the pipeline id names the run in S3."""
    from clearml import Task

    task = Task.current_task()
    parent = getattr(task, "parent", None) if task is not None else None
    return task, str(parent or (task.id if task is not None else "local"))


def _storage(cfg: dict[str, Any]) -> StorageSettings:
    return require_storage(
        cfg.get("storage") or {},
        "pipeline steps exchange files through S3; set it "
        "(e.g. storage.endpoint=http://minio:9000)",
    )


def _download(settings: StorageSettings, url: str, dest: Path) -> Path:
    from urllib.parse import urlparse

    bucket, _, key = urlparse(url).path.lstrip("/").partition("/")
    return fetch_object(client(settings), bucket, key, dest / Path(key).name)


def _run(name: str, state: dict[str, Any]) -> str:
    """Runs one step of the shared definition with ``state`` (config + parent outputs)."""
    cfg = state["config"]
    settings = _storage(cfg)
    task, _ = current_ids()
    pipeline_id = state["meta"]["run_id"]  # this pipeline's id: every file under one prefix
    experiment = str(cfg["experiment"]["name"])
    work = Path(tempfile.mkdtemp(prefix=f"slm-{name}-"))
    specs = {spec.name: spec for spec in steps_for(cfg)}

    outputs: dict[str, dict[str, Any]] = {}
    for step, out in state["outputs"].items():
        local = dict(out)
        for field in specs[step].files:
            if str(out.get(field, "")).startswith("s3://"):
                local[field] = str(_download(settings, out[field], work))
        outputs[step] = local

    meta = dict(state["meta"])
    meta.update(experiment=experiment)
    if name == "publish":
        meta.update(_merge_memory(settings, state, work), finished_at=utc_now())
    run = {"dir": str(work), "cache_dir": None, "meta": meta}

    spec = specs[name]
    monitor = MemoryMonitor().start()
    try:
        with stage(name):
            result = spec.function(**resolve_inputs(spec, cfg, outputs, run))
    finally:
        monitor.stop()

    base = _step_key(settings, experiment, pipeline_id, name)
    s3 = client(settings)
    for field in spec.files:
        path = Path(result[field])
        result[field] = upload_verified(s3, settings, path, f"{base}/{path.name}")["url"]
    memory_file = write_json_atomic(work / f"memory_{name}.json", monitor.report())
    memory_url = upload_verified(s3, settings, memory_file, f"{base}/{memory_file.name}")["url"]

    if name == "publish" and task is not None:
        _report(task, work, result)
    new_state = {
        "config": cfg,
        "meta": meta,
        "outputs": {**state["outputs"], name: result},
        "memory": {**state.get("memory", {}), name: memory_url},
    }
    text = json.dumps(new_state, ensure_ascii=False)
    if name.startswith(SHARD_PREFIX):
        # Shards run side by side: the merge step reads each one's state from here.
        state_file = work / "state.json"
        state_file.write_text(text, encoding="utf-8")
        upload_verified(s3, settings, state_file, f"{base}/state.json")
    return text


def _step_key(settings: StorageSettings, experiment: str, pipeline_id: str, step: str) -> str:
    return f"{settings.run_key(experiment, pipeline_id)}/steps/{step}"


def _merge_memory(settings: StorageSettings, state: dict[str, Any], work: Path) -> dict[str, Any]:
    """One memory_usage.json for the whole run, from each step's own sampler."""
    merged: dict[str, Any] = {"steps": {}, "stages": {}, "samples": [], "peak_gpu_bytes": {}}
    for step, url in state.get("memory", {}).items():
        report = json.loads(_download(settings, url, work).read_text(encoding="utf-8"))
        merged["steps"][step] = {"sampler_overhead_fraction": report["sampler_overhead_fraction"]}
        for stage_name, data in report["stages"].items():
            if stage_name != IDLE:
                _add_stage(merged["stages"], stage_name, data)
        merged["samples"].extend({**s, "step": step} for s in report["samples"])
        merge_gpu_peaks(merged["peak_gpu_bytes"], report["peak_gpu_bytes"])
    merged["peak_rss_bytes"] = max(
        (s["peak_rss_bytes"] for s in merged["stages"].values()), default=0
    )
    merged["sampler_overhead_fraction"] = max(
        (s["sampler_overhead_fraction"] for s in merged["steps"].values()), default=0.0
    )
    path = write_json_atomic(work / "memory_usage.json", merged)
    return {
        "memory": merged,
        "memory_path": str(path),
        "stage_seconds": {k: v["seconds"] for k, v in merged["stages"].items()},
    }


def _add_stage(stages: dict[str, Any], name: str, data: dict[str, Any]) -> None:
    """Shards each time their own model_load and generate: seconds add up, peaks don't."""
    if name not in stages:
        stages[name] = {**data, "peak_gpu_bytes": dict(data["peak_gpu_bytes"])}
        return
    stage = stages[name]
    stage["seconds"] += data["seconds"]
    stage["peak_rss_bytes"] = max(stage["peak_rss_bytes"], data["peak_rss_bytes"])
    merge_gpu_peaks(stage["peak_gpu_bytes"], data["peak_gpu_bytes"])


def _report(task: Any, work: Path, published: dict[str, Any]) -> None:
    from pipelines.clearml_report import report_results

    results = json.loads(Path(published["results_path"]).read_text(encoding="utf-8"))
    predictions = json.loads((work / "predictions.json").read_text(encoding="utf-8"))
    report_results(task, results, predictions, published["uploaded"])


def first_step(config_json: str, knobs: dict[str, Any], dataset_sha256: str = "") -> str:
    """The load-dataset step: settles the config from the pipeline's parameters, checks it,
    then loads. ``dataset_sha256`` is only part of the cache key (see the pipeline)."""
    from components.results import environment
    from pipelines.config import PROJECT_ROOT

    del dataset_sha256
    cfg = settle_config(json.loads(config_json), knobs)
    validate(cfg)
    meta = {
        "started_at": utc_now(),
        "environment": environment(PROJECT_ROOT),
        "run_id": current_ids()[1],
    }
    return _run("load_dataset", {"config": cfg, "meta": meta, "outputs": {}})


def _own_run_id(state: dict[str, Any]) -> dict[str, Any]:
    """A cached load step hands on the run id of the pipeline that first ran it; every later
    step files its outputs under its own pipeline's id instead."""
    task, pipeline_id = current_ids()
    if task is not None and getattr(task, "parent", None):
        state["meta"]["run_id"] = pipeline_id
    return state


def next_step(name: str, previous: str) -> str:
    """Any later step: its parent's JSON string in, its own out."""
    return _run(name, _own_run_id(json.loads(previous)))


def merge_step(previous: str) -> str:
    """The merge after N parallel shard steps: ``previous`` is the load step's state; each
    shard's state (outputs, memory) is read from S3, where the shard left it."""
    state = _own_run_id(json.loads(previous))
    cfg = state["config"]
    settings = _storage(cfg)
    work = Path(tempfile.mkdtemp(prefix="slm-merge-"))
    experiment, pipeline_id = str(cfg["experiment"]["name"]), state["meta"]["run_id"]
    shards = [s.name for s in steps_for(cfg) if s.name.startswith(SHARD_PREFIX)]
    for name in shards:
        url = settings.url(f"{_step_key(settings, experiment, pipeline_id, name)}/state.json")
        shard_state = json.loads(_download(settings, url, work / name).read_text("utf-8"))
        state["outputs"][name] = shard_state["outputs"][name]
        state["memory"][name] = shard_state["memory"][name]
    return _run(MERGE, state)

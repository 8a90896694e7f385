"""The pipeline on one machine: every step of the definition, in order, in this process."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from components.backends.pool import keep_loaded
from components.inference.engine import GenerationOutOfMemory
from components.inputs import is_remote
from components.provenance import utc_now
from components.results import config_fingerprint, fingerprint_parts
from components.storage import S3, safe_name
from pipelines.config import validate
from pipelines.dag import StepSpec, steps_for
from pipelines.executor import Reporter, RunContext, execute
from pipelines.stores import LocalStore

log = logging.getLogger(__name__)


def run_dir_of(cfg: dict[str, Any]) -> Path:
    """``<output_dir>/<experiment>``; the name never makes a path out of output_dir."""
    return Path(cfg["experiment"]["output_dir"]) / safe_name(str(cfg["experiment"]["name"]))


def own_folder(cfg: dict[str, Any]) -> Path:
    """The run's folder: ``<output_dir>/<experiment>``, unless that holds a finished run of
    another configuration or dataset, which is never replaced: then the first
    ``<experiment>-N`` that holds none (or this same configuration's), said on the console."""
    base = run_dir_of(cfg)
    folder, n = base, 1
    while (why := _other_run(folder, cfg)) is not None:
        n += 1
        print(f"{folder} holds a finished run of another configuration ({why}); ", end="")
        folder = base.with_name(f"{base.name}-{n}")
        print(f"this run goes to {folder}", flush=True)
    return folder


def _other_run(folder: Path, cfg: dict[str, Any]) -> str | None:
    """What differs between ``cfg`` and the finished run in ``folder``; None where there is
    none (no finished run, an unreadable one, or the same configuration and dataset)."""
    try:
        results = json.loads((folder / "results.json").read_text(encoding="utf-8"))
        recorded = results["config"]
        if config_fingerprint(recorded) == config_fingerprint(cfg):
            # The same file with new content (lines fixed, a sweep's refresh) is the same
            # run again; another file is another run.
            was, now = str(results["dataset"]["path"]), str(cfg["dataset"]["path"])
            if not (is_remote(was) or is_remote(now)):
                was, now = str(Path(was).resolve()), str(Path(now).resolve())
            return None if was == now else "dataset.path: another file"
        was, now = _flat(fingerprint_parts(recorded)), _flat(fingerprint_parts(cfg))
        changed = [f"{k}: {was.get(k)!r} -> {now.get(k)!r}" for k in sorted({*was, *now})
                   if was.get(k) != now.get(k)]  # fmt: skip
        return ", ".join(changed[:3]) + (" ..." if len(changed) > 3 else "")
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix.rstrip("."): tree}
    return {k: v for key, sub in tree.items() for k, v in _flat(sub, f"{prefix}{key}.").items()}


class RunFolderInUse(RuntimeError):
    """Another run writes this folder now: two would mix checkpoints and artifacts."""


@contextlib.contextmanager
def one_run_per_folder(run_dir: Path) -> Iterator[None]:
    """Held for a whole run: a second run with the same folder (the same name, or one that
    ``safe_name`` folds into it) stops at once. The lock lies beside the folder, so nothing
    is written in it yet; the kernel drops it when its process dies, and a run that ends
    removes it."""
    lock = run_dir.with_name(f".{run_dir.name}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fh = lock.open("a+", encoding="utf-8")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise RunFolderInUse(
                f"{run_dir}: another run is writing this folder ({holder}); wait for it to "
                "finish, or give this run its own experiment.name=..."
            ) from None
        with contextlib.suppress(FileNotFoundError):
            if os.stat(lock).st_ino == os.fstat(fh.fileno()).st_ino:
                break
        fh.close()  # its holder removed it as this run opened it: lock the new one
    try:
        fh.truncate(0)
        fh.write(f"pid {os.getpid()} since {utc_now()}\n")
        fh.flush()
        yield
    finally:
        lock.unlink(missing_ok=True)
        fh.close()


def execute_with_smaller_batches(
    spec: StepSpec, cfg: dict[str, Any], parents: dict[str, Any], context: RunContext
) -> dict[str, Any]:
    """A step that runs out of device memory is run again with half the batch, resuming from
    its checkpoint, as a ClearML retry does; a batch of one that does not fit is final."""
    while True:
        try:
            return execute(spec, cfg, parents, context)
        except GenerationOutOfMemory as exc:
            if exc.smaller_batch is None:
                raise
            context.batch_cap = exc.smaller_batch
            log.warning(
                "step %s ran out of memory at batch size %d; again with %d",
                spec.name,
                exc.batch_size,
                context.batch_cap,
            )


def run_local(
    cfg: dict[str, Any],
    *,
    run_id: str | None = None,
    report: Reporter | None = None,
) -> dict[str, dict[str, Any]]:
    """Executes every step; returns each step's outputs. Nothing is written to the run
    folder before the config (and the dataset file's existence) has been checked. Where the
    run goes to a folder of its own (``own_folder``), ``cfg``'s experiment name says so."""
    given, cfg = cfg, validate(cfg)
    run_dir = own_folder(cfg)
    if run_dir != run_dir_of(cfg):
        cfg["experiment"]["name"] = given["experiment"]["name"] = run_dir.name
    context = RunContext(
        experiment=run_dir.name,
        run_id=run_id or uuid.uuid4().hex[:12],
        started_at=utc_now(),
        dir=run_dir,
        store=LocalStore(run_dir),
        storage=S3.from_config(cfg["storage"]),
        cleanup_local=cfg["experiment"]["cleanup_local_artifacts"],
        report=report,
    )
    steps = steps_for(cfg)
    # Local shards run one after another on one loaded model; a lone run frees it at once.
    keep = keep_loaded() if cfg["inference"]["shards"] > 1 else contextlib.nullcontext()
    outputs: dict[str, dict[str, Any]] = {}
    new_folder = not run_dir.exists()
    with one_run_per_folder(run_dir), keep:
        try:
            for spec in steps:
                log.info("step %s", spec.name)
                parents = {name: outputs[name] for name in spec.parents}
                outputs[spec.name] = execute_with_smaller_batches(spec, cfg, parents, context)
        except BaseException:
            if new_folder and not _holds_answers(run_dir):  # a model that failed to load
                shutil.rmtree(run_dir, ignore_errors=True)
            raise
        # The answers are in predictions.json now; a checkpoint is for a run that did not
        # finish, and kept it would turn the next `make run` into a replay with no speed.
        for out in outputs.values():
            if out.get("checkpoint"):
                Path(out["checkpoint"]).unlink(missing_ok=True)
    return outputs


def _holds_answers(run_dir: Path) -> bool:
    """Whether a failed run saved answers worth resuming from (its checkpoint)."""
    return any(p.stat().st_size for p in run_dir.glob("checkpoint-*.jsonl"))

"""`make sweep`: every model x dataset (x context mode), one after another in this process,
then a leaderboard.

    make sweep MODELS=smollm2_135m,gemma3_270m DATASETS=sample,nq_open ARGS="dataset.limit=20"
    make sweep MODELS=smollm2_135m DATASETS=sample_passages MODES=no_context,oracle_context

Every combination is composed and checked before anything runs. Combinations run model by
model, so each model is loaded once for all its datasets. A combination whose results.json
exists for the same config fingerprint and dataset sha256 is reused, not recomputed. A
failed combination is reported and the others still run.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from components.atomic import sha256_file, write_json_atomic
from components.backends.pool import keep_loaded
from components.inference.config import InferenceConfig
from components.inference.plan import resolve_execution
from components.leaderboard import leaderboard_row, sort_rows, write_leaderboard
from components.model_files import (
    ModelConfig,
    ModelFilesError,
    loaded_weights_digest,
    resolve_model,
    weights_digest,
)
from components.modes import ModeConfig
from components.results import config_fingerprint
from components.stats import bootstrap_options
from components.storage import StorageError, safe_name
from pipelines.compare import context_reports
from pipelines.config import ConfigError, compose, group_choices, section, to_container, validate
from pipelines.local import run_dir_of, run_local


@dataclass
class Combination:
    model: str
    dataset: str
    cfg: dict[str, Any]  # resolved and checked
    node: DictConfig  # as composed (a ClearML sweep attaches it with its interpolations)

    @property
    def mode(self) -> str:
        return self.cfg["experiment_mode"]["name"]

    @property
    def label(self) -> str:
        """``model x dataset``, then ``x mode`` for a context mode."""
        base = f"{self.model} x {self.dataset}"
        return base if self.mode == "no_context" else f"{base} x {self.mode}"

    @property
    def entry(self) -> dict[str, str]:
        """What a sweep's summary lists of the combination."""
        return {"model": self.model, "dataset": self.dataset, "mode": self.mode}

    @property
    def run_dir(self) -> Path:
        return run_dir_of(self.cfg)


def split_names(value: list[str], group: str) -> list[str]:
    """Config group names, checked, duplicates dropped; an item may itself be "a,b" or "a b"."""
    text = ",".join(map(str, value))
    names = [n.strip() for n in text.replace(" ", ",").split(",") if n.strip()]
    if not names:
        raise ConfigError(f"{group}: name at least one (e.g. {group.upper()}=a,b)")
    choices = group_choices(group)
    unknown = [n for n in names if n not in choices]
    if unknown:
        raise ConfigError(f"{group}: unknown {', '.join(unknown)}; one of {', '.join(choices)}")
    return list(dict.fromkeys(names))


def sweep_modes(names: list[str]) -> list[str | None]:
    """``sweep.modes`` checked; none named: each combination's configured mode."""
    return list(split_names(names, "experiment_mode")) if names else [None]


def plan(
    models: list[str],
    datasets: list[str],
    overrides: list[str],
    check_paths: bool = True,
    modes: list[str | None] | None = None,
) -> list[Combination]:
    """Model-major order (one model load per model); fails before any run on a bad config."""
    combos = []
    for model in models:
        for dataset in datasets:
            for mode in modes or [None]:
                chosen = [f"experiment_mode={mode}"] if mode else []
                try:
                    node = compose([f"model={model}", f"dataset={dataset}", *chosen, *overrides])
                    cfg = validate(to_container(node), require_dataset=check_paths)
                except ConfigError as exc:
                    where = f"{model} x {dataset}" + (f" x {mode}" if mode else "")
                    raise ConfigError(f"{where}: {exc}") from exc
                combos.append(Combination(model, dataset, cfg, node))
    dirs = [c.run_dir for c in combos]
    if len(set(dirs)) != len(dirs):
        raise ConfigError(
            "experiment.name: the combinations share a run folder; leave the default "
            "(${model.name}_${dataset.name}_<mode>) or put every name in yours"
        )
    return combos


def sweep_name(
    cfg: dict[str, Any],
    models: list[str],
    datasets: list[str],
    modes: list[str | None] | None = None,
) -> str:
    named = [m for m in modes or () if m]
    default = f"{'-'.join(models)}_x_{'-'.join(datasets)}" + (
        f"_x_{'-'.join(named)}" if named else ""
    )
    return safe_name(str(cfg["sweep"].get("name") or default))


def finished_results(combo: Combination) -> dict[str, Any] | None:
    """The combination's results.json if it is complete and still valid: same fingerprint,
    same dataset content, predictions file intact."""
    path = combo.run_dir / "results.json"
    model = section(ModelConfig, combo.cfg["model"], "model")
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
        predictions = combo.run_dir / "predictions.json"
        recorded = results["artifacts"]["predictions.json"]["sha256"]
        # "auto" resolves per machine: results from a CPU box are not a GPU box's.
        ran_as = {k: results["inference"][k] for k in ("backend", "device", "dtype")}

        def would_run_as() -> dict[str, str]:
            here = resolve_execution(
                section(InferenceConfig, combo.cfg["inference"], "inference"),
                results["model"]["loaded_from"],
                model.revision,
                results["counts"]["examples"],
                section(ModeConfig, combo.cfg["experiment_mode"], "experiment_mode").uses_context,
            )
            return {"backend": here.backend.name, "device": here.device, "dtype": here.dtype}

        # Cheapest first: most stale runs fail on the fingerprint.
        same = (
            results.get("status") == "completed"
            and results.get("config_fingerprint") == config_fingerprint(combo.cfg)
            and ran_as == would_run_as()
            and results["dataset"]["sha256"] == sha256_file(combo.cfg["dataset"]["path"])
            and _same_corpus(results, combo.cfg["dataset"].get("corpus"))
            and results["model"].get("gguf_sha256") == weights_digest(model)
            and _same_weights(results, model)
            and sha256_file(predictions) == recorded
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return results if same else None


def _same_weights(results: dict[str, Any], model: ModelConfig) -> bool:
    """A folder's or hub snapshot's weights as they are now, not as a path names them."""
    if model.gguf:
        return True  # the GGUF's sha256 is compared apart
    files = resolve_model(model)
    return results["model"].get("weights_sha256") == loaded_weights_digest(files, model.revision)


def _same_corpus(results: dict[str, Any], corpus: str | None) -> bool:
    recorded = (results["dataset"].get("corpus") or {}).get("sha256")
    return recorded is None or (corpus is not None and recorded == sha256_file(corpus))


def _context_reports(
    entries: list[dict[str, Any]], cfg: dict[str, Any], out_dir: Path
) -> list[str]:
    """Per model and dataset swept closed-book and with context: context_report.md files."""
    done = [e for e in entries if e["status"] == "completed"]
    written = []
    for closed in (e for e in done if e["mode"] == "no_context"):
        others = [
            e["run_dir"]
            for e in done
            if (e["model"], e["dataset"]) == (closed["model"], closed["dataset"])
            and e["mode"] != "no_context"
        ]
        if others:
            reports = context_reports(closed["run_dir"], others, cfg, out_dir=out_dir / "context")
            written += [str(r["paths"]["md"]) for r in reports]
    return written


def run_sweep(
    models: list[str],
    datasets: list[str],
    overrides: list[str],
    modes: list[str | None] | None = None,
) -> dict[str, Any]:
    combos = plan(models, datasets, overrides, modes=modes)
    first = combos[0].cfg
    if first["clearml"]["mode"] != "off":
        raise ConfigError(
            "clearml.mode: `make sweep` runs here without ClearML; on a server use "
            "`make enqueue-sweep QUEUE=gpu MODELS=... DATASETS=...`"
        )
    if first["experiment"]["cleanup_local_artifacts"]:
        raise ConfigError(
            "experiment.cleanup_local_artifacts: a sweep reads each run's local files for its "
            "leaderboard and reuse; leave it false (the files still go to S3 when set)"
        )
    settings = first["sweep"]
    name = sweep_name(first, models, datasets, modes)
    out_dir = Path(settings["output_dir"]) / name
    stats = bootstrap_options(settings)
    rows, entries = [], []
    with keep_loaded():
        for number, combo in enumerate(combos, 1):
            label = f"[{number}/{len(combos)}] {combo.label}"
            entry: dict[str, Any] = dict(combo.entry)
            results = None if settings["force"] else finished_results(combo)
            entry["reused"] = results is not None
            if results is not None:
                print(f"{label}: reused {combo.run_dir} (same config and dataset)", flush=True)
            else:
                print(f"{label}: running -> {combo.run_dir}", flush=True)
                if settings["force"]:  # recompute: no answer comes back from a checkpoint
                    for stale in combo.run_dir.glob("checkpoint-*.jsonl"):
                        stale.unlink()
                try:
                    outputs = run_local(combo.cfg)
                except (ValueError, ModelFilesError, StorageError, RuntimeError, OSError) as exc:
                    print(f"{label}: failed: {exc}", file=sys.stderr, flush=True)
                    entries.append({**entry, "status": "failed", "error": str(exc)})
                    continue
                results = outputs["publish"]["results"]
            predictions = json.loads((combo.run_dir / "predictions.json").read_text("utf-8"))
            rows.append(leaderboard_row(results, predictions, reused=entry["reused"], **stats))
            entries.append(
                {
                    **entry,
                    "status": "completed",
                    "experiment": results["experiment"],
                    "run_id": results["run_id"],
                    "run_dir": str(combo.run_dir),
                }
            )
    paths: dict[str, Path] = {}
    if rows:
        paths = write_leaderboard(rows, out_dir, f"sweep {name}", stats["confidence"])
    summary = {
        "name": name,
        "models": models,
        "datasets": datasets,
        "modes": sorted({c.mode for c in combos}),
        "overrides": overrides,
        "combinations": entries,
        "leaderboard": sort_rows(rows),
    }
    summary["context_reports"] = _context_reports(entries, first, out_dir)
    paths["json"] = write_json_atomic(out_dir / "sweep.json", summary)
    summary["paths"] = {k: str(v) for k, v in paths.items()}
    return summary

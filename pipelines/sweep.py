"""`make sweep`: every model x dataset, one after another in this process, then a leaderboard.

    python -m pipelines.sweep --models smollm2_135m,gemma3_270m --datasets sample,nq_open \\
        dataset.limit=20 [sweep.force=true]

Every combination is composed and checked before anything runs. Combinations run model by
model, so each model is loaded once for all its datasets. A combination whose results.json
exists for the same config fingerprint and dataset sha256 is reused, not recomputed. A
failed combination is reported and the others still run.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.config import ConfigError, compose, group_choices, to_container, validate

log = logging.getLogger("pipelines.sweep")


@dataclass
class Combination:
    model: str
    dataset: str
    cfg: dict[str, Any]

    @property
    def run_dir(self) -> Path:
        from pipelines.local import run_dir_of

        return run_dir_of(self.cfg)


def split_names(value: str, group: str) -> list[str]:
    names = [n.strip() for n in value.replace(" ", ",").split(",") if n.strip()]
    if not names:
        raise ConfigError(f"{group}: name at least one (e.g. {group.upper()}=a,b)")
    choices = group_choices(group)
    unknown = [n for n in names if n not in choices]
    if unknown:
        raise ConfigError(f"{group}: unknown {', '.join(unknown)}; one of {', '.join(choices)}")
    return list(dict.fromkeys(names))


def normalize_overrides(overrides: list[str]) -> list[str]:
    """``force=true`` (as the README writes it) is ``sweep.force=true``."""
    return [f"sweep.{o}" if o.split("=", 1)[0] == "force" else o for o in overrides]


def plan(
    models: list[str], datasets: list[str], overrides: list[str], check_paths: bool = True
) -> list[Combination]:
    """Model-major order (one model load per model); fails before any run on a bad config."""
    combos = []
    for model in models:
        for dataset in datasets:
            cfg = to_container(compose([f"model={model}", f"dataset={dataset}", *overrides]))
            try:
                validate(cfg, require_dataset=check_paths)
            except ConfigError as exc:
                raise ConfigError(f"{model} x {dataset}: {exc}") from exc
            combos.append(Combination(model, dataset, cfg))
    dirs = [c.run_dir for c in combos]
    if len(set(dirs)) != len(dirs):
        raise ConfigError(
            "experiment.name: the combinations share a run folder; leave the default "
            "(${model.name}_${dataset.name}) or put both names in yours"
        )
    return combos


def sweep_name(cfg: dict[str, Any], models: list[str], datasets: list[str]) -> str:
    from components.storage import safe_name

    return safe_name(str(cfg["sweep"].get("name") or f"{'-'.join(models)}_x_{'-'.join(datasets)}"))


def finished_results(combo: Combination) -> dict[str, Any] | None:
    """The combination's results.json if it is complete and still valid: same fingerprint,
    same dataset content, predictions file intact."""
    from components.artifacts import sha256_file
    from components.backends import resolve_backend_name
    from components.device import resolve_device, resolve_dtype
    from components.model_files import weights_digest
    from components.results import config_fingerprint

    path = combo.run_dir / "results.json"
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
        predictions = combo.run_dir / "predictions.json"
        recorded = results["artifacts"]["predictions.json"]["sha256"]
        inference = combo.cfg["inference"]
        device = resolve_device(str(inference["device"]))
        # "auto" resolves per machine: results from a CPU box are not a GPU box's.
        ran_as = {k: results["inference"][k] for k in ("backend", "device", "dtype")}
        would_run_as = {
            "backend": resolve_backend_name(str(inference["backend"]), device),
            "device": device,
            "dtype": resolve_dtype(str(inference["dtype"]), device),
        }
        same = (
            results.get("status") == "completed"
            and results.get("config_fingerprint") == config_fingerprint(combo.cfg)
            and results["dataset"]["sha256"] == sha256_file(combo.cfg["dataset"]["path"])
            and results["model"].get("gguf_sha256") == weights_digest(combo.cfg["model"])
            and ran_as == would_run_as
            and sha256_file(predictions) == recorded
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return results if same else None


def run_sweep(models: list[str], datasets: list[str], overrides: list[str]) -> dict[str, Any]:
    from components.artifacts import write_json_atomic
    from components.backends.pool import keep_loaded
    from components.leaderboard import leaderboard_row, sort_rows, write_leaderboard
    from components.model_files import ModelFilesError
    from components.stats import bootstrap_options
    from components.storage import StorageError
    from pipelines.local import run_local

    overrides = normalize_overrides(overrides)
    combos = plan(models, datasets, overrides)
    first = combos[0].cfg
    if str(first["clearml"].get("mode") or "off") != "off":
        raise ConfigError(
            "clearml.mode: `make sweep` runs here without ClearML; on a server use "
            "`make enqueue-sweep QUEUE=gpu MODELS=... DATASETS=...`"
        )
    if first["experiment"].get("cleanup_local_artifacts"):
        raise ConfigError(
            "experiment.cleanup_local_artifacts: a sweep reads each run's local files for its "
            "leaderboard and reuse; leave it false (the files still go to S3 when set)"
        )
    settings = first["sweep"]
    name = sweep_name(first, models, datasets)
    out_dir = Path(settings["output_dir"]) / name
    stats = bootstrap_options(settings)
    rows, entries = [], []
    with keep_loaded():
        for number, combo in enumerate(combos, 1):
            label = f"[{number}/{len(combos)}] {combo.model} x {combo.dataset}"
            entry: dict[str, Any] = {"model": combo.model, "dataset": combo.dataset}
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
                results_path = outputs["publish"]["results_path"]
                results = json.loads(Path(results_path).read_text(encoding="utf-8"))
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
        "overrides": overrides,
        "combinations": entries,
        "leaderboard": sort_rows(rows),
    }
    paths["json"] = write_json_atomic(out_dir / "sweep.json", summary)
    summary["paths"] = {k: str(v) for k, v in paths.items()}
    return summary


def _stop(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    from components.model_files import ModelFilesError
    from components.storage import StorageError

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", required=True, help="model config names, comma-separated")
    parser.add_argument("--datasets", required=True, help="dataset config names")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every combination")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _stop)
    try:
        models = split_names(args.models, "model")
        datasets = split_names(args.datasets, "dataset")
        summary = run_sweep(models, datasets, args.overrides)
    except (ConfigError, ModelFilesError, StorageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print(
            f"stopped ({exc or 'interrupt'}): finished combinations are kept and reused, the "
            "running one resumes from its checkpoint; run the same command again",
            file=sys.stderr,
        )
        return 130
    from components.leaderboard import to_markdown

    print()
    print(to_markdown(summary["leaderboard"], f"sweep {summary['name']}"), end="")
    print("wrote")
    for path in summary["paths"].values():
        print(f"  {path}")
    failed = [c for c in summary["combinations"] if c["status"] == "failed"]
    for combo in failed:
        print(f"failed: {combo['model']} x {combo['dataset']}: {combo['error']}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

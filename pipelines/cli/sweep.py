"""`make sweep MODELS=a,b DATASETS=x,y`: every combination here, then a leaderboard.

    python -m pipelines.cli.sweep 'sweep.models=[smollm2_135m,gemma3_270m]' \
        'sweep.datasets=[sample,nq_open]' dataset.limit=20 [sweep.force=true]
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from components.leaderboard import to_markdown
from pipelines.cli import finish, launch
from pipelines.sweep import run_sweep, split_names, sweep_modes

SWEEP_KEYS = ("sweep.models=", "sweep.datasets=", "sweep.modes=")


def user_overrides() -> list[str]:
    """The command line's overrides, for every combination (less the sweep's own lists)."""
    from hydra.core.hydra_config import HydraConfig

    return [o for o in HydraConfig.get().overrides.task if not o.startswith(SWEEP_KEYS)]


def sweep(cfg: DictConfig) -> int:

    models = split_names(list(cfg.sweep.models), "model")
    datasets = split_names(list(cfg.sweep.datasets), "dataset")
    modes = sweep_modes(list(cfg.sweep.modes))
    summary = run_sweep(models, datasets, user_overrides(), modes)
    print()
    confidence = float(cfg.sweep.confidence)
    print(to_markdown(summary["leaderboard"], f"sweep {summary['name']}", confidence), end="")
    print("wrote")
    for path in [*summary["paths"].values(), *summary["context_reports"]]:
        print(f"  {path}")
    failed = [c for c in summary["combinations"] if c["status"] == "failed"]
    for combo in failed:
        mode = "" if combo["mode"] == "no_context" else f" x {combo['mode']}"
        where = f"{combo['model']} x {combo['dataset']}{mode}"
        print(f"failed: {where}: {combo['error']}", file=sys.stderr)
    return 1 if failed else 0


@hydra.main(version_base="1.3", config_path="../../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    finish(
        lambda: sweep(cfg),
        stopped_hint=lambda: (
            "finished combinations are kept and reused, the running one resumes "
            "from its checkpoint; run the same command again"
        ),
    )


if __name__ == "__main__":
    launch(main, composes=True)

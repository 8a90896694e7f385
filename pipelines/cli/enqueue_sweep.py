"""`make enqueue-sweep QUEUE=gpu MODELS=a,b DATASETS=x,y`: one ClearML pipeline per
combination, then a summary pipeline with the leaderboard (see pipelines.clearml.sweep)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from pipelines.clearml.sweep import enqueue_sweep as enqueue
from pipelines.cli import finish, launch
from pipelines.cli.sweep import user_overrides
from pipelines.sweep import split_names, sweep_modes


def enqueue_sweep(cfg: DictConfig) -> int:

    models = split_names(list(cfg.sweep.models), "model")
    datasets = split_names(list(cfg.sweep.datasets), "dataset")
    enqueue(models, datasets, user_overrides(), sweep_modes(list(cfg.sweep.modes)))
    return 0


@hydra.main(version_base="1.3", config_path="../../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    finish(lambda: enqueue_sweep(cfg))


if __name__ == "__main__":
    launch(main, composes=True)

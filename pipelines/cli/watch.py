"""`make watch PROJECT=<models project> DATASETS=a,b`: a watcher on the services queue that
evaluates each model published in that project (see pipelines.clearml.watch)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig, OmegaConf

from pipelines.clearml.watch import start_watch
from pipelines.cli import finish, launch
from pipelines.sweep import split_names


def watch(cfg: DictConfig) -> int:
    from hydra.core.hydra_config import HydraConfig

    settings = OmegaConf.to_container(cfg.watch, resolve=True)
    settings["datasets"] = split_names(list(cfg.watch.datasets), "dataset")
    settings["overrides"] = [
        o for o in HydraConfig.get().overrides.task if not o.startswith("watch.")
    ]
    started = start_watch(settings)
    print(f"watch {started['name']} ({started['id']}): {started['url']}")
    return 0


@hydra.main(version_base="1.3", config_path="../../conf", config_name="watch")
def main(cfg: DictConfig) -> None:
    finish(lambda: watch(cfg))


if __name__ == "__main__":
    launch(main)

"""`make rescore RUN=<experiment|folder|task id>`: score a finished run again, no inference
(see pipelines.rescore)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from pipelines.clearml.runs import task_fetcher
from pipelines.cli import finish, launch
from pipelines.config import to_container
from pipelines.rescore import rescore


def main_rescore(cfg: DictConfig) -> int:
    container = to_container(cfg)
    done = rescore(str(cfg.rescore.run), container, fetch_task=task_fetcher(container))
    results, before = done["results"], done["results"]["rescored"]
    recall = results["token_recall"]["mean"]
    was = before["from_token_recall"]["mean"]
    print(
        f"{results['experiment']}: token recall {recall if recall is None else f'{recall:.3f}'} "
        f"(was {was if was is None else f'{was:.3f}'}), answers from {before['answers_from']}, "
        f"{before['answers_changed']} changed"
    )
    print("wrote")
    for path in done["paths"].values():
        print(f"  {path}")
    return 0


@hydra.main(version_base="1.3", config_path="../../conf", config_name="rescore")
def main(cfg: DictConfig) -> None:
    finish(lambda: main_rescore(cfg))


if __name__ == "__main__":
    launch(main)

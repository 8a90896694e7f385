"""`make enqueue QUEUE=gpu ARGS="..."`: the experiment as a ClearML pipeline on the agents.

python -m pipelines.cli.enqueue clearml.queues.gpu=gpu dataset.limit=100 storage.endpoint=http://minio:9000
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from pipelines.clearml.submit import submit
from pipelines.cli import finish, launch


def enqueue(cfg: DictConfig) -> int:

    pipeline = submit(cfg)
    print(f"pipeline {pipeline['experiment']} ({pipeline['id']}) enqueued: {pipeline['url']}")
    return 0


@hydra.main(version_base="1.3", config_path="../../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    finish(lambda: enqueue(cfg))


if __name__ == "__main__":
    launch(main, composes=True)

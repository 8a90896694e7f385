"""`make context-report CLOSED=... WITH=a,b`: what context does for one model, question by
question (see pipelines.compare.context_reports)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from pipelines.clearml.runs import task_fetcher
from pipelines.cli import finish, launch
from pipelines.compare import context_reports
from pipelines.config import to_container


def context_report(cfg: DictConfig) -> int:
    container = to_container(cfg)
    settings = container["context_report"]
    refs = [r.strip() for r in str(settings["with"]).split(",") if r.strip()]
    done = context_reports(
        str(settings["closed"]), refs, container, fetch_task=task_fetcher(container)
    )
    for item in done:
        text = item["paths"]["md"].read_text(encoding="utf-8").splitlines()
        print("\n".join(text[:7]))
        print("wrote")
        for path in item["paths"].values():
            print(f"  {path}")
    return 0


@hydra.main(version_base="1.3", config_path="../../conf", config_name="context_report")
def main(cfg: DictConfig) -> None:
    finish(lambda: context_report(cfg))


if __name__ == "__main__":
    launch(main)

"""`make compare A=... B=...`: two runs question by question (see pipelines.compare)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from components.compare import MARKDOWN_ROWS
from pipelines.clearml.runs import task_fetcher
from pipelines.clearml.tracking import report_comparison
from pipelines.cli import finish, launch
from pipelines.compare import compare as compare_runs
from pipelines.config import to_container
from pipelines.runs import TASK_ID


def compare(cfg: DictConfig) -> int:
    container = to_container(cfg)
    refs = (str(cfg.compare.a), str(cfg.compare.b))
    done = compare_runs(*refs, container, fetch_task=task_fetcher(container))
    tracked = container["clearml"]["mode"] != "off" or any(TASK_ID.fullmatch(r) for r in refs)
    session = (
        report_comparison(container, done["comparison"], *done["labels"], done["paths"])
        if tracked
        else None
    )
    text = done["paths"]["md"].read_text(encoding="utf-8").splitlines()
    shown = 8 + min(10, MARKDOWN_ROWS)
    print("\n".join(text[:shown]))
    if len(text) > shown:
        print(f"... ({len(done['comparison']['rows'])} differing questions in all)")
    print("wrote")
    for path in done["paths"].values():
        print(f"  {path}")
    if session:
        print(f"  {session}  (ClearML offline session)")
    return 0


@hydra.main(version_base="1.3", config_path="../../conf", config_name="compare")
def main(cfg: DictConfig) -> None:
    finish(lambda: compare(cfg))


if __name__ == "__main__":
    launch(main)

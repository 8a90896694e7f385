"""`make compare A=... B=...`: two runs question by question (see pipelines.compare)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from pipelines.cli import finish, launch
from pipelines.config import to_container


def compare(cfg: DictConfig) -> int:
    from components.compare import MARKDOWN_ROWS
    from pipelines.compare import compare as compare_runs

    container = to_container(cfg)
    done = compare_runs(str(cfg.compare.a), str(cfg.compare.b), container)
    text = done["paths"]["md"].read_text(encoding="utf-8").splitlines()
    shown = 8 + min(10, MARKDOWN_ROWS)
    print("\n".join(text[:shown]))
    if len(text) > shown:
        print(f"... ({len(done['comparison']['rows'])} differing questions in all)")
    print("wrote")
    for path in done["paths"].values():
        print(f"  {path}")
    if done["session"]:
        print(f"  {done['session']}  (ClearML offline session)")
    return 0


@hydra.main(version_base="1.3", config_path="../../conf", config_name="compare")
def main(cfg: DictConfig) -> None:
    finish(lambda: compare(cfg))


if __name__ == "__main__":
    launch(main)

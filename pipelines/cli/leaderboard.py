"""`make leaderboard RUNS=a,b`: any finished runs side by side, ranked by token recall.

make leaderboard RUNS=smollm2_135m_sample,gemma3_270m_sample
make leaderboard RUNS=<task id>,<task id> ARGS="storage.endpoint=http://minio:9000"
"""

from __future__ import annotations

import json
from pathlib import Path

import hydra
from omegaconf import DictConfig

from components.leaderboard import leaderboard_row, sort_rows, to_markdown, write_leaderboard
from components.stats import bootstrap_options
from components.storage import safe_name
from pipelines.clearml.runs import task_fetcher
from pipelines.cli import finish, launch
from pipelines.config import ConfigError, to_container
from pipelines.runs import resolve_run


def leaderboard(cfg: DictConfig) -> int:
    container = to_container(cfg)
    refs = [r.strip() for r in str(cfg.leaderboard.runs).split(",") if r.strip()]
    if not refs:
        raise ConfigError("leaderboard.runs: name at least one run (RUNS=a,b)")
    stats = bootstrap_options(container["sweep"])
    rows = []
    for ref in refs:
        folder = resolve_run(ref, container, task_fetcher(container))
        results = json.loads((folder / "results.json").read_text(encoding="utf-8"))
        predictions = json.loads((folder / "predictions.json").read_text(encoding="utf-8"))
        rows.append(leaderboard_row(results, predictions, **stats))
    name = safe_name(str(cfg.leaderboard.name or "-".join(r["experiment"] for r in rows)))
    title = f"leaderboard {name}"
    out = Path(container["sweep"]["output_dir"]) / name
    paths = write_leaderboard(rows, out, title, stats["confidence"])
    print(to_markdown(sort_rows(rows), title, stats["confidence"]), end="")
    print("wrote")
    for path in paths.values():
        print(f"  {path}")
    return 0


@hydra.main(version_base="1.3", config_path="../../conf", config_name="leaderboard")
def main(cfg: DictConfig) -> None:
    finish(lambda: leaderboard(cfg))


if __name__ == "__main__":
    launch(main)

"""`make fetch`, `make publish`, `make retention`: a run's files in S3 after the fact.

make fetch SRC=s3://HOST:PORT/BUCKET/PREFIX/EXP.ID DEST=dir   (or TASK=<task id>)
make publish EXPERIMENT=<name> ARGS="storage.endpoint=..."     (after a failed upload)
make retention DAYS=90 ARGS="storage.endpoint=..."
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from pipelines.cli import finish
from pipelines.config import ConfigError, require_storage, to_container


def artifacts(cfg: DictConfig) -> int:
    from components.storage import download_verified, set_retention
    from pipelines.artifacts import fetch_source, publish_again

    container = to_container(cfg)
    what = container["artifacts"]
    settings = require_storage(
        container["storage"], "is required (storage.endpoint=http://HOST:PORT)"
    )
    if what["command"] == "fetch":
        source = fetch_source(what["source"], what["task_id"])
        for path, checked in download_verified(settings, source, what["dest"]).items():
            print(f"{path}  ({'sha256 verified' if checked else 'no sha256 recorded'})")
    elif what["command"] == "publish":
        if not what["run_dir"]:
            raise ConfigError("artifacts.run_dir: which run (make publish EXPERIMENT=<name>)")
        run_dir = Path(what["run_dir"])
        if not run_dir.is_dir():  # an experiment name: its folder under experiment.output_dir
            run_dir = Path(container["experiment"]["output_dir"]) / what["run_dir"]
        cleanup = bool(container["experiment"]["cleanup_local_artifacts"])
        for url in publish_again(settings, run_dir, cleanup):
            print(f"{url}  (verified)")
    elif what["command"] == "retention":
        print(f"lifecycle rules on bucket {settings.bucket} at {settings.endpoint}:")
        for rule in set_retention(settings, int(what["days"])):
            prefix = rule.get("Filter", {}).get("Prefix", rule.get("Prefix", ""))
            days = rule.get("Expiration", {}).get("Days")
            print(
                f"  {rule.get('ID')}: prefix {prefix!r}, expire after {days} days, {rule['Status']}"
            )
    else:
        raise ConfigError(
            f"artifacts.command: {what['command']!r} is not one of fetch, publish, retention"
        )
    return 0


@hydra.main(version_base="1.3", config_path="../../conf", config_name="artifacts")
def main(cfg: DictConfig) -> None:
    finish(lambda: artifacts(cfg))


if __name__ == "__main__":
    main()

"""`make fetch`, `make publish`, `make retention`, `make clean-outputs`: a run's files in S3
after the fact.

make fetch SRC=s3://HOST:PORT/BUCKET/PREFIX/EXP.ID DEST=dir   (or TASK=<task id>)
make publish EXPERIMENT=<name> ARGS="storage.endpoint=..."     (after a failed upload)
make retention DAYS=90 ARGS="storage.endpoint=..."
make clean-outputs DAYS=7 ARGS="storage.endpoint=..."
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from components.retention import clean_outputs, set_retention
from components.storage import S3, StorageError
from pipelines.clearml.runs import task_source
from pipelines.cli import finish, launch
from pipelines.config import ConfigError, require_storage, to_container
from pipelines.runs import publish_again


def fetch(s3: S3, what: dict, container: dict) -> None:
    if bool(what["source"]) == bool(what["task_id"]):
        raise StorageError("fetch needs SRC=s3://... or TASK=<task id> (one of them)")
    source = what["source"] or task_source(str(what["task_id"]))
    for path, checked in s3.download(source, what["dest"], accept_unrecorded=True).items():
        print(f"{path}  ({'sha256 verified' if checked else 'no sha256 recorded'})")


def publish(s3: S3, what: dict, container: dict) -> None:
    if not what["run_dir"]:
        raise ConfigError("files.run_dir: which run (make publish EXPERIMENT=<name>)")
    run_dir = Path(what["run_dir"])
    if not run_dir.is_dir():  # an experiment name: its folder under experiment.output_dir
        run_dir = Path(container["experiment"]["output_dir"]) / what["run_dir"]
    cleanup = bool(container["experiment"]["cleanup_local_artifacts"])
    for url in publish_again(s3, run_dir, cleanup):
        print(f"{url}  (verified)")


def retention(s3: S3, what: dict, container: dict) -> None:
    print(f"lifecycle rules on bucket {s3.bucket} at {s3.endpoint}:")
    for rule in set_retention(s3, int(what["days"])):
        prefix = rule.get("Filter", {}).get("Prefix", rule.get("Prefix", ""))
        days = rule.get("Expiration", {}).get("Days")
        print(f"  {rule.get('ID')}: prefix {prefix!r}, expire after {days} days, {rule['Status']}")


def clean(s3: S3, what: dict, container: dict) -> None:
    output_dir = Path(container["experiment"]["output_dir"])
    verdicts = clean_outputs(output_dir, s3, float(what["days"]))
    for v in verdicts:
        print(f"{'removed' if v.removed else 'kept'} {v.run_dir}: {v.why}")
    freed = sum(v.bytes for v in verdicts if v.removed) / 2**20
    removed = sum(v.removed for v in verdicts)
    print(f"removed {removed} of {len(verdicts)} runs in {output_dir} ({freed:.1f} MiB)")


COMMANDS = {"fetch": fetch, "publish": publish, "retention": retention, "clean-outputs": clean}


def artifacts(cfg: DictConfig) -> int:
    container = to_container(cfg)
    what = container["files"]
    if what["command"] not in COMMANDS:
        raise ConfigError(f"files.command: {what['command']!r} is not one of {', '.join(COMMANDS)}")
    s3 = require_storage(container["storage"], "is required (storage.endpoint=http://HOST:PORT)")
    COMMANDS[what["command"]](s3, what, container)
    return 0


@hydra.main(version_base="1.3", config_path="../../conf", config_name="files")
def main(cfg: DictConfig) -> None:
    finish(lambda: artifacts(cfg))


if __name__ == "__main__":
    launch(main)

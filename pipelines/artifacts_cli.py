"""Get an experiment's files back from S3, and keep the bucket small.

    python -m pipelines.artifacts_cli fetch s3://HOST:PORT/BUCKET/PREFIX/EXP.ID --dest DIR
    python -m pipelines.artifacts_cli fetch --task-id TASK_ID --dest DIR   # needs a server
    python -m pipelines.artifacts_cli retention --days 90 storage.endpoint=http://minio:9000
    python -m pipelines.artifacts_cli publish --run-dir outputs/EXP storage.endpoint=...   # retry

Trailing ``key=value`` arguments are Hydra overrides of conf/ (storage.endpoint, ...).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from components.storage import StorageError, StorageSettings, download_verified, set_retention
from pipelines.config import ConfigError, compose, require_storage, to_container


def _settings(overrides: list[str], cfg: dict | None = None) -> StorageSettings:
    cfg = cfg or to_container(compose(overrides))
    return require_storage(cfg["storage"], "is required (storage.endpoint=http://HOST:PORT)")


def task_prefix(task_id: str) -> str:
    """The run prefix of a ClearML task, read from its artifact links."""
    from clearml import Task

    task = Task.get_task(task_id=task_id)
    for artifact in task.artifacts.values():
        url = artifact.url or ""
        if "/artifacts/" in url:
            return url.split("/artifacts/")[0]
    raise StorageError(f"task {task_id} has no artifacts in S3")


def _publish_again(run_dir: Path, overrides: list[str]) -> None:
    """Uploads a run whose upload failed, under its original run id, after checking the
    local files still match the sizes and sha256 recorded in results.json."""
    import json

    from components.artifacts import file_info
    from components.storage import publish_run

    results_path = run_dir / "results.json"
    if not results_path.is_file():
        raise StorageError(f"{results_path}: not found; finish the run first (make run)")
    results = json.loads(results_path.read_text(encoding="utf-8"))
    for name, recorded in results["artifacts"].items():
        now = file_info(run_dir / name)
        if (now["bytes"], now["sha256"]) != (recorded["bytes"], recorded["sha256"]):
            raise StorageError(f"{run_dir / name}: changed since the run recorded it; not uploaded")
    cfg = to_container(compose(overrides))
    cleanup = bool(cfg["experiment"]["cleanup_local_artifacts"])
    uploaded = publish_run(
        _settings(overrides, cfg),
        run_dir,
        results["experiment"],
        results["run_id"],
        cleanup_local=cleanup,
    )
    for info in uploaded.values():
        print(f"{info['url']}  (verified)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    fetch = sub.add_parser("fetch", help="download and verify an experiment's artifacts")
    fetch.add_argument(
        "source", nargs="?", help="s3://host:port/bucket/prefix/EXP.ID, or a key prefix"
    )
    fetch.add_argument("--task-id", help="a ClearML task id instead of a URL")
    fetch.add_argument("--dest", required=True)
    retention = sub.add_parser("retention", help="expire objects under storage.prefix after N days")
    retention.add_argument("--days", type=int, required=True)
    publish = sub.add_parser("publish", help="upload a finished local run (after a failed upload)")
    publish.add_argument("--run-dir", required=True, help="outputs/<experiment>")
    for p in (fetch, retention, publish):
        p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. storage.endpoint=...")
    args, extra = parser.parse_known_args(argv)
    overrides = [*args.overrides, *extra]
    try:
        if args.command == "fetch":
            if args.source and "=" in args.source and not args.source.startswith("s3://"):
                overrides.insert(0, args.source)
                args.source = None
            if bool(args.source) == bool(args.task_id):
                parser.error("fetch needs a source URL/prefix or --task-id (one of them)")
            source = args.source or task_prefix(args.task_id)
            for path in download_verified(_settings(overrides), source, args.dest):
                print(f"{path}  (sha256 verified)")
        elif args.command == "publish":
            _publish_again(Path(args.run_dir), overrides)
        else:
            settings = _settings(overrides)
            rules = set_retention(settings, args.days)
            print(f"lifecycle rules on bucket {settings.bucket} at {settings.endpoint}:")
            for rule in rules:
                prefix = rule.get("Filter", {}).get("Prefix", rule.get("Prefix", ""))
                days = rule.get("Expiration", {}).get("Days")
                status = rule["Status"]
                print(f"  {rule.get('ID')}: prefix {prefix!r}, expire after {days} days, {status}")
    except (ConfigError, StorageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

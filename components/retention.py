"""How long things are kept: an expiry rule for the run files in S3 (`make retention`), and
age-based cleanup of the local outputs folder (`make clean-outputs DAYS=7`), which removes a
run folder only when the run finished, nothing in it changed for DAYS days, and its three
files are in S3 with the same sha256; a running, unfinished or un-uploaded run always stays."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.atomic import sha256_file
from components.storage import ARTIFACT_NAMES, S3, StorageError

LIFECYCLE_RULE_ID = "slm-qa-eval-expiry"


def set_retention(s3: S3, days: int) -> list[dict[str, Any]]:
    """Expires objects under the prefix after ``days`` (what `mc ilm add --expiry-days` does).

    Rules of other prefixes are kept; ours is replaced. Returns the rules now in force.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    if days < 1:
        raise StorageError(f"retention days must be >= 1, got {days}")
    s3.require_bucket("setting the lifecycle rule")
    try:
        rules = s3.client.get_bucket_lifecycle_configuration(Bucket=s3.bucket)["Rules"]
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "NoSuchLifecycleConfiguration":
            raise s3.error("reading the lifecycle rules", exc) from exc
        rules = []
    except BotoCoreError as exc:
        raise s3.error("reading the lifecycle rules", exc) from exc
    rules = [r for r in rules if r.get("ID") != LIFECYCLE_RULE_ID]
    rules.append(
        {
            "ID": LIFECYCLE_RULE_ID,
            "Filter": {"Prefix": f"{s3.prefix}/"},
            "Status": "Enabled",
            "Expiration": {"Days": int(days)},
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
        }
    )
    try:
        s3.client.put_bucket_lifecycle_configuration(
            Bucket=s3.bucket, LifecycleConfiguration={"Rules": rules}
        )
        return s3.client.get_bucket_lifecycle_configuration(Bucket=s3.bucket)["Rules"]
    except (BotoCoreError, ClientError) as exc:
        raise s3.error("setting the lifecycle rule", exc) from exc


DAY = 86400.0


@dataclass(frozen=True)
class Verdict:
    run_dir: Path
    removed: bool
    why: str
    bytes: int = 0


def _newest_change(folder: Path) -> float:
    return max((p.stat().st_mtime for p in folder.rglob("*")), default=folder.stat().st_mtime)


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _not_uploaded(run_dir: Path, results: dict, s3: S3) -> str | None:
    """Why the run's files are not safely in S3, or None when each one is there whole."""
    from botocore.exceptions import BotoCoreError, ClientError

    # The local files as they are now; one already gone counts as recorded in results.json.
    recorded = {name: info["sha256"] for name, info in (results.get("artifacts") or {}).items()}
    recorded |= {n: sha256_file(run_dir / n) for n in ARTIFACT_NAMES if (run_dir / n).is_file()}
    for name in ARTIFACT_NAMES:
        key = s3.artifact_key(results["experiment"], results["run_id"], name)
        try:
            head = s3.client.head_object(Bucket=s3.bucket, Key=key)
        except ClientError:
            return f"{name} is not at {s3.url(key)}"
        except BotoCoreError as exc:
            raise StorageError(f"checking {s3.url(key)}: {exc}", transient=True) from exc
        if name in recorded and head.get("Metadata", {}).get("sha256") != recorded[name]:
            return f"{s3.url(key)} differs from the run's {name}"
    return None


def clean_outputs(
    output_dir: str | Path, s3: S3, days: float, now: float | None = None
) -> list[Verdict]:
    """One verdict per run folder (a folder holding results.json or a checkpoint) under
    ``output_dir``; the removed ones are gone when this returns."""
    if days <= 0:
        raise ValueError(f"DAYS: must be > 0, got {days!r}")
    now = time.time() if now is None else now
    verdicts = []
    for run_dir in sorted(p for p in Path(output_dir).iterdir() if p.is_dir()):
        results_path = run_dir / "results.json"
        if list(run_dir.glob("checkpoint-*.jsonl")):
            verdicts.append(Verdict(run_dir, False, "a checkpoint is there: running, or cut short"))
            continue
        if not results_path.is_file():
            continue  # not a run folder (sweeps/, compare/), or one still loading its data
        age = (now - _newest_change(run_dir)) / DAY
        if age < days:
            verdicts.append(Verdict(run_dir, False, f"changed {age:.1f} days ago"))
            continue
        results = json.loads(results_path.read_text(encoding="utf-8"))
        missing = _not_uploaded(run_dir, results, s3)
        if missing:
            hint = f"make publish EXPERIMENT={run_dir.name}"
            verdicts.append(Verdict(run_dir, False, f"not uploaded ({missing}); {hint}"))
            continue
        size = _size(run_dir)
        shutil.rmtree(run_dir)
        where = s3.url(s3.run_key(results["experiment"], results["run_id"]))
        verdicts.append(
            Verdict(run_dir, True, f"finished {results.get('finished_at')}, in {where}/", size)
        )
    return verdicts

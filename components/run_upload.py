"""A finished run folder to S3: its three artifacts, results.json last (its presence in S3
means the run is whole), and with ``cleanup_local`` the folder's other files first, every
local copy deleted only once all uploads verified."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from components.storage import ARTIFACT_NAMES, S3, artifact_subkey, safe_name


def publish_run(
    s3: S3, run_dir: str | Path, experiment: str, run_id: str, *, cleanup_local: bool = False
) -> dict[str, dict[str, Any]]:
    """The run's artifacts, by artifact name, each with its URL, key, size, sha256 and
    local path; the folder's other files go under ``<run key>/files/``."""
    run_dir = Path(run_dir)
    run_key = s3.run_key(experiment, run_id)
    s3.require_bucket(f"upload of {run_dir} to {s3.url(run_key)}/")
    local = []
    if cleanup_local:
        for relative in run_folder_files(run_dir):
            segments = "/".join(safe_name(p) for p in relative.split("/"))
            s3.upload(run_dir / relative, f"{run_key}/files/{segments}")
            local.append(run_dir / relative)
    uploaded: dict[str, dict[str, Any]] = {}
    for filename in sorted(ARTIFACT_NAMES, key=lambda name: name == "results.json"):
        path = run_dir / filename
        if path.is_file():
            info = s3.upload(path, artifact_subkey(run_key, filename))
            uploaded[ARTIFACT_NAMES[filename]] = {**info, "path": str(path)}
            local.append(path)
    if cleanup_local:
        for path in local:
            path.unlink()
        for folder in sorted((p for p in run_dir.rglob("*") if p.is_dir()), reverse=True):
            if not any(folder.iterdir()):
                folder.rmdir()
    return uploaded


def run_folder_files(run_dir: str | Path) -> list[str]:
    """The files of a run folder besides its three artifacts, as paths relative to it: what
    goes to S3 with them when the local copies are to be deleted. Checkpoints stay out (a
    finished run deletes its own), and so do temporary files."""
    run_dir = Path(run_dir)
    found = []
    for path in sorted(run_dir.rglob("*")):
        relative = path.relative_to(run_dir)
        skip = relative.as_posix() in ARTIFACT_NAMES or path.name.startswith((".", "checkpoint-"))
        if path.is_file() and not skip:
            found.append(relative.as_posix())
    return found

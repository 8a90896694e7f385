"""Files in S3 (MinIO in production): verified uploads and downloads, key layout, retention.

One code path for `make run` with ``storage.endpoint`` set, for every ClearML step (which
hand files to each other through S3) and for the tools that read results back. Keys follow
ClearML's layout, so both land side by side:
``<prefix>/<experiment>.<task or run id>/artifacts/<artifact name>/<file>``.
Uploads carry a SHA-256 checksum that the server checks (botocore's flexible checksums),
plus the whole file's sha256 as object metadata, which every download is checked against.
Credentials come from the environment (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``) or
from the host's entry in ``clearml.conf`` (``sdk.aws.s3.credentials``), never from the repo.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from components.artifacts import sha256_file

ARTIFACT_NAMES = {
    "results.json": "experiment_results",
    "predictions.json": "model_predictions",
    "memory_usage.json": "memory_usage",
}
MULTIPART_THRESHOLD = 8 * 2**20
MULTIPART_CHUNK = 8 * 2**20
LIFECYCLE_RULE_ID = "slm-qa-eval-expiry"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class StorageError(RuntimeError):
    """S3 failed; ``transient`` when trying again later may work (timeouts, 5xx, drops)."""

    def __init__(self, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


def safe_name(name: str) -> str:
    """A single key segment: no slashes, no '..', no control characters."""
    cleaned = _UNSAFE.sub("_", name).strip("._") or "unnamed"
    return cleaned.replace("..", "_")


def safe_prefix(prefix: str) -> str:
    return "/".join(safe_name(p) for p in str(prefix).split("/") if p.strip())


@dataclass(frozen=True)
class StorageSettings:
    """The validated ``storage`` settings; their defaults live in the config schema only."""

    endpoint: str
    bucket: str
    prefix: str
    region: str
    max_attempts: int
    connect_timeout: float
    read_timeout: float

    @classmethod
    def from_config(cls, storage: dict[str, Any]) -> StorageSettings | None:
        """None when no endpoint is configured: results then stay local."""
        endpoint = (storage or {}).get("endpoint")
        if not endpoint:
            return None
        if "://" not in endpoint:
            endpoint = f"http://{endpoint}"
        return cls(
            endpoint=endpoint.rstrip("/"),
            bucket=str(storage["bucket"]),
            prefix=safe_prefix(storage["prefix"]),
            region=str(storage["region"]),
            max_attempts=int(storage["max_attempts"]),
            connect_timeout=float(storage["connect_timeout"]),
            read_timeout=float(storage["read_timeout"]),
        )

    @property
    def host(self) -> str:
        return urlparse(self.endpoint).netloc

    def url(self, key: str) -> str:
        """ClearML's form of an object's address: s3://host:port/bucket/key."""
        return f"s3://{self.host}/{self.bucket}/{key}"

    def key_of(self, url_or_key: str) -> tuple[str, str]:
        """(bucket, key) of an s3:// URL in ClearML's form, or of a key in this bucket."""
        parsed = urlparse(url_or_key)
        if parsed.scheme == "s3":
            bucket, _, key = parsed.path.lstrip("/").partition("/")
            return bucket, key
        return self.bucket, url_or_key.strip("/")

    @property
    def output_uri(self) -> str:
        """ClearML's form: the port is required, else the host is taken for an AWS bucket."""
        return f"s3://{self.host}/{self.bucket}/{self.prefix}"

    def run_key(self, experiment: str, run_id: str) -> str:
        return f"{self.prefix}/{safe_name(experiment)}.{safe_name(run_id)}"

    def artifact_key(self, experiment: str, run_id: str, filename: str) -> str:
        """Where ``results.json``, ``predictions.json``, ``memory_usage.json`` of a run go."""
        return artifact_subkey(self.run_key(experiment, run_id), filename)


def artifact_subkey(run_key: str, filename: str) -> str:
    """An artifact's key under its run's: ``<run key>/artifacts/<name>/<file>``."""
    return f"{run_key}/artifacts/{ARTIFACT_NAMES[filename]}/{filename}"


def _clearml_conf_credentials(settings: StorageSettings) -> tuple[str, str] | None:
    """The host's key and secret in clearml.conf, found the way ClearML itself finds them."""
    try:
        from clearml.backend_config.bucket_config import S3BucketConfigurations
        from clearml.config import config_obj
    except ImportError:
        return None
    s3 = config_obj.get("sdk.aws.s3", None)
    if not s3:
        return None
    found = S3BucketConfigurations.from_config(s3).get_config_by_uri(
        f"s3://{settings.host}/{settings.bucket}"
    )
    if found is not None and found.key and found.secret:
        return str(found.key), str(found.secret)
    return None


def client(settings: StorageSettings):
    """A boto3 client whose retries (standard mode, backoff) cover 5xx, throttling and drops."""
    import boto3
    from botocore.config import Config

    options: dict[str, Any] = {}
    if not os.environ.get("AWS_ACCESS_KEY_ID"):
        found = _clearml_conf_credentials(settings)
        if found:
            options["aws_access_key_id"], options["aws_secret_access_key"] = found
    config = Config(
        s3={"addressing_style": "path"},
        retries={"max_attempts": settings.max_attempts, "mode": "standard"},
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        request_checksum_calculation="when_required",
        response_checksum_validation="when_supported",
    )
    return boto3.client(
        "s3", endpoint_url=settings.endpoint, region_name=settings.region, config=config, **options
    )


def as_storage_error(settings: StorageSettings, what: str, exc: Exception) -> StorageError:
    """A botocore error as one line that says what failed and what to do."""
    from botocore.exceptions import ClientError, NoCredentialsError

    if isinstance(exc, NoCredentialsError):
        return StorageError(
            f"{what} at {settings.endpoint}: no S3 credentials; export AWS_ACCESS_KEY_ID and "
            f"AWS_SECRET_ACCESS_KEY, or add the host {settings.host!r} to "
            "sdk.aws.s3.credentials in clearml.conf"
        )
    code = exc.response.get("Error", {}).get("Code", "") if isinstance(exc, ClientError) else ""
    transient = not code or code.startswith("5") or code in ("SlowDown", "RequestTimeout")
    if not transient:  # refused (access denied, no such bucket): retrying changes nothing
        return StorageError(f"{what} at {settings.endpoint} was refused: {exc}")
    return StorageError(
        f"{what} at {settings.endpoint} failed after {settings.max_attempts} attempts: {exc}",
        transient=True,
    )


def upload_verified(s3, settings: StorageSettings, path: Path, key: str) -> dict[str, Any]:
    """Uploads with a SHA-256 checksum the server verifies (per part when multipart), the
    file's sha256 as metadata, then checks size and metadata on the server copy."""
    from boto3.exceptions import S3UploadFailedError
    from boto3.s3.transfer import TransferConfig
    from botocore.exceptions import BotoCoreError, ClientError

    sha256 = sha256_file(path)
    size = path.stat().st_size
    transfer = TransferConfig(
        multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=MULTIPART_CHUNK
    )
    try:
        s3.upload_file(
            str(path),
            settings.bucket,
            key,
            ExtraArgs={"Metadata": {"sha256": sha256}, "ChecksumAlgorithm": "SHA256"},
            Config=transfer,
        )
        head = s3.head_object(Bucket=settings.bucket, Key=key)
    except (BotoCoreError, ClientError, S3UploadFailedError, OSError) as exc:
        cause = (exc.__cause__ or exc.__context__) if isinstance(exc, S3UploadFailedError) else exc
        what = f"upload of {path} to s3://{settings.bucket}/{key}"
        raise as_storage_error(settings, what, cause or exc) from exc
    if head["ContentLength"] != size or head.get("Metadata", {}).get("sha256") != sha256:
        raise StorageError(f"s3://{settings.bucket}/{key}: server copy does not match {path}")
    return {"url": settings.url(key), "key": key, "bytes": size, "sha256": sha256}


def require_bucket(s3, settings: StorageSettings, what: str) -> None:
    """The bucket exists and answers; ``what`` names the work that needs it in the error."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        s3.head_bucket(Bucket=settings.bucket)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchBucket"):
            raise StorageError(
                f"bucket {settings.bucket!r} does not exist at {settings.endpoint}; create it "
                f"(`mc mb <alias>/{settings.bucket}`) or set storage.bucket"
            ) from exc
        raise as_storage_error(settings, what, exc) from exc
    except BotoCoreError as exc:
        raise as_storage_error(settings, what, exc) from exc


def run_folder_files(run_dir: str | Path) -> list[str]:
    """The files of a run folder besides its three artifacts, as paths relative to it: what
    goes to S3 with them when the local copies are to be deleted. Checkpoints stay out (a
    finished run deletes its own), and so do temporary files."""
    run_dir = Path(run_dir)
    found = []
    for path in sorted(run_dir.rglob("*")):
        relative = path.relative_to(run_dir)
        if not path.is_file() or relative.as_posix() in ARTIFACT_NAMES:
            continue
        if path.name.startswith((".", "checkpoint-")):
            continue
        found.append(relative.as_posix())
    return found


def publish_run(
    settings: StorageSettings,
    run_dir: str | Path,
    experiment: str,
    run_id: str,
    *,
    cleanup_local: bool = False,
) -> dict[str, dict[str, Any]]:
    """Uploads the three artifacts, results.json last (its presence means the run is whole).
    With ``cleanup_local`` the folder's other files go first, under ``<run key>/files/``, and
    every uploaded local file is deleted once all of them verified."""
    run_dir = Path(run_dir)
    s3 = client(settings)
    run_key = settings.run_key(experiment, run_id)
    require_bucket(s3, settings, f"upload of {run_dir} to {settings.url(run_key)}/")
    local = []
    if cleanup_local:
        for relative in run_folder_files(run_dir):
            key = f"{run_key}/files/{'/'.join(safe_name(p) for p in relative.split('/'))}"
            upload_verified(s3, settings, run_dir / relative, key)
            local.append(run_dir / relative)
    uploaded: dict[str, dict[str, Any]] = {}
    for filename in sorted(ARTIFACT_NAMES, key=lambda name: name == "results.json"):
        path = run_dir / filename
        if path.is_file():
            info = upload_verified(s3, settings, path, artifact_subkey(run_key, filename))
            uploaded[ARTIFACT_NAMES[filename]] = {**info, "path": str(path)}
            local.append(path)
    if cleanup_local:
        for path in local:
            path.unlink()
        for folder in sorted((p for p in run_dir.rglob("*") if p.is_dir()), reverse=True):
            if not any(folder.iterdir()):
                folder.rmdir()
    return uploaded


def fetch(settings: StorageSettings, url_or_key: str, target: str | Path, s3=None) -> Path:
    """Downloads one object to ``target`` (atomically), checked against its recorded sha256:
    the one way anything here reads a file back from S3."""
    return _fetch(settings, url_or_key, Path(target), s3)[0]


def _fetch(settings: StorageSettings, url_or_key: str, target: Path, s3) -> tuple[Path, bool]:
    """(the file, whether it had a sha256 to check: every object this package writes has
    one; ClearML's own uploads do not)."""
    from botocore.exceptions import BotoCoreError, ClientError

    s3 = s3 or client(settings)
    bucket, key = settings.key_of(url_or_key)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.part")
    try:
        s3.download_file(bucket, key, str(tmp))
        expected = s3.head_object(Bucket=bucket, Key=key).get("Metadata", {}).get("sha256")
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):
            raise StorageError(f"s3://{bucket}/{key}: not found at {settings.endpoint}") from exc
        raise as_storage_error(settings, f"download of s3://{bucket}/{key}", exc) from exc
    except BotoCoreError as exc:
        raise as_storage_error(settings, f"download of s3://{bucket}/{key}", exc) from exc
    actual = sha256_file(tmp)
    if expected and expected != actual:
        tmp.unlink()
        raise StorageError(f"s3://{bucket}/{key}: sha256 {actual} != recorded {expected}")
    os.replace(tmp, target)
    return target, bool(expected)


def list_keys(settings: StorageSettings, prefix: str, s3=None) -> list[str]:
    """Every key under ``prefix`` (a key prefix, or an s3:// URL)."""
    from botocore.exceptions import BotoCoreError, ClientError

    s3 = s3 or client(settings)
    bucket, prefix = settings.key_of(prefix)
    try:
        pages = s3.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix.rstrip("/") + "/"
        )
        return [obj["Key"] for page in pages for obj in page.get("Contents", [])]
    except (BotoCoreError, ClientError) as exc:
        raise as_storage_error(settings, f"listing s3://{bucket}/{prefix}", exc) from exc


def download_verified(
    settings: StorageSettings, url_or_prefix: str, dest: str | Path, s3=None
) -> dict[Path, bool]:
    """Downloads every object under a run prefix, checking each against its sha256; for each
    file, whether it had one."""
    s3 = s3 or client(settings)
    bucket, prefix = settings.key_of(url_or_prefix)
    base = f"s3://{settings.host}/{bucket}/"
    written: dict[Path, bool] = {}
    for key in list_keys(settings, base + prefix, s3):
        relative = Path(*[safe_name(p) for p in key[len(prefix) :].strip("/").split("/")])
        path, checked = _fetch(settings, base + key, Path(dest) / relative, s3)
        written[path] = checked
    if not written:
        raise StorageError(f"nothing found under s3://{bucket}/{prefix} at {settings.endpoint}")
    return written


def fetch_artifacts(
    settings: StorageSettings, run_key: str, dest: str | Path, names: tuple[str, ...]
) -> dict[str, Path]:
    """A finished run's artifacts (``results.json``, ...) side by side in ``dest``."""
    s3 = client(settings)
    return {
        name: fetch(settings, artifact_subkey(run_key, name), Path(dest) / name, s3)
        for name in names
    }


def set_retention(settings: StorageSettings, days: int) -> list[dict[str, Any]]:
    """Expires objects under the prefix after ``days`` (what `mc ilm add --expiry-days` does).

    Rules of other prefixes are kept; ours is replaced. Returns the rules now in force.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    if days < 1:
        raise StorageError(f"retention days must be >= 1, got {days}")
    s3 = client(settings)
    require_bucket(s3, settings, "setting the lifecycle rule")
    try:
        rules = s3.get_bucket_lifecycle_configuration(Bucket=settings.bucket)["Rules"]
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "NoSuchLifecycleConfiguration":
            raise as_storage_error(settings, "reading the lifecycle rules", exc) from exc
        rules = []
    except BotoCoreError as exc:
        raise as_storage_error(settings, "reading the lifecycle rules", exc) from exc
    rules = [r for r in rules if r.get("ID") != LIFECYCLE_RULE_ID]
    rules.append(
        {
            "ID": LIFECYCLE_RULE_ID,
            "Filter": {"Prefix": f"{settings.prefix}/"},
            "Status": "Enabled",
            "Expiration": {"Days": int(days)},
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
        }
    )
    try:
        s3.put_bucket_lifecycle_configuration(
            Bucket=settings.bucket, LifecycleConfiguration={"Rules": rules}
        )
        return s3.get_bucket_lifecycle_configuration(Bucket=settings.bucket)["Rules"]
    except (BotoCoreError, ClientError) as exc:
        raise as_storage_error(settings, "setting the lifecycle rule", exc) from exc

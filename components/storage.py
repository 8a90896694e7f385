"""Artifacts in S3 (MinIO in production): verified uploads, verified downloads, retention.

One code path for `make run` with ``storage.endpoint`` set and for the pipeline's publish
step. Keys follow ClearML's layout so both land side by side:
``<prefix>/<experiment>.<task or run id>/artifacts/<artifact name>/<file>``.
Credentials come from the environment (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``)
or from the host's entry in ``clearml.conf`` (``sdk.aws.s3.credentials``), never from the repo.
"""

from __future__ import annotations

import hashlib
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
    pass


def safe_name(name: str) -> str:
    """A single key segment: no slashes, no '..', no control characters."""
    cleaned = _UNSAFE.sub("_", name).strip("._") or "unnamed"
    return cleaned.replace("..", "_")


def safe_prefix(prefix: str) -> str:
    return "/".join(safe_name(p) for p in str(prefix).split("/") if p.strip())


@dataclass(frozen=True)
class StorageSettings:
    endpoint: str
    bucket: str = "clearml-artifacts"
    prefix: str = "slm-experiments"
    region: str = "us-east-1"
    max_attempts: int = 5
    connect_timeout: float = 5.0
    read_timeout: float = 30.0

    @classmethod
    def from_config(cls, storage: dict[str, Any]) -> StorageSettings | None:
        """None when no endpoint is configured: results then stay local."""
        endpoint = (storage or {}).get("endpoint")
        if not endpoint:
            return None
        if "://" not in endpoint:
            endpoint = f"{'https' if storage.get('secure') else 'http'}://{endpoint}"
        return cls(
            endpoint=endpoint.rstrip("/"),
            bucket=str(storage.get("bucket") or cls.bucket),
            prefix=safe_prefix(storage.get("prefix") or cls.prefix),
            region=str(storage.get("region") or cls.region),
            max_attempts=int(storage.get("max_attempts") or cls.max_attempts),
            connect_timeout=float(storage.get("connect_timeout") or cls.connect_timeout),
            read_timeout=float(storage.get("read_timeout") or cls.read_timeout),
        )

    @property
    def host(self) -> str:
        return urlparse(self.endpoint).netloc

    def url(self, key: str) -> str:
        """ClearML's form of an object's address: s3://host:port/bucket/key."""
        return f"s3://{self.host}/{self.bucket}/{key}"

    @property
    def output_uri(self) -> str:
        """ClearML's form: the port is required, else the host is taken for an AWS bucket."""
        return f"s3://{self.host}/{self.bucket}/{self.prefix}"

    def run_key(self, experiment: str, run_id: str) -> str:
        return f"{self.prefix}/{safe_name(experiment)}.{safe_name(run_id)}"

    def artifact_key(self, experiment: str, run_id: str, filename: str) -> str:
        """Where ``results.json``, ``predictions.json``, ``memory_usage.json`` of a run go."""
        return f"{self.run_key(experiment, run_id)}/artifacts/{ARTIFACT_NAMES[filename]}/{filename}"


def _clearml_conf_credentials(host: str) -> tuple[str, str] | None:
    path = os.environ.get("CLEARML_CONFIG_FILE") or os.path.expanduser("~/clearml.conf")
    if not os.path.isfile(path):
        return None
    try:
        from pyhocon import ConfigFactory
    except ImportError:
        return None
    conf = ConfigFactory.parse_file(path)
    for entry in conf.get("sdk.aws.s3.credentials", []) or []:
        if str(entry.get("host", "")) == host and entry.get("key") and entry.get("secret"):
            return str(entry["key"]), str(entry["secret"])
    return None


def client(settings: StorageSettings):
    """A boto3 client whose retries (standard mode, backoff) cover 5xx, throttling and drops."""
    import boto3
    from botocore.config import Config

    options: dict[str, Any] = {}
    if not os.environ.get("AWS_ACCESS_KEY_ID"):
        found = _clearml_conf_credentials(settings.host)
        if found:
            options["aws_access_key_id"], options["aws_secret_access_key"] = found
    config = Config(
        s3={"addressing_style": "path"},
        retries={"max_attempts": settings.max_attempts, "mode": "standard"},
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
    )
    return boto3.client(
        "s3", endpoint_url=settings.endpoint, region_name=settings.region, config=config, **options
    )


def _digests(path: Path) -> tuple[str, str]:
    """sha256, and the ETag S3 computes for our transfer settings (MD5, or MD5 of part MD5s)."""
    sha, parts, whole = hashlib.sha256(), [], hashlib.md5()
    with path.open("rb") as fh:
        while chunk := fh.read(MULTIPART_CHUNK):
            sha.update(chunk)
            whole.update(chunk)
            parts.append(hashlib.md5(chunk).digest())
    if path.stat().st_size < MULTIPART_THRESHOLD:
        return sha.hexdigest(), whole.hexdigest()
    return sha.hexdigest(), f"{hashlib.md5(b''.join(parts)).hexdigest()}-{len(parts)}"


def upload_verified(s3, settings: StorageSettings, path: Path, key: str) -> dict[str, Any]:
    """Uploads, then checks size, sha256 and ETag on the server before calling it done."""
    from boto3.exceptions import S3UploadFailedError
    from boto3.s3.transfer import TransferConfig
    from botocore.exceptions import BotoCoreError, ClientError

    sha256, etag = _digests(path)
    size = path.stat().st_size
    transfer = TransferConfig(
        multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=MULTIPART_CHUNK
    )
    try:
        s3.upload_file(
            str(path),
            settings.bucket,
            key,
            ExtraArgs={"Metadata": {"sha256": sha256}},
            Config=transfer,
        )
        head = s3.head_object(Bucket=settings.bucket, Key=key)
    except (BotoCoreError, ClientError, S3UploadFailedError, OSError) as exc:
        raise StorageError(
            f"upload of {path} to s3://{settings.bucket}/{key} at {settings.endpoint} failed "
            f"after {settings.max_attempts} attempts: {exc}"
        ) from exc
    if (
        head["ContentLength"] != size
        or head.get("Metadata", {}).get("sha256") != sha256
        or head["ETag"].strip('"') != etag
    ):
        raise StorageError(f"s3://{settings.bucket}/{key}: server copy does not match {path}")
    return {
        "url": settings.url(key),
        "key": key,
        "bytes": size,
        "sha256": sha256,
    }


def _require_bucket(s3, settings: StorageSettings) -> None:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        s3.head_bucket(Bucket=settings.bucket)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code")
        if code in ("404", "NoSuchBucket"):
            raise StorageError(
                f"bucket {settings.bucket!r} does not exist at {settings.endpoint}; create it "
                f"(`mc mb <alias>/{settings.bucket}`) or set storage.bucket"
            ) from exc
        raise StorageError(
            f"bucket {settings.bucket!r} at {settings.endpoint}: failed after "
            f"{settings.max_attempts} attempts: {exc}"
        ) from exc
    except BotoCoreError as exc:
        raise StorageError(
            f"upload to {settings.endpoint} failed after {settings.max_attempts} attempts: {exc}"
        ) from exc


def publish_run(
    settings: StorageSettings,
    run_dir: str | Path,
    experiment: str,
    run_id: str,
    *,
    cleanup_local: bool = False,
) -> dict[str, dict[str, Any]]:
    """Uploads the three artifacts; deletes local copies only after every upload verified."""
    run_dir = Path(run_dir)
    s3 = client(settings)
    _require_bucket(s3, settings)
    uploaded: dict[str, dict[str, Any]] = {}
    for filename, artifact in ARTIFACT_NAMES.items():
        path = run_dir / filename
        if path.is_file():
            key = settings.artifact_key(experiment, run_id, filename)
            uploaded[artifact] = {**upload_verified(s3, settings, path, key), "path": str(path)}
    if cleanup_local:
        for info in uploaded.values():
            Path(info["path"]).unlink()
    return uploaded


def fetch_object(s3, bucket: str, key: str, target: Path) -> Path:
    """Downloads one object to ``target`` (atomically), checked against its recorded sha256."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.part")
    s3.download_file(bucket, key, str(tmp))
    expected = s3.head_object(Bucket=bucket, Key=key).get("Metadata", {}).get("sha256")
    actual = sha256_file(tmp)
    if expected and expected != actual:
        tmp.unlink()
        raise StorageError(f"s3://{bucket}/{key}: sha256 {actual} != recorded {expected}")
    os.replace(tmp, target)
    return target


def download_verified(
    settings: StorageSettings, url_or_prefix: str, dest: str | Path
) -> list[Path]:
    """Downloads every object under a run prefix, checking each against its sha256."""
    s3 = client(settings)
    parsed = urlparse(url_or_prefix)
    if parsed.scheme == "s3":
        # s3://host:port/bucket/key... (ClearML's form)
        bucket, _, prefix = parsed.path.lstrip("/").partition("/")
    else:
        bucket, prefix = settings.bucket, url_or_prefix.strip("/")
    dest = Path(dest)
    written: list[Path] = []
    paginator = s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix.rstrip("/") + "/"):
        for obj in page.get("Contents", []):
            key = obj["Key"]
            relative = Path(*[safe_name(p) for p in key[len(prefix) :].strip("/").split("/")])
            written.append(fetch_object(s3, bucket, key, dest / relative))
    if not written:
        raise StorageError(f"nothing found under s3://{bucket}/{prefix} at {settings.endpoint}")
    return written


def set_retention(settings: StorageSettings, days: int) -> list[dict[str, Any]]:
    """Expires objects under the prefix after ``days`` (what `mc ilm add --expiry-days` does).

    Rules of other prefixes are kept; ours is replaced. Returns the rules now in force.
    """
    from botocore.exceptions import ClientError

    if days < 1:
        raise StorageError(f"retention days must be >= 1, got {days}")
    s3 = client(settings)
    try:
        rules = s3.get_bucket_lifecycle_configuration(Bucket=settings.bucket)["Rules"]
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "NoSuchLifecycleConfiguration":
            raise
        rules = []
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
    s3.put_bucket_lifecycle_configuration(
        Bucket=settings.bucket, LifecycleConfiguration={"Rules": rules}
    )
    return s3.get_bucket_lifecycle_configuration(Bucket=settings.bucket)["Rules"]

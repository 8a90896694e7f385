"""Files in S3 (MinIO in production): ``StorageConfig`` (``storage.*``) and ``S3``, one
endpoint and bucket with its client, for verified uploads and downloads and the key layout.

One code path for `make run` with ``storage.endpoint`` set, every ClearML step and the tools
that read results back. Keys follow ClearML's layout: ``<prefix>/<experiment>.<task or run
id>/artifacts/<artifact name>/<file>``.
Uploads carry a SHA-256 checksum that the server checks (botocore's flexible checksums),
plus the whole file's sha256 as object metadata, which every download is checked against.
Credentials: the environment (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``) or a source in
``CREDENTIAL_SOURCES`` (the ClearML wing adds clearml.conf's entry), never the repo.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from components.atomic import sha256_file
from components.settings import positive_int

ARTIFACT_NAMES = {
    "results.json": "experiment_results",
    "predictions.json": "model_predictions",
    "memory_usage.json": "memory_usage",
}
MULTIPART_THRESHOLD = 8 * 2**20
MULTIPART_CHUNK = 8 * 2**20
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
# (host, bucket) -> (key, secret) or None; tried in order when the environment has no keys.
CREDENTIAL_SOURCES: list[Callable[[str, str], tuple[str, str] | None]] = []


class StorageError(RuntimeError):
    """S3 failed; ``transient`` when trying again later may work (timeouts, 5xx, drops)."""

    def __init__(self, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


@dataclass
class StorageConfig:
    """``storage.*``: where a run's files go; no endpoint: they stay local."""

    endpoint: str | None = None  # http://host:port (MinIO); null: no S3
    bucket: str = "clearml-artifacts"
    prefix: str = "slm-experiments"
    region: str = "us-east-1"
    max_attempts: int = 5  # per request, with backoff
    connect_timeout: float = 5.0
    read_timeout: float = 30.0

    def __post_init__(self) -> None:
        positive_int(self.max_attempts, "storage.max_attempts")


def safe_name(name: str) -> str:
    """A single key segment: no slashes, no '..', no control characters."""
    cleaned = _UNSAFE.sub("_", name).strip("._") or "unnamed"
    return cleaned.replace("..", "_")


def safe_prefix(prefix: str) -> str:
    return "/".join(safe_name(p) for p in str(prefix).split("/") if p.strip())


def artifact_subkey(run_key: str, filename: str) -> str:
    """An artifact's key under its run's: ``<run key>/artifacts/<name>/<file>``."""
    return f"{run_key}/artifacts/{ARTIFACT_NAMES[filename]}/{filename}"


class S3:
    """One endpoint and bucket, as ``storage.*`` configures them, and the client for them."""

    def __init__(self, config: StorageConfig) -> None:
        endpoint = str(config.endpoint)
        self.endpoint = (endpoint if "://" in endpoint else f"http://{endpoint}").rstrip("/")
        self.bucket = config.bucket
        self.prefix = safe_prefix(config.prefix)
        self.config = config
        self._client = None

    @classmethod
    def from_config(cls, storage: StorageConfig | Mapping[str, Any]) -> S3 | None:
        """None when no endpoint is configured: results then stay local."""
        if not isinstance(storage, StorageConfig):
            names = {f.name for f in fields(StorageConfig)}
            storage = StorageConfig(**{k: v for k, v in (storage or {}).items() if k in names})
        return cls(storage) if storage.endpoint else None

    # ---- the key layout ----------------------------------------------------------------

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

    # ---- the client ----------------------------------------------------------------------

    @property
    def client(self):
        """A boto3 client whose retries (standard mode, backoff) cover 5xx, throttling and
        drops; made on first use."""
        if self._client is None:
            import boto3
            from botocore.config import Config

            options: dict[str, Any] = {}
            if not os.environ.get("AWS_ACCESS_KEY_ID"):
                found = next(
                    (c for s in CREDENTIAL_SOURCES if (c := s(self.host, self.bucket))), None
                )
                if found:
                    options["aws_access_key_id"], options["aws_secret_access_key"] = found
            config = Config(
                s3={"addressing_style": "path"},
                retries={"max_attempts": self.config.max_attempts, "mode": "standard"},
                connect_timeout=self.config.connect_timeout,
                read_timeout=self.config.read_timeout,
                request_checksum_calculation="when_required",
                response_checksum_validation="when_supported",
            )
            self._client = boto3.client(
                "s3",
                endpoint_url=self.endpoint,
                region_name=self.config.region,
                config=config,
                **options,
            )
        return self._client

    def error(self, what: str, exc: Exception) -> StorageError:
        """A botocore error as one line that says what failed and what to do."""
        from botocore.exceptions import ClientError, NoCredentialsError

        if isinstance(exc, NoCredentialsError):
            return StorageError(
                f"{what} at {self.endpoint}: no S3 credentials; export AWS_ACCESS_KEY_ID and "
                f"AWS_SECRET_ACCESS_KEY, or add the host {self.host!r} to "
                "sdk.aws.s3.credentials in clearml.conf"
            )
        code = exc.response.get("Error", {}).get("Code", "") if isinstance(exc, ClientError) else ""
        transient = not code or code.startswith("5") or code in ("SlowDown", "RequestTimeout")
        if not transient:  # refused (access denied, no such bucket): retrying changes nothing
            return StorageError(f"{what} at {self.endpoint} was refused: {exc}")
        return StorageError(
            f"{what} at {self.endpoint} failed after {self.config.max_attempts} attempts: {exc}",
            transient=True,
        )

    def require_bucket(self, what: str) -> None:
        """The bucket exists and answers; ``what`` names the work that needs it in the error."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchBucket"):
                raise StorageError(
                    f"bucket {self.bucket!r} does not exist at {self.endpoint}; create it "
                    f"(`mc mb <alias>/{self.bucket}`) or set storage.bucket"
                ) from exc
            raise self.error(what, exc) from exc
        except BotoCoreError as exc:
            raise self.error(what, exc) from exc

    # ---- uploads ---------------------------------------------------------------------------

    def upload(self, path: Path, key: str) -> dict[str, Any]:
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
            self.client.upload_file(
                str(path),
                self.bucket,
                key,
                ExtraArgs={"Metadata": {"sha256": sha256}, "ChecksumAlgorithm": "SHA256"},
                Config=transfer,
            )
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        except (BotoCoreError, ClientError, S3UploadFailedError, OSError) as exc:
            failed = isinstance(exc, S3UploadFailedError)
            cause = (exc.__cause__ or exc.__context__) if failed else exc
            raise self.error(f"upload of {path} to s3://{self.bucket}/{key}", cause or exc) from exc
        if head["ContentLength"] != size or head.get("Metadata", {}).get("sha256") != sha256:
            raise StorageError(f"s3://{self.bucket}/{key}: server copy does not match {path}")
        return {"url": self.url(key), "key": key, "bytes": size, "sha256": sha256}

    # ---- downloads -------------------------------------------------------------------------

    def fetch(
        self,
        url_or_key: str,
        target: str | Path,
        sha256: str | None = None,
        *,
        accept_unrecorded: bool = False,
    ) -> Path:
        """Downloads one object to ``target`` (atomically), checked against the sha256 it
        was uploaded with and against ``sha256`` (what the sender computed, where it is
        known): the one way anything here reads a file back from S3. An object with neither
        is refused, unless ``accept_unrecorded`` (a user's own input, hashed here instead)."""
        return self._fetch(url_or_key, Path(target), sha256, accept_unrecorded)[0]

    def _fetch(
        self, url_or_key: str, target: Path, expected: str | None, accept_unrecorded: bool
    ) -> tuple[Path, bool]:
        """(the file, whether it had a sha256 to check: every object this package writes
        has one; ClearML's own uploads and a user's inputs do not)."""
        from boto3.exceptions import RetriesExceededError
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, key = self.key_of(url_or_key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.part")
        try:
            self.client.download_file(bucket, key, str(tmp))
            head = self.client.head_object(Bucket=bucket, Key=key)
            recorded = head.get("Metadata", {}).get("sha256")
            actual = sha256_file(tmp)
            for whose, wanted in (("recorded with it", recorded), ("its sender's", expected)):
                if wanted and wanted != actual:
                    raise StorageError(f"s3://{bucket}/{key}: sha256 {actual} != {whose} {wanted}")
            if not (recorded or expected or accept_unrecorded):
                raise StorageError(
                    f"s3://{bucket}/{key}: no sha256 recorded with it, so it cannot be checked "
                    "(this package records one with every file it uploads); upload it again "
                    "through the package (make publish) or run the step that wrote it again"
                )
            os.replace(tmp, target)
        except (BotoCoreError, ClientError, RetriesExceededError) as exc:
            code = exc.response.get("Error", {}).get("Code") if isinstance(exc, ClientError) else 0
            if code in ("404", "NoSuchKey"):
                raise StorageError(f"s3://{bucket}/{key}: not found at {self.endpoint}") from exc
            cause = getattr(exc, "last_exception", None) or exc  # s3transfer's retries ran out
            raise self.error(f"download of s3://{bucket}/{key}", cause) from exc
        finally:
            tmp.unlink(missing_ok=True)  # a local failure too (disk full) leaves no .part
        return target, bool(recorded or expected)

    def exists(self, url_or_key: str) -> bool:
        """Whether the object is there (False for a missing key; other errors raise)."""
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, key = self.key_of(url_or_key)
        try:
            self.client.head_object(Bucket=bucket, Key=key)
        except (BotoCoreError, ClientError) as exc:
            code = exc.response.get("Error", {}).get("Code") if isinstance(exc, ClientError) else ""
            if code in ("404", "NoSuchKey", "NotFound"):
                return False
            raise self.error(f"looking up s3://{bucket}/{key}", exc) from exc
        return True

    def list_keys(self, prefix: str) -> list[str]:
        """Every key under ``prefix`` (a key prefix, or an s3:// URL)."""
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, prefix = self.key_of(prefix)
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix=prefix.rstrip("/") + "/"
            )
            return [obj["Key"] for page in pages for obj in page.get("Contents", [])]
        except (BotoCoreError, ClientError) as exc:
            raise self.error(f"listing s3://{bucket}/{prefix}", exc) from exc

    def download(
        self, url_or_prefix: str, dest: str | Path, *, accept_unrecorded: bool = False
    ) -> dict[Path, bool]:
        """Every object under a run prefix, each checked against its sha256; for each file,
        whether it had one (one without is refused unless ``accept_unrecorded``)."""
        bucket, prefix = self.key_of(url_or_prefix)
        written: dict[Path, bool] = {}
        for key in self.list_keys(f"s3://{self.host}/{bucket}/{prefix}"):
            relative = Path(*[safe_name(p) for p in key[len(prefix) :].strip("/").split("/")])
            url = f"s3://{self.host}/{bucket}/{key}"
            path, checked = self._fetch(url, Path(dest) / relative, None, accept_unrecorded)
            written[path] = checked
        if not written:
            raise StorageError(f"nothing found under s3://{bucket}/{prefix} at {self.endpoint}")
        return written

    def fetch_artifacts(
        self, run_key: str, dest: str | Path, names: tuple[str, ...]
    ) -> dict[str, Path]:
        """A finished run's artifacts (``results.json``, ...) side by side in ``dest``."""
        return {
            name: self.fetch(artifact_subkey(run_key, name), Path(dest) / name) for name in names
        }

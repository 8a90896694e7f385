"""S3 keys from clearml.conf, handed to storage: the host's entry in ``sdk.aws.s3.credentials``,
found the way ClearML itself finds it (``${?ENV}`` substitutions work). The CLI and every
step on an agent register it; storage asks for it when the environment has no keys."""

from __future__ import annotations

from components import storage


def from_clearml_conf(host: str, bucket: str) -> tuple[str, str] | None:
    from clearml.backend_config.bucket_config import S3BucketConfigurations
    from clearml.config import config_obj

    s3 = config_obj.get("sdk.aws.s3", None)
    if not s3:
        return None
    found = S3BucketConfigurations.from_config(s3).get_config_by_uri(f"s3://{host}/{bucket}")
    if found is not None and found.key and found.secret:
        return str(found.key), str(found.secret)
    return None


def register() -> None:
    if from_clearml_conf not in storage.CREDENTIAL_SOURCES:
        storage.CREDENTIAL_SOURCES.append(from_clearml_conf)

"""Storage faults survived: retries with backoff, a clear error with everything kept,
a later publish-only upload, and no multipart upload left behind."""

from __future__ import annotations

import json

import pytest

from components.artifacts import file_info
from components.storage import StorageError, StorageSettings, client, publish_run
from tests.conftest import BUCKET, CREDS, run_module, storage_settings
from tests.fault_proxy import FaultProxy


def run_dir_with_results(tmp_path, size: int = 2000):
    run_dir = tmp_path / "exp"
    run_dir.mkdir()
    for name in ("predictions.json", "memory_usage.json"):
        (run_dir / name).write_text(json.dumps({"name": name, "pad": "x" * size}))
    artifacts = {n: file_info(run_dir / n) for n in ("predictions.json", "memory_usage.json")}
    (run_dir / "results.json").write_text(
        json.dumps({"experiment": "exp", "run_id": "r1", "artifacts": artifacts})
    )
    return run_dir


def through(proxy: FaultProxy, attempts: int = 5) -> StorageSettings:
    return storage_settings(
        endpoint=proxy.endpoint, bucket=BUCKET, max_attempts=attempts, read_timeout=5
    )


def local_names(run_dir) -> list[str]:
    return sorted(p.name for p in run_dir.iterdir())


def test_transient_5xx_and_dropped_connections_are_retried(settings, tmp_path):
    run_dir = run_dir_with_results(tmp_path)
    with FaultProxy(settings.endpoint) as proxy:
        proxy.fail_next, proxy.drop_next = 3, 2
        uploaded = publish_run(through(proxy), run_dir, "exp", "r1", cleanup_local=True)
    assert len(uploaded) == 3
    assert local_names(run_dir) == []  # deleted only after every upload verified


def test_persistent_failure_keeps_everything_then_publish_again_uploads(
    settings, tmp_path, s3_endpoint
):
    run_dir = run_dir_with_results(tmp_path)
    before = local_names(run_dir)
    with FaultProxy(settings.endpoint) as proxy:
        proxy.fail_always = True
        with pytest.raises(StorageError, match="failed after 3 attempts"):
            publish_run(through(proxy, attempts=3), run_dir, "exp", "r1", cleanup_local=True)
        assert len(proxy.seen) >= 3  # retried, not given up at once
    assert local_names(run_dir) == before

    proc = run_module(
        "pipelines.cli.artifacts",
        "artifacts.command=publish",
        f"artifacts.run_dir={run_dir}",
        f"storage.endpoint={s3_endpoint}",
        timeout=120,
        env=CREDS,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("(verified)") == 3
    keys = client(settings).list_objects_v2(Bucket=BUCKET, Prefix="slm-experiments/exp.r1/")
    assert len(keys["Contents"]) == 3


def test_publish_again_refuses_files_changed_since_the_run(settings, tmp_path, s3_endpoint):
    run_dir = run_dir_with_results(tmp_path)
    (run_dir / "predictions.json").write_text("[]")
    from pipelines.artifacts import publish_again

    with pytest.raises(StorageError, match="changed since the run recorded it"):
        publish_again(settings, run_dir, cleanup=False)


def test_a_slow_endpoint_times_out_with_a_clear_error(settings, tmp_path):
    run_dir = run_dir_with_results(tmp_path)
    with FaultProxy(settings.endpoint) as proxy:
        proxy.delay = 2.0
        slow = storage_settings(
            endpoint=proxy.endpoint, bucket=BUCKET, max_attempts=2, read_timeout=0.5
        )
        with pytest.raises(StorageError, match="failed after 2 attempts"):
            publish_run(slow, run_dir, "exp", "r2", cleanup_local=True)
    assert len(local_names(run_dir)) == 3


def test_a_failed_multipart_upload_is_aborted(settings, tmp_path):
    run_dir = run_dir_with_results(tmp_path, size=10 * 2**20)  # above the multipart threshold
    with FaultProxy(settings.endpoint) as proxy:
        proxy.fail_when = "partNumber="
        with pytest.raises(StorageError):
            publish_run(through(proxy, attempts=2), run_dir, "exp", "r9")
    pending = client(settings).list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])
    assert [u for u in pending if "exp.r9" in u["Key"]] == []
    assert len(local_names(run_dir)) == 3

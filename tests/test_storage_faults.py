"""Storage faults survived: retries with backoff, a clear error with everything kept,
a later publish-only upload, and no multipart upload left behind."""

from __future__ import annotations

import json
import re

import pytest

from components.atomic import file_info
from components.run_upload import publish_run
from components.storage import S3, StorageError
from tests.conftest import BUCKET, CREDS, closed_port, make, run_module, storage_settings
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


def through(proxy: FaultProxy, attempts: int = 5) -> S3:
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
        "pipelines.cli.files",
        "files.command=publish",
        f"files.run_dir={run_dir}",
        f"storage.endpoint={s3_endpoint}",
        timeout=120,
        env=CREDS,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("(verified)") == 3
    keys = settings.client.list_objects_v2(Bucket=BUCKET, Prefix="slm-experiments/exp.r1/")
    assert len(keys["Contents"]) == 3


def test_publish_again_refuses_files_changed_since_the_run(settings, tmp_path, s3_endpoint):
    run_dir = run_dir_with_results(tmp_path)
    (run_dir / "predictions.json").write_text("[]")
    from pipelines.runs import publish_again

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
    pending = settings.client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])
    assert [u for u in pending if "exp.r9" in u["Key"]] == []
    assert len(local_names(run_dir)) == 3


@pytest.mark.slow
def test_make_run_with_s3_down_keeps_everything_then_make_publish_uploads(settings, tmp_path):
    """The README's row, through make: S3 does not answer, the run says so after its retries
    (exit 2), every local file stays, and `make publish` uploads them once S3 is back."""
    dead = f"http://127.0.0.1:{closed_port()}"
    out = f"experiment.output_dir={tmp_path}"
    run = make(
        "run",
        f"ARGS=dataset.limit=2 inference.max_new_tokens=4 storage.endpoint={dead} {out}",
        env=CREDS,
    )
    assert run.returncode == 2, run.stderr[-3000:]
    run_dir = tmp_path / "smollm2_135m_sample"
    errors = [line for line in run.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith(f"error: upload of {run_dir} to s3://")
    assert f" at {dead} failed after 5 attempts: " in errors[0]
    ours = [
        line for line in run.stderr.splitlines() if not re.match(r"make(\[\d+\])?: \*\*\*", line)
    ]
    assert ours[-1] == (
        f"every file of the run is kept in {run_dir}/; once S3 answers: make publish "
        f'EXPERIMENT=smollm2_135m_sample ARGS="storage.endpoint={dead}"'
    )
    assert {"results.json", "predictions.json", "memory_usage.json"} <= set(local_names(run_dir))

    publish = make(
        "publish",
        "EXPERIMENT=smollm2_135m_sample",
        f"ARGS=storage.endpoint={settings.endpoint} {out}",
        env=CREDS,
    )
    assert publish.returncode == 0, publish.stderr[-3000:]
    urls = [line.split()[0] for line in publish.stdout.splitlines() if line.endswith("(verified)")]
    names = [u.rsplit("/", 1)[1] for u in urls]
    assert sorted(names) == ["memory_usage.json", "predictions.json", "results.json"]
    assert names[-1] == "results.json"  # last: its presence means the run is whole
    run_id = json.loads((run_dir / "results.json").read_text())["run_id"]
    key = (
        f"slm-experiments/smollm2_135m_sample.{run_id}/artifacts/model_predictions/predictions.json"
    )
    body = settings.client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    assert body == (run_dir / "predictions.json").read_bytes()


def test_a_download_cut_short_every_time_is_transient_and_leaves_no_part_file(settings, tmp_path):
    """s3transfer retries a body cut short, then raises RetriesExceededError (no
    BotoCoreError): it must still read as transient storage trouble, with no `.part` left."""
    from pipelines.clearml.failures import TRANSIENT, classify

    source = tmp_path / "weights.bin"
    source.write_bytes(b"w" * 300_000)
    settings.upload(source, "cut/weights.bin")
    dest = tmp_path / "fetched"
    with FaultProxy(settings.endpoint) as proxy:
        proxy.cut_when = "cut/weights.bin"
        with pytest.raises(StorageError) as caught:
            through(proxy).fetch("cut/weights.bin", dest / "weights.bin")
        assert sum("cut/weights.bin" in r for r in proxy.seen if r.startswith("GET")) > 1
    assert caught.value.transient, caught.value
    assert str(caught.value).startswith(f"download of s3://{BUCKET}/cut/weights.bin at ")
    assert classify(caught.value)[0] == TRANSIENT
    assert list(dest.iterdir()) == []


def test_a_checkpoint_read_cut_short_is_retried_then_transient(settings):
    from components.checkpoint import S3Checkpoint

    checkpoint = S3Checkpoint(settings, "slm-experiments/cut.r1/checkpoints/k")
    checkpoint.append([{"question_id": "q1", "prediction": "Paris"}])
    with FaultProxy(settings.endpoint) as proxy:
        far = S3Checkpoint(through(proxy, attempts=3), checkpoint.prefix)
        proxy.cut_when, proxy.cut_next = "/checkpoints/k/part-", 2
        assert set(far.load()) == {"q1"}  # two cut reads retried
        proxy.cut_when = "/checkpoints/k/part-"
        with pytest.raises(StorageError) as caught:
            far.load()
    assert caught.value.transient, caught.value
    assert "reading checkpoint" in str(caught.value)


def test_a_checkpoint_part_that_does_not_match_its_sha256_is_generated_again(settings, capsys):
    from components.checkpoint import S3Checkpoint

    checkpoint = S3Checkpoint(settings, "slm-experiments/tamper.r1/checkpoints/k")
    checkpoint.append([{"question_id": "q1", "prediction": "Paris"}])
    line = b'{"question_id": "q2", "prediction": "Rome"}\n'
    for name, metadata in (("changed", {"sha256": "0" * 64}), ("unrecorded", {})):
        settings.client.put_object(
            Bucket=BUCKET,
            Key=f"{checkpoint.prefix}/part-{name}.jsonl",
            Body=line,
            Metadata=metadata,
        )
    assert set(checkpoint.load()) == {"q1"}
    warned = capsys.readouterr().err
    assert "part-changed.jsonl: sha256 unrecorded or different" in warned
    assert "part-unrecorded.jsonl: sha256 unrecorded or different" in warned

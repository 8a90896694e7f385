"""Artifacts in S3 against a real S3 endpoint (moto's standalone server on 127.0.0.1)."""

from __future__ import annotations

import hashlib
import json

import pytest

from components.retention import LIFECYCLE_RULE_ID, set_retention
from components.run_upload import publish_run
from components.storage import StorageError, safe_name
from tests.conftest import (
    BUCKET,
    CREDS,
    closed_port,
    make,
    run_cli,
    run_module,
    storage_settings,
)


def fake_run(tmp_path, size: int = 1000):
    run_dir = tmp_path / "exp"
    run_dir.mkdir()
    for name in ("results.json", "predictions.json", "memory_usage.json"):
        (run_dir / name).write_bytes(json.dumps({"name": name, "pad": "x" * size}).encode())
    return run_dir


def test_output_uri_and_key_layout(settings):
    assert settings.output_uri == f"s3://{settings.host}/{BUCKET}/slm-experiments"
    assert settings.run_key("my exp/../x", "abc123") == "slm-experiments/my_exp___x.abc123"
    assert safe_name("../../etc/passwd") == "etc_passwd"
    assert "\n" not in safe_name("a\nb")


def test_publish_uploads_verified_keeps_local_by_default(settings, tmp_path):
    run_dir = fake_run(tmp_path)
    uploaded = publish_run(settings, run_dir, "smollm2_135m_sample", "run1")
    assert set(uploaded) == {"experiment_results", "model_predictions", "memory_usage"}
    key = uploaded["model_predictions"]["key"]
    assert (
        key
        == "slm-experiments/smollm2_135m_sample.run1/artifacts/model_predictions/predictions.json"
    )
    body = settings.client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    assert body == (run_dir / "predictions.json").read_bytes()
    assert uploaded["model_predictions"]["sha256"] == hashlib.sha256(body).hexdigest()
    assert uploaded["model_predictions"]["url"].startswith(f"s3://{settings.host}/{BUCKET}/")
    assert all((run_dir / n).is_file() for n in ("results.json", "predictions.json"))


def test_cleanup_deletes_local_copies_only_after_verified_upload(settings, tmp_path):
    run_dir = fake_run(tmp_path, size=9 * 2**20)  # above the multipart threshold
    uploaded = publish_run(settings, run_dir, "exp", "run2", cleanup_local=True)
    assert len(uploaded) == 3
    assert run_dir.is_dir() and list(run_dir.iterdir()) == []


def test_failed_upload_keeps_every_local_file(settings, tmp_path):
    run_dir = fake_run(tmp_path)
    down = storage_settings(
        endpoint=f"http://127.0.0.1:{closed_port()}", max_attempts=2, connect_timeout=1
    )
    with pytest.raises(StorageError, match="failed after 2 attempts"):
        publish_run(down, run_dir, "exp", "run3", cleanup_local=True)
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "memory_usage.json",
        "predictions.json",
        "results.json",
    ]


def test_missing_bucket_says_how_to_create_it(settings, tmp_path):
    missing = storage_settings(endpoint=settings.endpoint, bucket="no-such")
    with pytest.raises(StorageError, match="bucket 'no-such' does not exist"):
        publish_run(missing, fake_run(tmp_path), "exp", "run5")


def test_retrieval_round_trip_and_tamper_detection(settings, tmp_path):
    run_dir = fake_run(tmp_path)
    uploaded = publish_run(settings, run_dir, "exp", "run4")
    prefix_url = uploaded["experiment_results"]["url"].split("/artifacts/")[0]
    files = settings.download(prefix_url, tmp_path / "back")
    assert len(files) == 3
    got = tmp_path / "back" / "artifacts" / "model_predictions" / "predictions.json"
    assert got.read_bytes() == (run_dir / "predictions.json").read_bytes()

    # The README's command: every file checked, a tampered one refused with its name.
    fetch = ["fetch", f"SRC={prefix_url}", f"ARGS=storage.endpoint={settings.endpoint}"]
    proc = make(*fetch, f"DEST={tmp_path / 'cli'}", env=CREDS)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("(sha256 verified)") == 3
    s3 = settings.client
    key = uploaded["model_predictions"]["key"]
    s3.put_object(Bucket=BUCKET, Key=key, Body=b"tampered", Metadata={"sha256": "0" * 64})
    with pytest.raises(StorageError, match="sha256"):
        settings.download(prefix_url, tmp_path / "again")
    proc = make(*fetch, f"DEST={tmp_path / 'cli2'}", env=CREDS)
    assert proc.returncode == 2 and f"{key}: sha256" in proc.stderr


def test_retention_rule_is_set_and_read_back(settings):
    rules = set_retention(settings, 90)
    ours = [r for r in rules if r["ID"] == LIFECYCLE_RULE_ID]
    assert len(ours) == 1
    assert ours[0]["Expiration"]["Days"] == 90
    assert ours[0]["Filter"]["Prefix"] == "slm-experiments/"
    rules = set_retention(settings, 30)
    assert [r["Expiration"]["Days"] for r in rules if r["ID"] == LIFECYCLE_RULE_ID] == [30]


def test_retention_cli_prints_the_rules(settings, s3_endpoint):
    proc = run_module(
        "pipelines.cli.files",
        "files.command=retention",
        "files.days=45",
        f"storage.endpoint={s3_endpoint}",
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "expire after 45 days" in proc.stdout


@pytest.mark.slow
def test_make_run_with_storage_uploads_results_last_then_cleans_up(settings, tmp_path):
    """The local copies go only after every upload verified; results.json, which says the
    run is whole, is uploaded last; the summary still prints (from memory, not the files)."""
    from tests.fault_proxy import FaultProxy

    with FaultProxy(settings.endpoint) as proxy:
        proc = run_cli(
            "dataset.limit=2",
            "inference.max_new_tokens=6",
            f"storage.endpoint={proxy.endpoint}",
            f"experiment.output_dir={tmp_path}",
            "experiment.cleanup_local_artifacts=true",
            env=CREDS,
        )
        puts = [p for p in proxy.seen if p.startswith("PUT ") and "/artifacts/" in p]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "token recall" in proc.stdout and "local copy deleted" in proc.stdout
    assert puts[-1].endswith("experiment_results/results.json"), puts
    run_dir = tmp_path / "smollm2_135m_sample"
    # About nothing stays: the publish step's own memory report, written after the upload.
    left = sorted(p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file())
    assert left == ["steps/publish.memory.json"]
    results = json.loads(
        settings.client.get_object(Bucket=BUCKET, Key=puts[-1].split(f"/{BUCKET}/", 1)[1])[
            "Body"
        ].read()
    )
    prefix = f"slm-experiments/smollm2_135m_sample.{results['run_id']}/artifacts/"
    listed = settings.client.list_objects_v2(Bucket=BUCKET, Prefix=prefix)["Contents"]
    assert sorted(o["Key"][len(prefix) :] for o in listed) == [
        "experiment_results/results.json",
        "memory_usage/memory_usage.json",
        "model_predictions/predictions.json",
    ]
    files = prefix.replace("/artifacts/", "/files/")
    listed = settings.client.list_objects_v2(Bucket=BUCKET, Prefix=files)["Contents"]
    others = sorted(o["Key"][len(files) :] for o in listed)
    assert {"examples.jsonl", "generations.jsonl", "config.yaml"} <= set(others)
    assert {"steps/load_dataset.memory.json", "steps/inference.memory.json"} <= set(others)
    deleted = results["local_cleanup"]["deleted_after_verified_upload"]
    assert sorted(deleted) == sorted(
        [*others, "predictions.json", "memory_usage.json", "results.json"]
    )
    everything = proc.stdout + proc.stderr
    for path in run_dir.rglob("*"):
        if path.is_file():
            everything += path.read_text(encoding="utf-8", errors="replace")
    assert CREDS["AWS_SECRET_ACCESS_KEY"] not in everything
    assert CREDS["AWS_ACCESS_KEY_ID"] not in everything


def test_a_secret_put_in_the_config_is_refused_and_never_echoed(tmp_path):
    proc = run_cli(f"+storage.secret_key={CREDS['AWS_SECRET_ACCESS_KEY']}", "dataset.limit=1")
    assert proc.returncode == 2
    assert "storage.secret_key" in proc.stderr
    assert CREDS["AWS_SECRET_ACCESS_KEY"] not in proc.stdout + proc.stderr


def test_cached_files_are_used_only_while_whole(settings, tmp_path):
    """A pipeline's load step reuses examples cached under their content key, never a
    copy that is gone or altered: then it reads the dataset again."""
    from pipelines.stores import S3Store

    store = S3Store(settings, "exp", "run1")
    examples = tmp_path / "examples.jsonl"
    examples.write_text('{"question_id": "a"}\n')
    meta = tmp_path / "meta.json"
    meta.write_text('{"count": 1}')
    store.cache("examples", "key1", {"examples.jsonl": examples, "meta.json": meta})
    hit = store.cached("examples", "key1", tmp_path / "hit")
    assert hit is not None and hit["examples.jsonl"].read_text() == examples.read_text()
    assert store.cached("examples", "other", tmp_path / "miss") is None
    key = "slm-experiments/cache/examples/key1/examples.jsonl"
    s3 = settings.client
    metadata = s3.head_object(Bucket=BUCKET, Key=key)["Metadata"]
    s3.put_object(Bucket=BUCKET, Key=key, Body=b'{"question_id": "b"}\n', Metadata=metadata)
    assert store.cached("examples", "key1", tmp_path / "tampered") is None


def test_an_object_without_a_recorded_sha256_is_never_taken_as_checked(settings, tmp_path):
    """An object this package did not upload (no sha256 metadata) is refused wherever a
    result or a step's file is read back; a user's own input, hashed on arrival, and
    `make fetch`, which says so per file, are the two places it is let through."""
    from pipelines.stores import S3Store

    key = "slm-experiments/exp.run6/artifacts/model_predictions/predictions.json"
    settings.client.put_object(Bucket=BUCKET, Key=key, Body=b"[]")
    with pytest.raises(StorageError, match=f"{key}: no sha256 recorded with it"):
        settings.fetch(key, tmp_path / "refused.json")
    assert not (tmp_path / "refused.json").exists()
    cached = "slm-experiments/cache/examples/k/examples.jsonl"
    settings.client.put_object(Bucket=BUCKET, Key=cached, Body=b"{}\n")
    assert S3Store(settings, "exp", "run6").cached("examples", "k", tmp_path / "c") is None
    with pytest.raises(StorageError, match="no sha256 recorded"):
        settings.download("slm-experiments/exp.run6", tmp_path / "strict")
    got = settings.fetch(key, tmp_path / "input.json", accept_unrecorded=True)
    assert got.read_bytes() == b"[]"
    got = settings.download("slm-experiments/exp.run6", tmp_path / "l", accept_unrecorded=True)
    assert list(got.values()) == [False]


def test_a_child_step_reads_exactly_what_its_parent_wrote(settings, tmp_path):
    """The sha256 a step computed as it kept a file travels with the reference; an object
    replaced since, even with metadata that matches its new content, is refused, and so
    is a local file changed between steps."""
    from pipelines.stores import LocalStore, S3Store

    examples = tmp_path / "examples.jsonl"
    examples.write_text('{"question_id": "a"}\n')
    store = S3Store(settings, "exp", "run7")
    ref, sha256 = store.put(examples, "load_dataset")
    assert sha256 == hashlib.sha256(examples.read_bytes()).hexdigest()
    assert store.fetch(ref, tmp_path / "child", sha256).read_bytes() == examples.read_bytes()
    other = tmp_path / "other" / "examples.jsonl"
    other.parent.mkdir()
    other.write_text('{"question_id": "b"}\n')
    settings.upload(other, settings.key_of(ref)[1])  # re-uploaded: its own metadata is right
    with pytest.raises(StorageError, match=f"!= its sender's {sha256}"):
        store.fetch(ref, tmp_path / "child2", sha256)

    local = LocalStore(tmp_path)
    ref, sha256 = local.put(examples, "load_dataset")
    assert local.fetch(ref, tmp_path, sha256) == examples
    examples.write_text('{"question_id": "c"}\n')
    with pytest.raises(StorageError, match="changed after the step that wrote it"):
        local.fetch(ref, tmp_path, sha256)


def finished_run(output_dir, name: str, *, age_days: float, upload_to=None, checkpoint=False):
    """A finished run folder, uploaded (or not), last changed ``age_days`` ago."""
    from components.atomic import file_info

    run_dir = output_dir / name
    run_dir.mkdir(parents=True)
    for filename in ("predictions.json", "memory_usage.json"):
        (run_dir / filename).write_text(json.dumps({"run": name, "file": filename}))
    artifacts = {n: file_info(run_dir / n) for n in ("predictions.json", "memory_usage.json")}
    results = {"experiment": name, "run_id": f"id-{name}", "finished_at": "2026-11-01T00:00:00"}
    (run_dir / "results.json").write_text(json.dumps({**results, "artifacts": artifacts}))
    if checkpoint:
        (run_dir / "checkpoint-abc.jsonl").write_text("{}\n")
    if upload_to is not None:
        publish_run(upload_to, run_dir, name, f"id-{name}")
    os_utime_days(run_dir, age_days)
    return run_dir


def test_make_clean_outputs_removes_only_old_runs_whose_files_are_in_s3(settings, tmp_path):
    out = tmp_path / "outputs"
    gone = finished_run(out, "old_uploaded", age_days=9, upload_to=settings)
    local_only = finished_run(out, "old_local", age_days=9)
    recent = finished_run(out, "recent_uploaded", age_days=2, upload_to=settings)
    running = finished_run(
        out, "old_with_checkpoint", age_days=9, upload_to=settings, checkpoint=True
    )
    changed = finished_run(out, "old_changed_since", age_days=9, upload_to=settings)
    (changed / "predictions.json").write_text("[]")  # differs from what S3 holds
    os_utime_days(changed, 9)
    (out / "sweeps").mkdir()  # not a run folder: never touched
    proc = make(
        "clean-outputs",
        "DAYS=7",
        f"ARGS=storage.endpoint={settings.endpoint} experiment.output_dir={out}",
        env=CREDS,
    )
    assert proc.returncode == 0, proc.stderr
    assert not gone.exists()
    for kept in (local_only, recent, running, changed):
        assert (kept / "results.json").is_file(), kept
    lines = proc.stdout.splitlines()
    assert f"removed {gone}: finished 2026-11-01T00:00:00, in s3://" in "\n".join(lines)
    assert any(
        line.startswith(f"kept {local_only}: not uploaded")
        and "make publish EXPERIMENT=old_local" in line
        for line in lines
    )
    assert f"kept {recent}: changed 2.0 days ago" in lines
    assert f"kept {running}: a checkpoint is there: running, or cut short" in lines
    assert any(line.startswith(f"kept {changed}: not uploaded (") for line in lines)
    assert lines[-1].startswith(f"removed 1 of 5 runs in {out} (")
    assert (out / "sweeps").is_dir()


def os_utime_days(folder, days: float) -> None:
    import os
    import time

    then = time.time() - days * 86400
    for path in [folder, *folder.rglob("*")]:
        os.utime(path, (then, then))

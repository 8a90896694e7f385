"""Inputs named by path or URI (components/inputs.py, pipelines/inputs.py): a local file or
folder, an S3 object or folder through the project's client (moto standing in for MinIO),
each with the identity results.json records; what cannot be fetched is named, once; a model
folder's weights have an identity that the checkpoint key follows."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from components.atomic import sha256_file
from components.checkpoint import checkpoint_key
from components.inputs import FETCHERS, InputError, fetch_input, folder_digest, is_remote
from tests.conftest import BUCKET, run_cli, s3_client


def test_local_inputs_carry_their_sha256_and_a_missing_one_names_the_setting(tmp_path):
    data = tmp_path / "qa.jsonl"
    data.write_text('{"question_id": "1", "question": "Q?", "answer": ["a"]}\n')
    got = fetch_input(str(data), "dataset.path", tmp_path / "in")
    assert got.path == data
    assert got.identity == {"source": "local", "path": str(data), "sha256": sha256_file(data)}
    with pytest.raises(InputError, match=r"dataset.corpus: no such file or folder: '/nope.jsonl'"):
        fetch_input("/nope.jsonl", "dataset.corpus", tmp_path / "in")
    assert is_remote("s3://b/k") and is_remote("clearml://dataset/x")
    assert not is_remote(str(data)) and not is_remote("HuggingFaceTB/SmolLM2-135M-Instruct")


def test_a_clearml_reference_without_the_clearml_wing_says_how_to_run_it(tmp_path, monkeypatch):
    monkeypatch.delitem(FETCHERS, "clearml", raising=False)  # a process that never loaded it
    with pytest.raises(InputError, match="read through ClearML; run it with `make enqueue`"):
        fetch_input("clearml://dataset/abc", "dataset.path", tmp_path)


def test_a_folder_s_identity_follows_its_content_even_when_cached(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    weights = folder / "model.safetensors"
    weights.write_bytes(b"\0" * 64)
    (folder / ".cache").mkdir()
    (folder / ".cache" / "lock").write_text("x")  # hidden: not part of the weights
    cache = tmp_path / "cache"
    first = folder_digest(folder, cache)
    assert folder_digest(folder, cache) == first == folder_digest(folder)
    assert list((cache / "digests").iterdir())  # kept: an unchanged folder is not read again
    weights.write_bytes(b"\1" * 64)  # re-saved in place, same size
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 1000))
    assert folder_digest(folder, cache) != first


@pytest.mark.parametrize(
    "change",
    [
        {"model": {"name": "other", "path": "p", "revision": None}},
        {"model": {"name": "m", "path": "other/path", "revision": None}},
        {"model": {"name": "m", "path": "p", "revision": "v2"}},
        {"weights": "f" * 64},
    ],
)
def test_the_checkpoint_key_follows_the_model_s_name_path_revision_and_weights(change):
    base = {
        "model": {"name": "m", "path": "p", "revision": None},
        "weights": "0" * 64,
        "backend": "ctranslate2",
        "device": "cpu",
        "dtype": "int8",
        "generation": {"max_new_tokens": 8},
        "prompts": "abc",
    }
    assert checkpoint_key(**base) != checkpoint_key(**{**base, **change})


def put(endpoint: str, key: str, body: bytes, bucket: str = "inputs-bucket") -> None:
    client = s3_client(endpoint)
    if bucket not in [b["Name"] for b in client.list_buckets()["Buckets"]]:
        client.create_bucket(Bucket=bucket)
    client.put_object(Bucket=bucket, Key=key, Body=body)  # no sha256 metadata: not ours


def test_s3_objects_and_folders_in_either_url_form(settings, s3_endpoint, tmp_path):
    body = b'{"question_id": "1", "question": "Q?", "answer": ["a"]}\n'
    put(s3_endpoint, "sets/qa.jsonl", body)
    put(s3_endpoint, "models/m/config.json", b"{}")
    put(s3_endpoint, "models/m/weights.bin", b"w")
    got = fetch_input("s3://inputs-bucket/sets/qa.jsonl", "dataset.path", tmp_path, settings)
    assert got.path.read_bytes() == body
    host = settings.host
    assert got.identity == {
        "source": "s3",
        "url": f"s3://{host}/inputs-bucket/sets/qa.jsonl",
        "sha256": sha256_file(got.path),
    }
    clearml_form = f"s3://{host}/inputs-bucket/sets/qa.jsonl"
    assert fetch_input(clearml_form, "dataset.path", tmp_path / "b", settings).identity == (
        got.identity
    )
    folder = fetch_input("s3://inputs-bucket/models/m", "model.path", tmp_path / "c", settings)
    assert sorted(p.name for p in folder.path.iterdir()) == ["config.json", "weights.bin"]
    assert folder.identity["files"] == 2
    assert folder.identity["sha256"] == folder_digest(folder.path)


def test_an_s3_input_that_is_not_there_is_named_and_permanent(settings, tmp_path):
    with pytest.raises(InputError) as caught:
        fetch_input("s3://inputs-bucket/sets/missing.jsonl", "dataset.path", tmp_path, settings)
    message = str(caught.value)
    assert message.startswith("dataset.path: cannot fetch 's3://inputs-bucket/sets/missing.jsonl'")
    assert "check the bucket and key" in message and caught.value.transient is False
    with pytest.raises(InputError, match="storage.endpoint is not set"):
        fetch_input("s3://inputs-bucket/sets/qa.jsonl", "dataset.path", tmp_path, None)


def test_make_run_reads_an_s3_dataset_and_records_what_it_read(
    settings, s3_endpoint, sample_path, sample_run, tmp_path
):
    """`make run` with ``dataset.path=s3://...``: the same answers as the local file's run,
    and results.json names the object and its sha256."""
    lines = sample_path.read_bytes().splitlines(keepends=True)[:4]
    put(s3_endpoint, "sets/sample4.jsonl", b"".join(lines), bucket=BUCKET)
    out = tmp_path / "out"
    proc = run_cli(
        f"dataset.path=s3://{BUCKET}/sets/sample4.jsonl",
        f"storage.endpoint={s3_endpoint}",
        f"storage.bucket={BUCKET}",
        f"experiment.output_dir={out}",
        "experiment.name=from_s3",
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads((out / "from_s3" / "results.json").read_text())
    here = json.loads((sample_run / "predictions.json").read_text())
    there = json.loads((out / "from_s3" / "predictions.json").read_text())
    assert [p["prediction"] for p in there] == [p["prediction"] for p in here]
    identity = results["dataset"]["input"]["dataset"]
    assert identity["source"] == "s3" and identity["url"].endswith("/sets/sample4.jsonl")
    assert identity["sha256"] == results["dataset"]["sha256"]
    assert results["dataset"]["path"] == f"s3://{BUCKET}/sets/sample4.jsonl"


def test_weights_re_saved_in_place_are_not_resumed_from_the_old_answers(
    smollm2_path, tmp_path, sample_path
):
    """A model folder evaluated, its weights file then rewritten in place: the rerun's
    checkpoint key differs, so nothing is taken from the first run's answers."""
    from components.inference.config import InferenceConfig
    from components.inference.plan import plan_inference
    from components.model_files import ModelConfig

    folder = tmp_path / "model"
    shutil.copytree(smollm2_path, folder)
    model = ModelConfig(name="local", path=str(folder))
    examples = [{"question": "Who wrote Hamlet?"}]
    inference = InferenceConfig(backend="transformers", device="cpu", dtype="float32")
    first = plan_inference(model, inference, examples)
    assert first.files.weights_sha256 == folder_digest(folder)
    assert first.files.identity["sha256"] == first.files.weights_sha256
    weights = next(folder.glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 1000))
    again = plan_inference(model, inference, examples)
    assert again.key != first.key and again.files.weights_sha256 != first.files.weights_sha256


def test_a_local_model_folder_needs_no_fetching(tmp_path):
    from components.model_files import ModelConfig
    from pipelines.inputs import fetched_model

    assert fetched_model(ModelConfig(name="m", path=str(tmp_path)), run=None) is None

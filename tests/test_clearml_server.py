"""The ClearML path for real: a local ClearML server, agents in docker mode on the services,
cpu and gpu queues (`make agent`; the gpu queue served on CPU by the CUDA image), every step
in its own container of the images `make docker-build` made, moto's S3 server standing in
for MinIO, and the README's own commands (`make enqueue`, `make enqueue-sweep`, `make
fetch`), run as a user runs them. Clone-and-edit goes through the server's REST API, the
way the web UI does it (tests/test_web_ui.py does it in the UI itself).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from components.device import cpu_has_amx
from components.inputs import folder_digest
from tests import docker_stack
from tests.clearml_stack import BUCKET, wait_until
from tests.conftest import ROOT, make, model_folder_copy, s3_client

pytestmark = [pytest.mark.slow, pytest.mark.server, pytest.mark.docker]
PIPELINE_TIMEOUT = 420
ARTIFACTS = {
    "experiment_results/results.json",
    "model_predictions/predictions.json",
    "memory_usage/memory_usage.json",
}


def enqueue(stack, *args: str, queue: str = "gpu") -> str:
    """`make enqueue QUEUE=... ARGS="..."`; returns the pipeline's task id."""
    endpoint = f"storage.endpoint={stack.s3_endpoint}"
    proc = make(
        "enqueue", f"QUEUE={queue}", f"ARGS={' '.join([*args, endpoint])}", base_env=stack.env
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    line = next(x for x in proc.stdout.splitlines() if x.startswith("pipeline "))
    return line.split("(", 1)[1].split(")", 1)[0]


def failure(task: dict) -> str:
    """Why a pipeline failed, as its controller recorded it: in its status message, where a
    user looks first, and the same in its ``failure_reason`` property."""
    properties = task["hyperparams"].get("properties", {})
    assert "failure_reason" in properties, (task["status_message"], task["status_reason"])
    reason = properties["failure_reason"]["value"]
    assert task["status_message"] == reason
    return reason


def finished(stack, task_id: str, status: str = "completed") -> dict:
    api = stack.api()
    task = api.wait(task_id, PIPELINE_TIMEOUT)
    if task["status"] != status:
        children = api.children(task_id).items()
        steps = {n: (t["status"], t.get("status_message")) for n, t in children}
        raise AssertionError(
            f"{task['status']}: {task.get('status_message')}\nsteps: {steps}\n"
            + api.log(task_id)[-3000:]
        )
    return task


def s3_json(stack, key: str):
    from tests.conftest import s3_client

    body = s3_client(stack.s3_endpoint).get_object(Bucket=BUCKET, Key=key)["Body"].read()
    return json.loads(body)


def run_files(stack, experiment: str, task_id: str) -> tuple[dict, list]:
    base = f"slm-experiments/{experiment}.{task_id}/artifacts"
    return (
        s3_json(stack, f"{base}/experiment_results/results.json"),
        s3_json(stack, f"{base}/model_predictions/predictions.json"),
    )


def keys_under(stack, prefix: str) -> set[str]:
    from tests.conftest import s3_client

    pages = (
        s3_client(stack.s3_endpoint)
        .get_paginator("list_objects_v2")
        .paginate(Bucket=BUCKET, Prefix=prefix)
    )
    return {o["Key"][len(prefix) :] for page in pages for o in page.get("Contents", [])}


def answers(predictions: list[dict]) -> dict[str, str]:
    return {p["question_id"]: p["prediction"] for p in predictions}


@pytest.fixture(scope="module")
def first_pipeline(clearml_stack):
    """The README's command with default names: `make enqueue QUEUE=gpu ARGS="..."`."""
    started = time.monotonic()
    task_id = enqueue(clearml_stack, "dataset.limit=4")
    task = finished(clearml_stack, task_id)
    return {"id": task_id, "task": task, "seconds": time.monotonic() - started}


def test_make_enqueue_runs_the_pipeline_on_the_agents(clearml_stack, first_pipeline, sample_run):
    api, task_id = clearml_stack.api(), first_pipeline["id"]
    steps = api.children(task_id)
    assert set(steps) == {"load_dataset", "inference", "score", "publish"}
    assert {n: t["status"] for n, t in steps.items()} == dict.fromkeys(steps, "completed")
    queues = {q["id"]: q["name"] for q in api("queues.get_all")["queues"]}
    queue = {n: queues[t["execution"]["queue"]["id"]] for n, t in steps.items()}
    assert queue == {"load_dataset": "cpu", "inference": "gpu", "score": "cpu", "publish": "cpu"}
    # S3: the documented layout, under the pipeline's own id.
    prefix = f"slm-experiments/smollm2_135m_sample.{task_id}/"
    keys = keys_under(clearml_stack, prefix)
    assert {f"artifacts/{a}" for a in ARTIFACTS} <= keys
    assert any(k.startswith("checkpoints/") for k in keys)
    # The controller: Args, the editable config object, metrics, artifact links.
    task = api.task(task_id)
    args = {p["name"]: p["value"] for p in task["hyperparams"]["Args"].values()}
    assert args["eval_limit"] == "4" and args["eval_model"] == "smollm2_135m"
    assert args["gpu_queue"] == "gpu" and args["eval_dataset_path"] == ""
    config = task["configuration"]["experiment_config"]["value"]
    assert "${project_root:data/sample/qa_pairs.jsonl}" in config
    assert "${model.name}_${dataset.name}" in config
    metrics = {
        (v["metric"], v["variant"]): v["value"]
        for m in task["last_metrics"].values()
        for v in m.values()
    }
    links = {a["key"]: a["uri"] for a in task["execution"]["artifacts"]}
    for name in ("experiment_results", "model_predictions", "memory_usage"):
        assert links[name].startswith(f"s3://{clearml_stack.s3_endpoint.split('://')[1]}/")
    # The results: every step ran this code; the answers are a local run's.
    results, predictions = run_files(clearml_stack, "smollm2_135m_sample", task_id)
    assert results["run_id"] == task_id and results["counts"]["examples"] == 4
    assert metrics[("metrics", "token_recall")] == pytest.approx(results["token_recall"]["mean"])
    assert set(results["steps"]) == {"load_dataset", "inference", "score", "publish"}
    codes = {s["code"]["source_sha256"] for s in results["steps"].values()}
    assert len(codes) == 1
    local = json.loads((sample_run / "predictions.json").read_text())
    assert answers(predictions) == answers(local)


def test_every_step_ran_in_its_image_and_installed_nothing_at_start(
    clearml_stack, first_pipeline, docker_images
):
    """The controller and each step in a container of the image its queue names, and the
    agent's container bootstrap a no-op: no apt-get, no pip download, clearml-agent from
    the image."""
    api, task_id = clearml_stack.api(), first_pipeline["id"]
    expected = {"load_dataset": "cpu", "inference": "gpu", "score": "cpu", "publish": "cpu"}
    tasks = {"controller": (task_id, "cpu")}
    tasks |= {n: (t["id"], expected[n]) for n, t in api.children(task_id).items()}
    for name, (tid, kind) in tasks.items():
        log = api.log(tid)
        assert docker_stack.started_in_container(log) == (tid, docker_images[kind]), name
        assert not docker_stack.INSTALL_OUTPUT.findall(log), (name, log[:3000])
        assert "Ignoring pip: markers" in log, name  # `pip install -U pip` matched nothing
        assert "Requirement already satisfied: clearml-agent" in log, name


def test_the_seed_s_retrieval_lines_give_the_predictions_themselves(clearml_stack, first_pipeline):
    """docs/storage.md's lines, run as a user runs them (their clearml.conf holds the MinIO
    keys): ``.get()`` is the predictions, ``get_local_copy()`` the file with its sha256."""
    code = f"""
import hashlib, json
from clearml import Task
artifact = Task.get_task(task_id="{first_pipeline["id"]}").artifacts["model_predictions"]
predictions = artifact.get()
path = artifact.get_local_copy()
print(json.dumps({{"predictions": predictions, "hash": artifact.hash,
                  "sha256": hashlib.sha256(open(path, "rb").read()).hexdigest()}}))
"""
    proc = run_module_code(code, clearml_stack.env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    _, predictions = run_files(clearml_stack, "smollm2_135m_sample", first_pipeline["id"])
    assert got["predictions"] == predictions
    assert got["sha256"] == got["hash"]


def run_module_code(code: str, env: dict):
    """Python code in a process of its own, from the project's root (it may import it)."""
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=env, timeout=300
    )


def test_make_fetch_by_task_id_verifies_every_file(clearml_stack, first_pipeline, tmp_path):
    dest = tmp_path / "downloads"
    proc = make(
        "fetch",
        f"TASK={first_pipeline['id']}",
        f"DEST={dest}",
        f"ARGS=storage.endpoint={clearml_stack.s3_endpoint}",
        base_env=clearml_stack.env,
    )
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith(str(dest))]
    assert len(lines) >= 6 and all(line.endswith("  (sha256 verified)") for line in lines), lines
    assert "no sha256 recorded" not in proc.stdout
    results = json.loads((dest / "artifacts/experiment_results/results.json").read_text())
    assert results["run_id"] == first_pipeline["id"]


def clone(stack, task_id: str, name: str) -> str:
    """What the web UI's Clone does."""
    return stack.api()("tasks.clone", task=task_id, new_task_name=name)["id"]


def test_clone_and_edit_an_arg_or_the_configuration_takes_effect(clearml_stack, first_pipeline):
    api = clearml_stack.api()
    by_arg = clone(clearml_stack, first_pipeline["id"], "smollm2_135m_sample edited arg")
    api(
        "tasks.edit_hyper_params",
        task=by_arg,
        hyperparams=[{"section": "Args", "name": "eval_limit", "value": "2"}],
    )
    by_config = clone(clearml_stack, first_pipeline["id"], "smollm2_135m_sample edited config")
    text = api.task(by_config)["configuration"]["experiment_config"]["value"]
    edited = text.replace("max_new_tokens: 32", "max_new_tokens: 3")
    assert edited != text
    api(
        "tasks.edit_configuration",
        task=by_config,
        configuration=[{"name": "experiment_config", "value": edited, "type": "yaml"}],
    )
    for task_id in (by_arg, by_config):
        api("tasks.enqueue", task=task_id, queue_name="services")
    finished(clearml_stack, by_arg)
    finished(clearml_stack, by_config)
    results, _ = run_files(clearml_stack, "smollm2_135m_sample", by_arg)
    assert results["counts"]["examples"] == 2
    results, predictions = run_files(clearml_stack, "smollm2_135m_sample", by_config)
    assert results["counts"]["examples"] == 4
    assert results["config"]["inference"]["max_new_tokens"] == 3
    assert all(p["output_tokens"] <= 3 for p in predictions)


def test_a_retrieval_pipeline_retrieves_on_the_cpu_queue_and_stores_its_index_once(
    clearml_stack,
):
    """`make enqueue` in retriever_context: a retrieve step of its own on the cpu queue,
    between load_dataset and inference; the BM25 index kept once in S3's cache."""
    api = clearml_stack.api()
    task_id = enqueue(
        clearml_stack,
        "experiment_mode=retriever_context",
        "dataset=sample_passages",
        "dataset.limit=4",
        "inference.max_new_tokens=8",
    )
    finished(clearml_stack, task_id)
    steps = api.children(task_id)
    assert set(steps) == {"load_dataset", "retrieve", "inference", "score", "publish"}
    queues = {q["id"]: q["name"] for q in api("queues.get_all")["queues"]}
    assert queues[steps["retrieve"]["execution"]["queue"]["id"]] == "cpu"
    args = {p["name"]: p["value"] for p in api.task(task_id)["hyperparams"]["Args"].values()}
    assert args["eval_mode"] == "retriever_context" and args["eval_top_k"] == "3"
    experiment = "smollm2_135m_sample_passages_retriever_context"
    results, predictions = run_files(clearml_stack, experiment, task_id)
    assert list(results["steps"])[:2] == ["load_dataset", "retrieve"]
    assert results["retrieval"]["gold_recall_at_k"] == 1.0
    assert results["context"]["mode"] == "retriever_context"
    assert all(1 <= len(p["passages"]) <= 3 for p in predictions)
    # The agent's container shares this CPU: with AMX, auto is the packed bf16 engine there.
    expected = "packed" if cpu_has_amx() else "ctranslate2"
    assert results["inference"]["backend"] == expected
    index = keys_under(clearml_stack, "slm-experiments/cache/index/")
    assert len({k.split("/")[0] for k in index}) == 1 and any(k.endswith(".npy") for k in index)


# ---- inputs that live only with the submitter, or on the server ------------------------


def hand_over_lines(stdout: str) -> dict[str, str]:
    """`make enqueue`'s lines about inputs it stored: setting -> the rest of the line."""
    return {
        line.split(":", 1)[0]: line.split(":", 1)[1].strip()
        for line in stdout.splitlines()
        if line.startswith(("dataset.path:", "dataset.corpus:", "model.path:"))
    }


def enqueue_proc(stack, *args: str):
    endpoint = f"storage.endpoint={stack.s3_endpoint}"
    return make("enqueue", "QUEUE=gpu", f"ARGS={' '.join([*args, endpoint])}", base_env=stack.env)


@pytest.fixture(scope="module")
def submitter_inputs(clearml_stack, sample_path, smollm2_path, tmp_path_factory):
    """A dataset file and a model folder in a temporary folder of the submitting side,
    mounted into no container, handed to `make enqueue`."""
    here = tmp_path_factory.mktemp("only_here")
    dataset = here / "my_questions.jsonl"
    dataset.write_bytes(b"".join(sample_path.read_bytes().splitlines(keepends=True)[:4]))
    model = here / "my-checkpoint"
    model_folder_copy(smollm2_path, model)
    args = (f"dataset.path={dataset}", f"model.path={model}", "model.gguf=null")
    proc = enqueue_proc(clearml_stack, *args, "experiment.name=only_here")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    line = next(x for x in proc.stdout.splitlines() if x.startswith("pipeline "))
    task_id = line.split("(", 1)[1].split(")", 1)[0]
    return {"id": task_id, "args": args, "stdout": proc.stdout, "dataset": dataset, "model": model}


def test_a_dataset_and_a_model_only_the_submitter_has_reach_the_agents(
    clearml_stack, submitter_inputs, sample_run
):
    api, task_id = clearml_stack.api(), submitter_inputs["id"]
    finished(clearml_stack, task_id)
    lines = hand_over_lines(submitter_inputs["stdout"])
    digest = hashlib.sha256(submitter_inputs["dataset"].read_bytes()).hexdigest()
    stored = f"/slm-experiments/inputs/{digest}/my_questions.jsonl (uploaded)"
    assert stored in lines["dataset.path"]
    model_id = lines["model.path"].split("clearml://model/", 1)[1].split()[0]
    results, predictions = run_files(clearml_stack, "only_here", task_id)
    local = json.loads((sample_run / "predictions.json").read_text())
    assert answers(predictions) == answers(local)
    assert results["dataset"]["input"]["dataset"]["sha256"] == digest
    assert results["dataset"]["input"]["dataset"]["source"] == "s3"
    model = results["model"]["input"]
    assert model["source"] == "clearml-model" and model["id"] == model_id
    assert model["sha256"] == results["model"]["weights_sha256"]
    # Lineage both ways: the inference step lists the model as its input model, and the
    # model's tasks (the web UI's lineage) list the inference step.
    inference = api.children(task_id)["inference"]
    assert [m["model"]["id"] for m in inference["models"]["input"]] == [model_id]
    users = api("tasks.get_all", **{"models.input.model": [model_id]}, only_fields=["id"])
    assert inference["id"] in [t["id"] for t in users["tasks"]]
    # The same inputs again: nothing is uploaded, the model is the one registered.
    clearml_stack.ensure_queue("parked")  # served by no agent: this pipeline never runs
    again = enqueue_proc(clearml_stack, *submitter_inputs["args"], "clearml.queues.services=parked")
    assert again.returncode == 0, again.stdout + again.stderr
    lines = hand_over_lines(again.stdout)
    assert lines["dataset.path"].endswith("(already stored)")
    assert f"clearml://model/{model_id} " in lines["model.path"]
    parked = next(x for x in again.stdout.splitlines() if x.startswith("pipeline "))
    api("tasks.delete", task=parked.split("(", 1)[1].split(")", 1)[0], force=True)


def test_the_checkpoint_a_training_task_saved_is_evaluated_by_the_task_s_id(
    clearml_stack, submitter_inputs, sample_run
):
    """A training task saves its checkpoint as a ClearML model package (OutputModel), then
    `make enqueue model.path=clearml://task/<id>` evaluates that task's last output model."""
    finished(clearml_stack, submitter_inputs["id"])
    output_uri = f"s3://{clearml_stack.s3_endpoint.split('://', 1)[1]}/{BUCKET}/training"
    code = f"""
from clearml import OutputModel, Task
task = Task.init(project_name="checkpoints", task_name="train", output_uri="{output_uri}",
                 auto_connect_frameworks=False)
model = OutputModel(task=task, name="trained-step-100", framework="PyTorch")
model.update_weights_package(weights_path="{submitter_inputs["model"]}", auto_delete_file=False,
                             async_enable=False)
task.close()
print(task.id)
"""
    proc = run_module_code(code, clearml_stack.env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    training = proc.stdout.strip().splitlines()[-1]
    task_id = enqueue(
        clearml_stack,
        f"model.path=clearml://task/{training}",
        "model.gguf=null",
        "dataset.limit=4",
        "experiment.name=from_training",
    )
    finished(clearml_stack, task_id)
    results, predictions = run_files(clearml_stack, "from_training", task_id)
    model = results["model"]["input"]
    assert model["source"] == "clearml-model" and model["task"] == training
    assert model["name"] == "trained-step-100"
    local = json.loads((sample_run / "predictions.json").read_text())
    assert answers(predictions) == answers(local)


def test_a_model_package_clearml_s_cache_cleanup_stripped_is_unpacked_again(
    clearml_stack, submitter_inputs, tmp_path
):
    """ClearML's disk-space cache cleanup (clearml-agent's default config turns it on below
    10 GB free) deletes cached files one at a time and keeps their folders: a model package
    ClearML had unpacked there came back empty on a later run (CI's failure, "an empty
    folder"). The step unpacks it into a folder of ours, checked against the archive."""
    line = hand_over_lines(submitter_inputs["stdout"])["model.path"]
    model_id = line.split("clearml://model/", 1)[1].split()[0]
    clearml_cache = tmp_path / "clearml-cache"
    code = f"""
import json, pathlib
from pipelines.clearml import inputs
def strip(root):  # what the cleanup leaves: every folder, no file
    for path in pathlib.Path(root).rglob("*"):
        if path.is_file():
            path.unlink()
got = [inputs.fetch("clearml://model/{model_id}", "model.path", pathlib.Path("."))]
strip("{clearml_cache}")
got.append(inputs.fetch("clearml://model/{model_id}", "model.path", pathlib.Path(".")))
strip(got[-1].path)
got.append(inputs.fetch("clearml://model/{model_id}", "model.path", pathlib.Path(".")))
# The cleanup may also take the archive between its download and its unpacking.
from clearml import InputModel
get_weights = InputModel.get_weights
def taken(self, **kwargs):
    InputModel.get_weights = get_weights
    local = get_weights(self, **kwargs)
    pathlib.Path(local).unlink()
    return local
InputModel.get_weights = taken
strip(got[-1].path)
got.append(inputs.fetch("clearml://model/{model_id}", "model.path", pathlib.Path(".")))
print(json.dumps([[str(f.path), f.identity["sha256"]] for f in got]))
"""
    env = {
        **clearml_stack.env,
        "CLEARML_CACHE_DIR": str(clearml_cache),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
    }
    proc = run_module_code(code, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    expected = folder_digest(submitter_inputs["model"])
    assert [sha for _, sha in got] == [expected] * 4
    assert len({path for path, _ in got}) == 1
    assert not Path(got[0][0]).is_relative_to(clearml_cache)


def clearml_data(stack, *args: str) -> str:
    """The clearml-data CLI as a user runs it; its output."""
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "clearml-data"), *args],
        capture_output=True,
        text=True,
        env=stack.env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def made_dataset(
    stack, folder: Path, version: str, lines: list[bytes], name: str = "sample-qa"
) -> str:
    """`clearml-data create / add / close`: a finalized version; returns its id."""
    folder.mkdir()
    (folder / "qa.jsonl").write_bytes(b"".join(lines))
    out = clearml_data(
        stack, "create", "--project", "qa-data", "--name", name, "--version", version
    )
    dataset_id = re.search(r"id=([0-9a-f]{32})", out)[1]
    clearml_data(stack, "add", "--id", dataset_id, "--files", str(folder / "qa.jsonl"))
    clearml_data(stack, "close", "--id", dataset_id)
    return dataset_id


def test_a_clearml_dataset_by_name_and_version_then_a_clone_on_another_version(
    clearml_stack, sample_path, tmp_path
):
    lines = sample_path.read_bytes().splitlines(keepends=True)
    first = made_dataset(clearml_stack, tmp_path / "v1", "1.0.0", lines[:3])
    second = made_dataset(clearml_stack, tmp_path / "v2", "2.0.0", lines[3:5])
    api = clearml_stack.api()
    by_name = "dataset.path=clearml://dataset/qa-data/sample-qa@1.0.0"
    task_id = enqueue(clearml_stack, by_name, "dataset.limit=null")
    finished(clearml_stack, task_id)
    load = api.children(task_id)["load_dataset"]
    shown = {p["name"]: p["value"] for p in load["hyperparams"]["Datasets"].values()}
    assert shown == {"dataset": first}  # the step's CONFIGURATION: Datasets/dataset
    results, _ = run_files(clearml_stack, "smollm2_135m_sample", task_id)
    identity = results["dataset"]["input"]["dataset"]
    assert (identity["id"], identity["version"], identity["file"]) == (first, "1.0.0", "qa.jsonl")
    assert results["counts"]["examples"] == 3
    # The web UI's clone-and-edit of the Arg: the other version by id.
    other = clone(clearml_stack, task_id, "smollm2_135m_sample dataset v2")
    api(
        "tasks.edit_hyper_params",
        task=other,
        hyperparams=[
            {"section": "Args", "name": "eval_dataset_path", "value": f"clearml://dataset/{second}"}
        ],
    )
    api("tasks.enqueue", task=other, queue_name="services")
    finished(clearml_stack, other)
    results, _ = run_files(clearml_stack, "smollm2_135m_sample", other)
    assert results["dataset"]["input"]["dataset"]["id"] == second
    assert results["counts"]["examples"] == 2


def test_an_input_that_cannot_be_fetched_fails_once_naming_it(clearml_stack, first_pipeline):
    api = clearml_stack.api()
    missing = "clearml://dataset/" + "0" * 32
    task_id = clone(clearml_stack, first_pipeline["id"], "smollm2_135m_sample missing data")
    api(
        "tasks.edit_hyper_params",
        task=task_id,
        hyperparams=[{"section": "Args", "name": "eval_dataset_path", "value": missing}],
    )
    api("tasks.enqueue", task=task_id, queue_name="services")
    reason = failure(finished(clearml_stack, task_id, status="failed"))
    assert f"InputError: dataset.path: cannot fetch '{missing}'" in reason
    load_log = api.log_with(api.children(task_id)["load_dataset"]["id"], "step failed (permanent)")
    assert load_log.count("step failed (permanent)") == 1 and "Retrying" not in load_log


# ---- checkpoints evaluated as they appear ----------------------------------------------


def test_make_watch_evaluates_a_published_model_once_and_ranks_it(
    clearml_stack, submitter_inputs, sample_run
):
    """`make watch`: a watcher on the services queue; a model then published in the watched
    project starts exactly one pipeline per dataset, whose result reaches the leaderboard
    the watcher keeps."""
    api = clearml_stack.api()
    finished(clearml_stack, submitter_inputs["id"])
    if not api("projects.get_all", name="^checkpoints$")["projects"]:
        api("projects.create", name="checkpoints", description="a training run's checkpoints")
    settings = f"dataset.limit=4 watch.poll_s=3 storage.endpoint={clearml_stack.s3_endpoint}"
    proc = make(
        "watch",
        "PROJECT=checkpoints",
        "DATASETS=sample",
        f"ARGS={settings}",
        base_env=clearml_stack.env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    line = next(x for x in proc.stdout.splitlines() if x.startswith("watch checkpoints ("))
    watcher = line.split("(", 1)[1].split(")", 1)[0]
    try:
        api.log_with(watcher, "watching models of 'checkpoints'", timeout=180)
        # What training produced: the submitter's checkpoint, registered anew in the watched
        # project (as a training task's OutputModel would be), then published.
        results, _ = run_files(clearml_stack, "only_here", submitter_inputs["id"])
        uri = results["model"]["input"]["uri"]
        bucket, key = uri.split("/", 4)[3], uri.split("/", 4)[4]
        client = s3_client(clearml_stack.s3_endpoint)
        client.copy_object(
            Bucket=bucket, Key=f"{key}.ckpt-1.zip", CopySource={"Bucket": bucket, "Key": key}
        )
        code = f"""
from clearml import InputModel
model = InputModel.import_model(weights_url="{uri}.ckpt-1.zip", name="ckpt-1",
                                project="checkpoints", is_package=True)
model.publish()
print(model.id)
"""
        proc = run_module_code(code, clearml_stack.env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        model_id = proc.stdout.strip().splitlines()[-1]
        tag = "watch:checkpoints"

        def started():
            return api("tasks.get_all", tags=[tag], only_fields=["id", "name"])["tasks"] or None

        pipelines = wait_until(started, 240, what="the watcher's pipeline")
        finished(clearml_stack, pipelines[0]["id"])
        api.log_with(watcher, "leaderboard: 1 run(s), 0 without results", timeout=240)
        pipelines = started()
        assert len(pipelines) == 1 and pipelines[0]["name"] == "ckpt-1_sample"
        results, predictions = run_files(clearml_stack, "ckpt-1_sample", pipelines[0]["id"])
        assert results["model"]["input"]["id"] == model_id
        local = json.loads((sample_run / "predictions.json").read_text())
        assert answers(predictions) == answers(local)
        artifacts = {a["key"] for a in api.task(watcher)["execution"]["artifacts"]}
        assert {"leaderboard_csv", "leaderboard_md", "leaderboard_png"} <= artifacts
    finally:
        api("tasks.stop", task=watcher, force=True)


def test_a_failure_only_the_agent_sees_fails_once_with_its_reason(clearml_stack, first_pipeline):
    bad = clearml_stack.data / "bad.jsonl"  # mounted into the agents' containers
    bad.write_text('{"question_id": "a", "question": "Q?", "answer": []}\n')
    api = clearml_stack.api()
    task_id = clone(clearml_stack, first_pipeline["id"], "smollm2_135m_sample bad data")
    api(
        "tasks.edit_hyper_params",
        task=task_id,
        hyperparams=[{"section": "Args", "name": "eval_dataset_path", "value": str(bad)}],
    )
    api("tasks.enqueue", task=task_id, queue_name="services")
    task = finished(clearml_stack, task_id, status="failed")
    assert f"{bad}:1: answer: is an empty list" in failure(task)
    api.log_with(task_id, "not retried (permanent)")
    load_log = api.log_with(api.children(task_id)["load_dataset"]["id"], "step failed (permanent)")
    assert load_log.count("step failed (permanent)") == 1  # one attempt
    assert "Retrying" not in load_log
    assert "inference" not in api.children(task_id)


def refused_enqueue(stack, args: str, storage: bool = True) -> str:
    """`make enqueue` that must fail (exit 2) and create no task: its stderr."""
    before = len(stack.api()("tasks.get_all_ex", only_fields=["id"])["tasks"])
    endpoint = f" storage.endpoint={stack.s3_endpoint}" if storage else ""
    proc = make("enqueue", "QUEUE=gpu", f"ARGS={args}{endpoint}", base_env=stack.env)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    after = len(stack.api()("tasks.get_all_ex", only_fields=["id"])["tasks"])
    assert after == before
    return proc.stderr


def test_a_bad_dataset_is_refused_before_anything_is_created(clearml_stack, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question_id": "a", "question": "Q?", "answer": ["x"]}\n{"question": 3}\n')
    stderr = refused_enqueue(clearml_stack, f"dataset=qa_pairs dataset.path={bad}")
    assert f"{bad}:2: question: must be a string" in stderr


@pytest.mark.parametrize("kind", ["services", "cpu", "gpu"])
def test_a_missing_queue_says_so_and_leaves_nothing_behind(clearml_stack, kind):
    stderr = refused_enqueue(clearml_stack, f"clearml.queues.{kind}=no-such-{kind}")
    assert stderr.startswith(f"error: no queue named 'no-such-{kind}' on the ClearML server")
    assert f"make agent QUEUE=no-such-{kind}" in stderr


def test_no_storage_endpoint_is_refused_before_anything_is_created(clearml_stack):
    stderr = refused_enqueue(clearml_stack, "", storage=False)
    assert stderr.startswith("error: storage.endpoint: the pipeline's steps hand their files on")


def test_a_clone_with_an_invalid_arg_fails_its_controller_naming_the_key(
    clearml_stack, first_pipeline
):
    api = clearml_stack.api()
    task_id = clone(clearml_stack, first_pipeline["id"], "smollm2_135m_sample bad arg")
    api(
        "tasks.edit_hyper_params",
        task=task_id,
        hyperparams=[{"section": "Args", "name": "eval_batch_size", "value": "0"}],
    )
    api("tasks.enqueue", task=task_id, queue_name="services")
    task = finished(clearml_stack, task_id, status="failed")
    assert failure(task) == ("config: inference.batch_size: must be an integer >= 1, got 0")
    assert not api.children(task_id)  # no step ran


def test_a_clone_asking_for_a_privileged_container_fails_before_any_step(
    clearml_stack, first_pipeline
):
    """The config object edited as the web UI does: `--privileged -v /:/host` for the gpu
    steps, with the clone's own allowlist widened to match. The controller holds it to the
    deployment's and fails, naming the key and the argument; no step is created."""
    api = clearml_stack.api()
    task_id = clone(clearml_stack, first_pipeline["id"], "smollm2_135m_sample privileged")
    config = yaml.safe_load(api.task(task_id)["configuration"]["experiment_config"]["value"])
    config["clearml"]["docker_args"]["gpu"] = "--ipc=host --privileged -v /:/host"
    config["clearml"]["allowed"]["docker_args"].append(".*")
    api(
        "tasks.edit_configuration",
        task=task_id,
        configuration=[
            {"name": "experiment_config", "value": yaml.safe_dump(config), "type": "yaml"}
        ],
    )
    api("tasks.enqueue", task=task_id, queue_name="services")
    task = finished(clearml_stack, task_id, status="failed")
    assert failure(task).startswith(
        "config: clearml.docker_args.gpu: '--privileged' is not a docker argument steps may ask"
    )
    assert not api.children(task_id)


def test_out_of_memory_is_retried_with_half_the_batch(clearml_stack):
    """The backend raises torch's own out-of-memory error above 2 prompts (the test-only
    hook, through the step's docker arguments): the step fails, transient, and its retry
    generates at half the batch, which the results say."""
    oom = "clearml.docker_args.gpu=\"'--ipc=host --env=SLM_QA_EVAL_TEST_OOM_ABOVE=2'\""
    task_id = enqueue(clearml_stack, "dataset.limit=4", "inference.max_new_tokens=4", oom)
    finished(clearml_stack, task_id)
    results, predictions = run_files(clearml_stack, "smollm2_135m_sample", task_id)
    assert len(predictions) == 4
    assert results["inference"]["batch_size"] == 2
    assert results["inference"]["batch_size_reason"].endswith(
        "capped at 2: an earlier attempt ran out of memory"
    )
    log = clearml_stack.api().log_with(task_id, "retry 1 of 2")
    assert (
        "step inference failed (transient): GenerationOutOfMemory: out of memory at batch "
        "size 4" in log
    )


def test_make_enqueue_sweep_two_models_then_a_leaderboard(clearml_stack):
    def enqueue_sweep():
        return make(
            "enqueue-sweep",
            "QUEUE=gpu",
            "MODELS=smollm2_135m,gemma3_270m",
            "DATASETS=sample",
            "ARGS=dataset.limit=2 inference.max_new_tokens=8 "
            f"storage.endpoint={clearml_stack.s3_endpoint}",
            base_env=clearml_stack.env,
        )

    proc = enqueue_sweep()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    runs = [line.split()[5] for line in proc.stdout.splitlines() if ": enqueued " in line]
    summary = next(x for x in proc.stdout.splitlines() if x.startswith("summary "))
    summary_id = summary.split("(", 1)[1].split(")", 1)[0]
    assert len(runs) == 2
    for task_id in runs:
        finished(clearml_stack, task_id)
    finished(clearml_stack, summary_id)
    names = {}
    for task_id, model in zip(runs, ("smollm2_135m", "gemma3_270m"), strict=True):
        results, _ = run_files(clearml_stack, f"{model}_sample", task_id)
        assert results["model"]["name"] == model and results["run_id"] == task_id
        names[task_id] = model
    api = clearml_stack.api()
    links = {a["key"]: a["uri"] for a in api.task(summary_id)["execution"]["artifacts"]}
    assert {"leaderboard_csv", "leaderboard_md", "leaderboard_png"} <= set(links)
    board = api.children(summary_id)["leaderboard"]
    outputs = json.loads(board["hyperparams"]["return"]["outputs"]["value"])
    assert sorted(r["model"] for r in outputs["rows"]) == ["gemma3_270m", "smollm2_135m"]
    assert {r["run_id"] for r in outputs["rows"]} == set(runs)

    # The same sweep again: both finished pipelines are reused, nothing new is enqueued.
    again = enqueue_sweep()
    assert again.returncode == 0, again.stdout + again.stderr
    reused = [line.split()[6] for line in again.stdout.splitlines() if ": reused pipeline " in line]
    assert reused == runs and ": enqueued " not in again.stdout, again.stdout + again.stderr
    summary = next(x for x in again.stdout.splitlines() if x.startswith("summary "))
    finished(clearml_stack, summary.split("(", 1)[1].split(")", 1)[0])


# ---- when a worker dies ---------------------------------------------------------------


def step_container(api, pipeline_id: str, step: str) -> str:
    """The container running a pipeline's step (found by its task id)."""

    def find():
        task = api.children(pipeline_id).get(step)
        if not task or task["status"] != "in_progress":
            return None
        return docker_stack.container_of_task(task["id"])

    return wait_until(find, 300, poll=0.5, what=f"{step}'s container")


def checkpoint_parts(stack, experiment: str, pipeline_id: str) -> int:
    prefix = f"slm-experiments/{experiment}.{pipeline_id}/checkpoints/"
    return len(keys_under(stack, prefix))


def first_batch_saved(stack, pipeline_id: str) -> None:
    """Waits for the inference step's first checkpointed batch (its hold begins there)."""
    wait_until(
        lambda: checkpoint_parts(stack, "smollm2_135m_sample", pipeline_id) >= 1,
        300,
        poll=0.5,
        what="a checkpointed batch",
    )


SLOW = ("dataset.limit=12", "inference.batch_size=2", "inference.max_new_tokens=12")
# The inference step's first attempt pauses after its first checkpointed batch (the test-only
# hook of components/fault_injection.py, passed through the step's own docker arguments), so
# a kill always lands mid-run; the retry resumes and does not pause.
HOLD = "clearml.docker_args.gpu=\"'--ipc=host --env=SLM_QA_EVAL_TEST_HOLD_S=600'\""


@pytest.fixture(scope="module")
def uninterrupted(clearml_stack, tmp_path_factory):
    """The answers of the same config run locally without interruption."""
    from pipelines.config import compose, to_container
    from pipelines.local import run_local

    out = tmp_path_factory.mktemp("uninterrupted")
    cfg = to_container(compose([*SLOW, f"experiment.output_dir={out}"]))
    outputs = run_local(cfg)
    return answers(json.loads(Path(outputs["score"]["predictions_path"]).read_text()))


def test_a_killed_inference_container_is_retried_and_resumes(clearml_stack, uninterrupted):
    api = clearml_stack.api()
    task_id = enqueue(clearml_stack, *SLOW, HOLD)
    container = step_container(api, task_id, "inference")
    first_batch_saved(clearml_stack, task_id)
    docker_stack.docker("kill", container)  # as the OOM killer would
    finished(clearml_stack, task_id)
    results, predictions = run_files(clearml_stack, "smollm2_135m_sample", task_id)
    assert answers(predictions) == uninterrupted
    assert results["counts"]["resumed"] == 2  # the batch saved before the kill, no more
    log = api.log_with(task_id, "retry 1 of 2")
    assert "step inference failed (transient)" in log
    step_log = api.log_with(api.children(task_id)["inference"]["id"], "resuming: 2 of 12")
    assert step_log.count("holding 600 s") == 1  # the retry did not pause


def test_a_lost_gpu_agent_s_step_completes_on_another_agent(clearml_stack, uninterrupted):
    api = clearml_stack.api()
    task_id = enqueue(clearml_stack, *SLOW, HOLD)
    step_container(api, task_id, "inference")
    first_batch_saved(clearml_stack, task_id)
    step = api.children(task_id)["inference"]
    lost = step["last_worker"].split(":", 1)[0]
    clearml_stack.kill_agent(lost)  # the machine is gone: the agent and its containers
    try:
        finished(clearml_stack, task_id)
    finally:
        clearml_stack.start_agent(lost, "gpu")
    step = api.task(step["id"])
    assert not step["last_worker"].startswith(lost)
    results, predictions = run_files(clearml_stack, "smollm2_135m_sample", task_id)
    assert answers(predictions) == uninterrupted
    assert results["counts"]["resumed"] == 2
    api.log_with(task_id, "its agent stopped answering")


def test_the_server_restarting_mid_inference_loses_nothing(clearml_stack, uninterrupted):
    """The apiserver restarts with its data (an upgrade, a crash) while the inference step
    runs and stays down 10 s more: the step goes on generating, the step, its agent and the
    controller wait for the server, and the pipeline completes with an uninterrupted run's
    answers. The outage and the SDK's reconnection stay below the server's watchdog
    threshold (clearml_stack.WATCHDOG), which would otherwise stop the controller as
    non-responsive once the server is back."""
    api = clearml_stack.api()
    hold = "clearml.docker_args.gpu=\"'--ipc=host --env=SLM_QA_EVAL_TEST_HOLD_S=10'\""
    task_id = enqueue(clearml_stack, *SLOW, hold)
    step_container(api, task_id, "inference")
    first_batch_saved(clearml_stack, task_id)
    clearml_stack.restart_api(down_s=10)  # the step's hold ends while the server is down
    task = finished(clearml_stack, task_id)
    results, predictions = run_files(clearml_stack, "smollm2_135m_sample", task_id)
    assert answers(predictions) == uninterrupted
    assert results["counts"]["examples"] == 12
    assert task["status_message"] in ("", None) or "failed" not in task["status_message"]


def test_two_pipelines_of_one_experiment_at_once_never_collide(clearml_stack, tmp_path):
    # Each inference pauses 20 s after its first batch: the two overlap whatever the machine.
    hold = "clearml.docker_args.gpu=\"'--ipc=host --env=SLM_QA_EVAL_TEST_HOLD_S=20'\""
    ids = [
        enqueue(clearml_stack, "dataset.limit=4", "inference.batch_size=2", hold) for _ in range(2)
    ]
    assert ids[0] != ids[1]
    for task_id in ids:
        finished(clearml_stack, task_id)
    inference = []
    for task_id in ids:
        results, predictions = run_files(clearml_stack, "smollm2_135m_sample", task_id)
        assert results["run_id"] == task_id and len(predictions) == 4
        keys = keys_under(clearml_stack, f"slm-experiments/smollm2_135m_sample.{task_id}/")
        assert {f"artifacts/{a}" for a in ARTIFACTS} <= keys
        inference.append(clearml_stack.api().children(task_id)["inference"])
    first, second = inference
    assert first["last_worker"] != second["last_worker"]  # two gpu agents, one step each
    assert {w.split(":")[0] for w in (first["last_worker"], second["last_worker"])} == {
        "gpu1",
        "gpu2",
    }
    assert first["started"] < second["completed"] and second["started"] < first["completed"]
    endpoint = f"storage.endpoint={clearml_stack.s3_endpoint}"
    out = f"experiment.output_dir={tmp_path}"
    board = make(
        "leaderboard",
        f"RUNS={ids[0]},{ids[1]}",
        f"ARGS={endpoint} {out}",
        base_env=clearml_stack.env,
    )
    assert board.returncode == 0, board.stderr
    (csv,) = tmp_path.glob("sweeps/*/leaderboard.csv")
    assert sorted(line.split(",")[-2] for line in csv.read_text().splitlines()[1:]) == sorted(ids)
    compare = make(
        "compare",
        f"A={ids[0]}",
        f"B={ids[1]}",
        f"ARGS={endpoint} {out}",
        base_env=clearml_stack.env,
    )
    assert compare.returncode == 0, compare.stderr
    assert "answers differ on 0 questions" in compare.stdout


def test_a_step_running_other_code_than_its_controller_fails_naming_both(
    clearml_stack, docker_images
):
    """A worker image built from another commit: here, the CUDA image with one line more."""
    skewed = docker_stack.build_skewed(docker_images["gpu"], "slm-qa-eval-gpu:skewed")
    task_id = enqueue(clearml_stack, "dataset.limit=2", f"clearml.images.gpu={skewed}")
    task = finished(clearml_stack, task_id, status="failed")
    message = failure(task)
    assert "step inference failed (permanent: CodeSkew" in message
    assert message.count("source ") >= 2
    step = api_step(clearml_stack, task_id, "inference")
    assert docker_stack.started_in_container(step["log"])[1] == skewed
    assert step["log"].count("step failed (permanent)") == 1  # one attempt
    clearml_stack.api().log_with(task_id, "make docker-build")


def api_step(stack, pipeline_id: str, name: str) -> dict:
    api = stack.api()
    task = api.children(pipeline_id)[name]
    return {**task, "log": api.log_with(task["id"], "Running Task")}


def test_generated_step_script_imports_nothing_heavy_and_names_its_parents(
    clearml_stack, first_pipeline
):
    api = clearml_stack.api()
    steps = api.children(first_pipeline["id"])
    score = steps["score"]
    params = {p["name"]: p["value"] for p in score["hyperparams"]["kwargs_artifacts"].values()}
    assert set(params) == {"load_dataset", "inference"}  # the edges are the data flow
    script = score["script"]["diff"]
    assert "import torch" not in script and "def run_step" in script
    assert os.path.basename(score["script"]["entry_point"]) == "run_step.py"


def test_the_bare_agent_command_runs_a_step_with_the_example_conf_alone(
    clearml_stack, docker_images, sample_run
):
    """The design card's `clearml-agent daemon --queue gpu --docker` (here on its own queue,
    and --cpu-only: no GPU), with nothing but docker/clearml.conf.example filled in behind
    it: the image comes from the step's task, the mounts and the no-op bootstrap from the
    conf."""
    clearml_stack.start_bare_agent("bare", "gpu-bare")
    try:
        task_id = enqueue(clearml_stack, "dataset.limit=4", queue="gpu-bare")
        finished(clearml_stack, task_id)
    finally:
        clearml_stack.kill_agent("bare")
    step = api_step(clearml_stack, task_id, "inference")
    assert step["last_worker"] == clearml_stack.worker_ids["bare"]
    assert docker_stack.started_in_container(step["log"])[1] == docker_images["gpu"]
    assert not docker_stack.INSTALL_OUTPUT.findall(step["log"]), step["log"][:3000]
    assert "Requirement already satisfied: clearml-agent" in step["log"]
    hf_cache = clearml_stack.work / "hf-cache"
    assert f"'-v', '{hf_cache}:/root/.cache/huggingface'" in step["log"]  # the conf's mounts
    _, predictions = run_files(clearml_stack, "smollm2_135m_sample", task_id)
    local = json.loads((sample_run / "predictions.json").read_text())
    assert answers(predictions) == answers(local)


def test_make_agent_detaches_and_stop_stops_it(clearml_stack):
    """`make agent` as docs/deploy.md gives it: the agent goes to the background and serves
    its queues; the same command with STOP=1 stops it."""
    args = ["agent", "QUEUE=gpu-detached gpu-detached-low", "GPUS=none"]
    env = clearml_stack.agent_env("detached", docker=True)
    api = clearml_stack.api()

    def registered():
        return [w for w in api("workers.get_all")["workers"] if w["id"].startswith("detached")]

    started = make(*args, base_env=env, timeout=120)
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        (worker,) = wait_until(registered, 60, what="the detached agent to register")
        assert {q["name"] for q in worker["queues"]} == {"gpu-detached", "gpu-detached-low"}
    finally:
        stopped = make(*args, "STOP=1", base_env=env, timeout=120)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    wait_until(lambda: not registered(), 60, what="the detached agent to unregister")

"""The ClearML side, with no server: the DAG under offline mode, each step's generated
standalone script in a clean subprocess, an offline session, and `make enqueue`'s error."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from tests.conftest import BUCKET, ROOT, closed_port, make, run_cli, without_clearml_env

DUMP_DAG = """
import json, sys
from clearml import Task
Task.set_offline(True)
from clearml.backend_interface.task.populate import CreateFromFunction
from pipelines.config import compose
from pipelines.clearml_pipeline import build_pipeline, step_function
pipe = build_pipeline(compose(sys.argv[2:]), gpu_queue=sys.argv[1])
steps = {}
for name, node in pipe.get_pipeline_dag().items():
    kwargs = {k.split("/", 1)[1]: v for k, v in node.parameters.items()}
    script = CreateFromFunction.create_task_from_function(
        step_function(name), function_kwargs=kwargs, function_return=["result"],
        packages=[], dry_run=True, project_name="p", task_name=name,
    )["script"]
    steps[name] = {
        "parents": list(node.parents), "queue": node.queue, "parameters": node.parameters,
        "docker": node.explicit_docker_image, "cache": node.cache_executed_step,
        "container": json.loads(Task.current_task().get_configuration_object(name))["container"],
        "script": script["diff"], "requirements": script["requirements"],
    }
print("DAG=" + json.dumps({
    "steps": steps, "params": pipe.get_parameters(),
    "output_uri": Task.current_task().output_uri,
}))
"""


def dump_dag(env: dict, *overrides: str, gpu_queue: str = "gpu-a100") -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", DUMP_DAG, gpu_queue, *overrides],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("DAG="))
    return json.loads(line[4:])


def test_dag_shape_queues_images_parameters_and_output_uri(clearml_env, s3_endpoint):
    dag = dump_dag(clearml_env, f"storage.endpoint={s3_endpoint}", "dataset.limit=3")
    steps, params = dag["steps"], dag["params"]
    assert list(steps) == ["load_dataset", "inference", "score", "publish"]
    assert [steps[s]["parents"] for s in steps] == [[], ["load_dataset"], ["inference"], ["score"]]
    assert steps["inference"]["queue"] == "${pipeline.gpu_queue}"
    assert {steps[s]["queue"] for s in ("load_dataset", "score", "publish")} == {
        "${pipeline.cpu_queue}"
    }
    assert params["gpu_queue"] == "gpu-a100" and params["cpu_queue"] == "cpu"
    assert steps["inference"]["docker"] == "slm-qa-eval-gpu:0.1.0"
    assert steps["score"]["docker"] == "slm-qa-eval-cpu:0.1.0"
    assert [s for s in steps if steps[s]["cache"]] == ["load_dataset"]
    assert dag["output_uri"] == f"s3://{s3_endpoint.split('://')[1]}/{BUCKET}/slm-experiments"
    assert params["eval_limit"] == 3 and params["eval_model"] == "smollm2_135m"
    hydra_names = {"cfg", "config_name", "help", "overrides", "run"}
    assert not hydra_names & set(params)
    referenced = set()
    for step in steps.values():
        for value in step["parameters"].values():
            referenced |= set(re.findall(r"\$\{pipeline\.(\w+)\}", str(value)))
        referenced |= set(re.findall(r"\$\{pipeline\.(\w+)\}", step["queue"]))
    assert referenced and referenced <= set(params)
    # Steps hand on small strings, never datasets or predictions.
    load_kwargs = steps["load_dataset"]["parameters"]
    assert len(load_kwargs["kwargs/config_json"]) < 10_000
    assert len(load_kwargs["kwargs/dataset_sha256"]) == 64
    assert steps["score"]["parameters"] == {"kwargs_artifacts/previous": "${inference.id}.result"}
    for step in steps.values():
        assert "import torch" not in step["script"] and "import vllm" not in step["script"]
        assert step["requirements"] in ({}, {"pip": []}, None) or not step["requirements"].get(
            "pip"
        )


def test_two_builds_give_identical_step_definitions(clearml_env, s3_endpoint):
    first = dump_dag(clearml_env, f"storage.endpoint={s3_endpoint}")
    second = dump_dag(clearml_env, f"storage.endpoint={s3_endpoint}")
    assert first["steps"] == second["steps"]
    assert first["params"] == second["params"]


def test_dag_shape_does_not_depend_on_parameter_values(clearml_env, s3_endpoint):
    small = dump_dag(clearml_env, f"storage.endpoint={s3_endpoint}", "dataset.limit=1")
    other = dump_dag(
        clearml_env, f"storage.endpoint={s3_endpoint}", "model=qwen3_0.6b", "dataset=nq_open"
    )
    shape = [(n, s["parents"], s["queue"], s["docker"]) for n, s in small["steps"].items()]
    assert shape == [(n, s["parents"], s["queue"], s["docker"]) for n, s in other["steps"].items()]


def _offline_return(home: Path) -> str:
    """The step's return value, as its offline session recorded it (task.json)."""
    sessions = sorted((home / ".clearml" / "cache" / "offline").glob("offline-*/task.json"))
    task = json.loads(sessions[-1].read_text())
    return task["hyperparams"]["return"]["result"]["value"]


@pytest.mark.slow
@pytest.mark.parametrize("shards", [1, 2])
def test_generated_step_scripts_run_standalone_chained_through_s3(
    clearml_env, s3_endpoint, settings, tmp_path, shards
):
    """What an agent would run: each step's script alone, in a clean folder, no repo."""
    from components.storage import client

    dag = dump_dag(
        clearml_env,
        f"storage.endpoint={s3_endpoint}",
        "dataset.limit=3",
        "inference.max_new_tokens=6",
        f"inference.shards={shards}",
    )
    returns: dict[str, str] = {}
    for name, step in dag["steps"].items():
        workdir = tmp_path / name
        workdir.mkdir()
        script = step["script"]
        ref = step["parameters"].get("kwargs_artifacts/previous")
        if ref is not None:  # what the controller resolves ${parent.result} into
            parent = re.match(r"\$\{(\w+)\.id\}", ref)[1]
            wired = f"'previous': {returns[parent]!r}"
            script = re.sub(r"'previous': '[^']*'", lambda _, w=wired: w, script)
        else:
            script = script.replace("'${pipeline.eval_limit}'", "'2'")
            script = re.sub(r"'\$\{pipeline\.eval_\w+\}'", "''", script)
        (workdir / "step.py").write_text(script)
        env = {**clearml_env, "HOME": str(workdir), "CLEARML_OFFLINE_MODE": "1"}
        proc = subprocess.run(
            [sys.executable, "step.py"],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, f"{name}:\n{proc.stderr[-3000:]}"
        returns[name] = _offline_return(workdir)
    previous = returns["publish"]

    state = json.loads(previous)
    assert state["config"]["dataset"]["limit"] == 2  # the knob, cast from its string
    run_id = state["meta"]["run_id"]
    prefix = f"slm-experiments/smollm2_135m_sample.{run_id}/"
    keys = {
        o["Key"][len(prefix) :]
        for o in client(settings).list_objects_v2(Bucket=BUCKET, Prefix=prefix)["Contents"]
    }
    assert {
        "artifacts/experiment_results/results.json",
        "artifacts/model_predictions/predictions.json",
        "artifacts/memory_usage/memory_usage.json",
        "steps/load_dataset/examples.jsonl",
        "steps/inference/generations.jsonl"
        if shards == 1
        else "steps/merge_shards/generations.jsonl",
    } <= keys
    if shards > 1:
        assert {"steps/inference_shard_1/generations.shard1.jsonl"} <= keys
        assert results_ids(settings, prefix) == ["sample-001", "sample-002"]
    body = client(settings).get_object(
        Bucket=BUCKET, Key=prefix + "artifacts/experiment_results/results.json"
    )["Body"]
    results = json.loads(body.read())
    assert results["counts"]["examples"] == 2
    assert {"model_load", "generate", "score"} <= set(results["timing"]["stage_seconds"])


def results_ids(settings, prefix: str) -> list[str]:
    from components.storage import client

    body = client(settings).get_object(
        Bucket=BUCKET, Key=prefix + "artifacts/model_predictions/predictions.json"
    )["Body"]
    return [p["question_id"] for p in json.loads(body.read())]


def test_sharded_dag_runs_shards_side_by_side_on_the_gpu_queue_then_merges(
    clearml_env, s3_endpoint
):
    dag = dump_dag(
        clearml_env,
        f"storage.endpoint={s3_endpoint}",
        "inference.shards=3",
        "inference.backend=vllm",
        "inference.tensor_parallel_size=2",
    )
    steps = dag["steps"]
    shards = ["inference_shard_0", "inference_shard_1", "inference_shard_2"]
    assert list(steps) == ["load_dataset", *shards, "merge_shards", "score", "publish"]
    for index, name in enumerate(shards):
        assert steps[name]["parents"] == ["load_dataset"]
        assert steps[name]["queue"] == "${pipeline.gpu_queue}"
        assert steps[name]["parameters"]["kwargs/shard"] == index
        assert steps[name]["container"]["arguments"] == "--gpus=2 --ipc=host"
    assert steps["merge_shards"]["parents"] == shards
    assert steps["merge_shards"]["queue"] == "${pipeline.cpu_queue}"
    assert steps["score"]["parents"] == ["merge_shards"]
    assert not steps["score"]["container"].get("arguments")


@pytest.mark.slow
def test_offline_session_holds_config_parameters_scalars_and_artifacts(tmp_path):
    proc = run_cli(
        "clearml.mode=offline",
        "dataset.limit=2",
        "inference.max_new_tokens=6",
        f"experiment.output_dir={tmp_path / 'out'}",
        env={"HOME": str(tmp_path)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    zip_path = Path(re.search(r"(\S+\.zip)", proc.stdout).group(1))
    with zipfile.ZipFile(zip_path) as archive:
        names = archive.namelist()
        task = json.loads(archive.read("task.json"))
        metrics = [json.loads(x) for x in archive.read("metrics.jsonl").decode().splitlines() if x]
    assert "experiment_config" in task["configuration"]
    assert task["hyperparams"]["Args"]["eval_limit"]["value"] == "2"
    flat = json.dumps(metrics)
    assert '"token_recall"' in flat and '"seconds per stage"' in flat
    for artifact in ("results.json", "predictions.json", "memory_usage.json"):
        assert any(n.endswith(artifact) for n in names), names


def test_make_enqueue_without_a_server_says_how_to_configure_one(tmp_path):
    started = time.monotonic()
    proc = make(
        "enqueue",
        "QUEUE=gpu",
        base_env=without_clearml_env(),
        env={"HOME": str(tmp_path)},
        timeout=60,
    )
    assert proc.returncode != 0
    assert "no ClearML server is configured" in proc.stderr
    assert "clearml-init" in proc.stderr and "CLEARML_API_HOST" in proc.stderr
    assert time.monotonic() - started < 10
    assert not (tmp_path / ".clearml").exists()  # nothing created, not even offline


def test_make_enqueue_with_an_unreachable_server_fails_fast(tmp_path):
    env = {"HOME": str(tmp_path), "CLEARML_API_HOST": f"http://127.0.0.1:{closed_port()}"}
    proc = make("enqueue", "QUEUE=gpu", base_env=without_clearml_env(), env=env, timeout=60)
    assert proc.returncode != 0
    assert "does not answer" in proc.stderr


def test_controller_and_cpu_steps_never_import_torch_or_vllm(tmp_path, sample_path):
    code = f"""
import json, sys
import pipelines.clearml_pipeline, pipelines.remote
from pipelines.steps import load_dataset_step, score_step
out = load_dataset_step({str(sample_path)!r}, 2, {str(tmp_path)!r})
with open({str(tmp_path / "g.jsonl")!r}, "w") as fh:
    for line in open(out["examples_path"]):
        qid = json.loads(line)["question_id"]
        fh.write(json.dumps(dict(question_id=qid, prediction="Paris", prompt_tokens=1,
                                 output_tokens=1)) + "\\n")
score_step(out["examples_path"], {str(tmp_path / "g.jsonl")!r}, {str(tmp_path)!r})
assert "torch" not in sys.modules, "torch"
assert "vllm" not in sys.modules, "vllm"
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "predictions.json").is_file()

"""The ClearML side without a server, fast: the DAG's edges from the definition, the
controller built under offline mode, settling a pipeline's config from its parameters, the
retry classification, an offline session, and `make enqueue`'s errors. The real thing, on a
real server with agents, is tests/test_clearml_server.py."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from pipelines.clearml.params import portable_config, settle
from pipelines.config import ConfigError, compose, to_container
from pipelines.dag import pipeline_steps
from tests.conftest import (
    BUCKET,
    MODEL_CACHE,
    ROOT,
    closed_port,
    make,
    run_cli,
    without_clearml_env,
)


def test_parents_are_the_steps_a_step_reads_from():
    steps = {s.name: s for s in pipeline_steps(1)}
    assert [s.name for s in pipeline_steps(1)] == ["load_dataset", "inference", "score", "publish"]
    assert steps["inference"].parents == ("load_dataset",)
    assert steps["score"].parents == ("load_dataset", "inference")
    assert steps["publish"].parents == ("load_dataset", "inference", "score")
    sharded = {s.name: s for s in pipeline_steps(3)}
    shards = [f"inference_shard_{i}" for i in range(3)]
    assert list(sharded) == ["load_dataset", *shards, "merge_shards", "score", "publish"]
    assert sharded["merge_shards"].parents == ("load_dataset", *shards)
    assert set(sharded["publish"].parents) == {"load_dataset", *shards, "merge_shards", "score"}
    for i, name in enumerate(shards):
        assert sharded[name].fixed == {"shard": i, "shards": 3}
        assert sharded[name].queue == "gpu"


def test_a_step_definition_travels_as_json_unchanged():
    from pipelines.dag import StepSpec

    for spec in pipeline_steps(2):
        assert StepSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


DUMP_CONTROLLER = """
import json, sys
from clearml import Task
from pipelines.clearml.sdk import prepare_sdk
prepare_sdk()  # as every entry point of the project does before its first task
Task.set_offline(True)
Task.init(project_name="p", task_name="controller", task_type="controller")
from pipelines.clearml.controller import build_controller, evaluation_parameters
from pipelines.config import compose, to_container, validate
from pipelines.dag import steps_for
cfg = validate(to_container(compose(sys.argv[1:])), require_dataset=False)
parameters = evaluation_parameters(cfg, {})
pipe = build_controller(cfg, "controller", steps_for(cfg), parameters=parameters)
task = Task.current_task()
steps = {}
for name, node in pipe.get_pipeline_dag().items():
    definition = json.loads(task.get_configuration_object(name))
    steps[name] = {
        "parents": list(node.parents), "queue": node.queue, "parameters": node.parameters,
        "docker": node.explicit_docker_image,
        "docker_args": (definition["container"] or {}).get("arguments"),
        "script": definition["script"]["diff"],
    }
dag = {"steps": steps, "params": pipe.get_parameters(), "output_uri": task.output_uri}
print("DAG=" + json.dumps(dag))
"""


def dump_controllers(env: dict, *overrides: list[str]) -> list[dict]:
    """Controllers built under offline mode, one process each, side by side."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-X", "faulthandler", "-c", DUMP_CONTROLLER, *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args in overrides
    ]
    dags = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)  # -X faulthandler prints where every thread is
            out, err = proc.communicate()
            pytest.fail(f"building a controller offline hung:\n{out[-2000:]}\n{err[-6000:]}")
        assert proc.returncode == 0, err[-3000:]
        dags.append(json.loads(next(x for x in out.splitlines() if x.startswith("DAG="))[4:]))
    return dags


@pytest.fixture(scope="module")
def controllers(clearml_env_module, s3_endpoint) -> dict:
    """Two controllers built offline: the default pipeline and a sharded tensor-parallel one."""
    endpoint = f"storage.endpoint={s3_endpoint}"
    default, sharded = dump_controllers(
        clearml_env_module,
        [endpoint, "clearml.queues.gpu=gpu-a100"],
        [
            endpoint,
            "inference.shards=2",
            "inference.backend=vllm",
            "inference.tensor_parallel_size=2",
        ],
    )
    return {"default": default, "sharded": sharded}


def test_controller_steps_queues_images_and_edges(controllers, s3_endpoint):
    dag = controllers["default"]
    steps = dag["steps"]
    assert list(steps) == ["load_dataset", "inference", "score", "publish"]
    assert steps["inference"]["queue"] == "gpu-a100"
    assert {steps[s]["queue"] for s in ("load_dataset", "score", "publish")} == {"cpu"}
    assert steps["inference"]["docker"] == "slm-qa-eval-gpu:0.1.0"
    assert steps["score"]["docker"] == "slm-qa-eval-cpu:0.1.0"
    assert dag["output_uri"] == f"s3://{s3_endpoint.split('://')[1]}/{BUCKET}/slm-experiments"
    assert dag["params"]["gpu_queue"] == "gpu-a100" and dag["params"]["eval_dataset_path"] == ""
    for name, step in steps.items():
        refs = {k.split("/", 1)[1]: v for k, v in step["parameters"].items() if "artifacts" in k}
        assert set(refs) == set(step["parents"])  # each edge carries its parent's outputs
        assert all(v == f"${{{k}.id}}.outputs" for k, v in refs.items())
        values = [v for k, v in step["parameters"].items() if k.startswith("kwargs/")]
        assert not any("${" in str(v) for v in values), name  # nothing unresolved
        assert "import torch" not in step["script"] and "def run_step" in step["script"]
    config = json.loads(steps["inference"]["parameters"]["kwargs/config"])
    assert set(config) == {"model", "inference", "experiment_mode"}  # the config it reads


def test_gpu_steps_never_ask_docker_for_gpus(controllers):
    """The agent gives a step its GPUs; a --gpus of the step's own would stack on them."""
    steps = controllers["sharded"]["steps"]
    assert [s for s in steps if s.startswith("inference_shard_")] == [
        "inference_shard_0",
        "inference_shard_1",
    ]
    for step in steps.values():
        assert "--gpus" not in str(step["docker_args"] or "")
    assert steps["inference_shard_0"]["docker_args"] == "--ipc=host"


@pytest.mark.parametrize(
    "path", ["s3://127.0.0.1:9000/bucket/inputs/qa.jsonl", "clearml://dataset/qa-data/qa@1.0.0"]
)
def test_a_remote_dataset_reference_is_attached_as_written(path):
    """Not taken for a file inside the project (a `${project_root:...}` path)."""
    attached = portable_config(compose([f"dataset.path={path}", f"dataset.corpus={path}"]))
    assert attached["dataset"]["path"] == path and attached["dataset"]["corpus"] == path


def test_settle_applies_parameters_as_the_ui_hands_them_over():
    attached = portable_config(compose(["dataset.limit=4"]))
    assert attached["dataset"]["path"] == "${project_root:data/sample/qa_pairs.jsonl}"
    cfg = settle(
        attached,
        {
            "eval_model": "gemma3_270m",
            "eval_limit": "",
            "eval_batch_size": "64",
            "eval_temperature": "0.5",
            "eval_dataset_path": "",
            "gpu_queue": "gpu-a100",
        },
    )
    assert cfg["model"]["name"] == "gemma3_270m"
    assert cfg["model"]["prompt"]["format"] == "completion"
    assert cfg["experiment"]["name"] == "gemma3_270m_sample"  # the default name follows
    assert cfg["dataset"]["limit"] is None and Path(cfg["dataset"]["path"]).is_file()
    assert cfg["inference"]["batch_size"] == 64 and cfg["inference"]["temperature"] == 0.5
    assert cfg["clearml"]["queues"]["gpu"] == "gpu-a100"
    assert settle(attached, {"eval_dataset_path": "/agent/data.jsonl"})["dataset"]["path"] == (
        "/agent/data.jsonl"
    )


def test_an_edited_config_object_is_not_undone_by_unedited_parameters():
    """What the UI's clone-and-edit does: the Args as attached are the baseline; only a
    parameter that differs from it counts. A swapped group keeps the run's other knobs."""
    attached = portable_config(compose(["dataset.limit=5"]))
    args = pipeline_args_of(attached)
    attached["inference"]["max_new_tokens"] = 3  # edited in experiment_config
    cfg = settle(attached, args, baseline=dict(args))
    assert cfg["inference"]["max_new_tokens"] == 3
    cfg = settle(attached, {**args, "eval_max_new_tokens": "7"}, baseline=dict(args))
    assert cfg["inference"]["max_new_tokens"] == 7  # an edited Arg wins
    swapped = settle(attached, {**args, "eval_dataset": "nq_open"}, baseline=dict(args))
    assert swapped["dataset"]["name"] == "nq_open"
    assert swapped["dataset"]["limit"] == 5  # unedited, but still this run's limit


def pipeline_args_of(attached: dict) -> dict[str, str]:
    from pipelines.clearml.params import pipeline_args
    from pipelines.config import validate

    resolved = validate(to_container(compose(["dataset.limit=5"])))
    return {k: "" if v is None else str(v) for k, v in pipeline_args(resolved).items()}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"eval_model": "gpt5"}, "eval_model: unknown model 'gpt5'"),
        ({"eval_limit": "many"}, "dataset.limit"),
        ({"eval_max_new_tokens": "0"}, "inference.max_new_tokens: must be an integer >= 1"),
    ],
)
def test_settle_names_a_bad_parameter(args, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        settle(portable_config(compose()), args)


@pytest.mark.parametrize(
    "where, key",
    [
        ("arg", "Args/eval_max_new_tokens"),
        ("config", "experiment.name"),
        ("nested", "experiment.name"),
    ],
)
def test_an_edit_cannot_read_the_agent_s_environment(monkeypatch, where, key):
    """`${oc.env:...}` pasted into an Arg or the config object in the UI: refused, naming the
    key and the resolver, and the agent's secret is nowhere in the error."""
    monkeypatch.setenv("FOO_SECRET", "s3cr3t-value")
    attached = portable_config(compose())
    args = pipeline_args_of(attached)
    if where == "arg":
        args["eval_max_new_tokens"] = "${oc.env:FOO_SECRET}"
    elif where == "config":
        attached["experiment"]["name"] = "${oc.env:FOO_SECRET}"
    else:
        attached["experiment"]["name"] = "run_${mode_suffix:${oc.env:FOO_SECRET}}"
    with pytest.raises(ConfigError) as caught:
        settle(attached, args, baseline=pipeline_args_of(portable_config(compose())))
    assert str(caught.value).startswith(f"{key}: the resolver 'oc.env' may not run")
    assert "s3cr3t" not in str(caught.value)


def test_the_project_s_own_resolvers_still_run_on_an_edit():
    attached = portable_config(compose())
    attached["experiment"]["name"] = "${model.name}${mode_suffix:oracle_context}"
    assert settle(attached, {})["experiment"]["name"] == "smollm2_135m_oracle_context"


@pytest.mark.parametrize(
    ("key", "value", "refused"),
    [
        ("docker_args.gpu", "--ipc=host --privileged -v /:/host", "'--privileged'"),
        ("docker_args.cpu", "-v /:/host", "'-v=/:/host'"),
        ("docker_args.gpu", "--ipc=host -e SLM_QA_EVAL_TEST_HOLD_S=600", "'-e=SLM_QA_EVAL"),
        ("images.gpu", "attacker/root-shell:latest", "'attacker/root-shell:latest'"),
    ],
)
def test_an_edited_clone_runs_only_the_deployment_s_images_and_docker_args(key, value, refused):
    """A clone whose config object asks for another container is refused before any step is
    made, even when the edit widens its own copy of the allowlist."""
    attached = portable_config(compose())
    kind, _, which = key.partition(".")
    attached["clearml"][kind][which] = value
    attached["clearml"]["allowed"] = {"images": [""], "docker_args": [".*"]}
    with pytest.raises(ConfigError) as caught:
        settle(attached, {})
    assert str(caught.value).startswith(f"clearml.{key}: {refused}"), caught.value


def test_the_agent_s_deployer_may_allow_more_docker_args(monkeypatch):
    from pipelines.clearml.containers import ALLOW_ENV

    attached = portable_config(compose())
    attached["clearml"]["docker_args"]["gpu"] = "--ipc=host --env=SLM_QA_EVAL_TEST_OOM_ABOVE=2"
    monkeypatch.setenv(ALLOW_ENV, "--env=SLM_QA_EVAL_TEST_[A-Z_]+=[0-9]+")
    assert settle(attached, {})["clearml"]["docker_args"]["gpu"].endswith("ABOVE=2")
    monkeypatch.delenv(ALLOW_ENV)
    with pytest.raises(ConfigError, match="'--env=SLM_QA_EVAL_TEST_OOM_ABOVE=2' is not"):
        settle(attached, {})


def test_step_arguments_never_hold_an_unresolved_reference():
    from pipelines.clearml.controller import step_kwargs
    from pipelines.config import validate

    cfg = validate(to_container(compose()))
    cfg["inference"]["system_prompt"] = "say ${x}"  # as a value, after OmegaConf's escapes
    spec = pipeline_steps(1)[1]
    with pytest.raises(ConfigError, match=r"inference: its config holds '\$\{'"):
        step_kwargs(spec, cfg, {"experiment": "e"})


def test_failures_are_told_apart():
    from components.dataset import DatasetError, Problem
    from components.inference.engine import GenerationOutOfMemory
    from components.model_files import ModelFilesError
    from components.storage import StorageError
    from pipelines.clearml.failures import CodeSkew, classify

    permanent = [
        DatasetError("d.jsonl", [Problem("d.jsonl", 3, "answer", "is missing")]),
        ConfigError("inference.batch_size: must be an integer >= 1, got 0"),
        ModelFilesError("the model package 'x' is not installed"),
        CodeSkew("this step runs ..., its controller ..."),
        StorageError("bucket 'b' does not exist"),
        FileNotFoundError("data.jsonl"),
        GenerationOutOfMemory("out of memory at batch size 1", 1),
    ]
    transient = [
        StorageError("upload failed after 5 attempts", transient=True),
        ConnectionError("reset"),
        TimeoutError("slow"),
        GenerationOutOfMemory("out of memory at batch size 64", 64),
    ]
    assert [classify(e)[0] for e in permanent] == ["permanent"] * len(permanent)
    assert [classify(e)[0] for e in transient] == ["transient"] * len(transient)
    assert classify(permanent[0])[1].startswith("DatasetError: d.jsonl: 1 invalid line")


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs Linux's /dev/full")
def test_a_full_disk_is_permanent_and_says_so():
    """ENOSPC is an OSError like a dropped mount, but a retry lands on the same full disk."""
    from components.atomic import DISK_FULL_HINT
    from pipelines.clearml.failures import classify

    with pytest.raises(OSError) as full, open("/dev/full", "w") as fh:
        fh.write("answers")
        fh.flush()
    kind, reason = classify(full.value)
    assert kind == "permanent"
    assert reason.startswith("OSError: [Errno 28] No space left on device")
    assert reason.endswith(DISK_FULL_HINT)


@pytest.mark.slow
def test_offline_session_holds_config_parameters_scalars_and_artifacts(tmp_path):
    proc = run_cli(
        "clearml.mode=offline",
        "dataset.limit=2",
        "inference.max_new_tokens=6",
        f"experiment.output_dir={tmp_path / 'out'}",
        env={"HOME": str(tmp_path), **MODEL_CACHE},
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
    proc = make(
        "enqueue",
        "QUEUE=gpu",
        "ARGS=storage.endpoint=http://127.0.0.1:9",
        base_env=without_clearml_env(),
        env={"HOME": str(tmp_path)},
        timeout=120,
    )
    assert proc.returncode == 2
    assert "no ClearML server is configured" in proc.stderr
    assert "clearml-init" in proc.stderr and "CLEARML_API_HOST" in proc.stderr
    assert not (tmp_path / ".clearml").exists()  # nothing created, not even offline


def test_a_new_user_learns_every_missing_prerequisite_at_once(tmp_path):
    """Neither a server nor storage configured: one message names both, then exit 2."""
    proc = make(
        "enqueue",
        "QUEUE=gpu",
        base_env=without_clearml_env(),
        env={"HOME": str(tmp_path)},
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert "error: 2 things to fix first:" in lines
    assert any(line.startswith("  - storage.endpoint: the pipeline's steps") for line in lines)
    assert any(line.startswith("  - no ClearML server is configured;") for line in lines)
    problems = [line for line in lines if line.startswith("  - ")]
    assert len(problems) == 2, lines  # the ways to configure a server sit under its line
    assert "      - run `clearml-init` and paste the credentials" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_make_enqueue_with_an_unreachable_server_says_it_does_not_answer(tmp_path):
    env = {"HOME": str(tmp_path), "CLEARML_API_HOST": f"http://127.0.0.1:{closed_port()}"}
    proc = make(
        "enqueue",
        "QUEUE=gpu",
        "ARGS=storage.endpoint=http://127.0.0.1:9",
        base_env=without_clearml_env(),
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "does not answer" in proc.stderr


def test_controller_and_cpu_steps_never_import_torch_or_vllm(tmp_path, sample_path):
    code = f"""
import sys
from pathlib import Path
import pipelines.clearml.controller, pipelines.clearml.agent, pipelines.steps
from pipelines.executor import RunContext
from pipelines.stores import LocalStore
from pipelines.steps import load_dataset_step, retrieve_step, score_step
from components.dataset import DatasetConfig
from components.modes import ModeConfig
run = RunContext("e", "r", "now", Path({str(tmp_path)!r}), LocalStore(Path({str(tmp_path)!r})))
corpus = {str(sample_path.parent / "passages.jsonl")!r}
dataset = DatasetConfig(name="sample", path={str(sample_path)!r}, limit=2, corpus=corpus)
mode = ModeConfig(name="retriever_context", template="{{context}} {{question}}",
                  completion_template="{{context}} {{question}}")
out = load_dataset_step(dataset, mode, run)
out = retrieve_step(mode, dataset, out["examples_path"], run)
gen = Path({str(tmp_path)!r}) / "g.jsonl"
line = '{{"question_id": "sample-00%d", "prediction": "Paris", '
line += '"prompt_tokens": 1, "output_tokens": 1}}\\n'
gen.write_text(''.join(line % i for i in (1, 2)))
score_step(out["examples_path"], str(gen), {{"name": "no_context"}}, run)
assert "torch" not in sys.modules, "torch"
assert "vllm" not in sys.modules, "vllm"
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "predictions.json").is_file()

"""Every config group composes, and a bad value fails before any model loads."""

from pathlib import Path

import pytest

from pipelines.config import CONF_DIR, ConfigError, compose, to_container, validate

MODELS = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))
DATASETS = sorted(p.stem for p in (CONF_DIR / "dataset").glob("*.yaml"))


def test_groups_hold_what_the_readme_promises():
    assert {"smollm2_135m", "smollm2_360m", "smollm2_1.7b", "qwen3_0.6b", "gemma3_270m"} <= set(
        MODELS
    )
    assert {"sample", "nq_open", "qa_pairs"} <= set(DATASETS)


@pytest.mark.parametrize("model", MODELS)
def test_every_model_composes(model):
    cfg = to_container(compose([f"model={model}"]))
    assert cfg["model"]["name"] == model
    assert cfg["experiment"]["name"] == f"{model}_sample"


@pytest.mark.parametrize("dataset", DATASETS)
def test_every_dataset_composes(dataset, tmp_path):
    cfg = compose([f"dataset={dataset}", f"dataset.path={tmp_path / 'x.jsonl'}"])
    # Any qa_pairs file is named after itself: two files never share a run's name.
    assert to_container(cfg)["dataset"]["name"] == ("x" if dataset == "qa_pairs" else dataset)


def test_defaults():
    cfg = to_container(compose())
    assert cfg["model"]["name"] == "smollm2_135m"
    assert Path(cfg["dataset"]["path"]).is_file()
    assert cfg["clearml"]["mode"] == "off"
    assert cfg["inference"]["backend"] == "auto"
    assert cfg["experiment"]["output_dir"] == "outputs"
    assert cfg["experiment"]["cleanup_local_artifacts"] is False
    validate(cfg)


def test_nq_open_path_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("NQ_OPEN_PATH", "/data/nq.jsonl")
    assert to_container(compose(["dataset=nq_open"]))["dataset"]["path"] == "/data/nq.jsonl"


def test_qa_pairs_without_a_path_names_the_key():
    with pytest.raises(ConfigError, match=r"dataset\.path"):
        to_container(compose(["dataset=qa_pairs"]))


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("inference.batch_size=0", "inference.batch_size"),
        ("inference.max_new_tokens=-1", "inference.max_new_tokens"),
        ("dataset.limit=0", "dataset.limit"),
        ("dataset.path=/no/such/file.jsonl", "dataset.path"),
        ("inference.temperature=-0.5", "inference.temperature"),
        ("inference.top_p=0", "inference.top_p"),
        ("inference.prompt_template=Q", "inference.prompt_template"),
        ("inference.backend=tgi", "inference.backend"),
        ("inference.device=tpu", "inference.device"),
        ("inference.dtype=int4", "inference.dtype"),
        ("inference.seed=abc", "inference.seed"),
        ("inference.shards=0", "inference.shards"),
        ("inference.tensor_parallel_size=0", "inference.tensor_parallel_size"),
        ("inference.gpu_memory_utilization=1.5", "inference.gpu_memory_utilization"),
        ("sweep.bootstrap_samples=0", "sweep.bootstrap_samples"),
        ("sweep.confidence=95", "sweep.confidence"),
    ],
)
def test_invalid_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(to_container(compose([override])))


def test_secrets_are_redacted_wherever_a_config_is_saved():
    from components.secrets import REDACTED, redact

    cfg = {
        "storage": {"endpoint": "http://m:9000", "secret_key": "s3cr3t", "aws_access_key_id": "k"},
        "items": [{"api_token": "t"}, {"name": "x"}],
        "password": None,
        "inference": {"max_new_tokens": 32, "tokenizer": "x"},
    }
    assert redact(cfg) == {
        "storage": {
            "endpoint": "http://m:9000",
            "secret_key": REDACTED,
            "aws_access_key_id": REDACTED,
        },
        "items": [{"api_token": REDACTED}, {"name": "x"}],
        "password": None,
        "inference": {"max_new_tokens": 32, "tokenizer": "x"},
    }
    assert cfg["storage"]["secret_key"] == "s3cr3t"  # a copy, not an edit


def test_tensor_parallel_needs_vllm_on_cuda():
    with pytest.raises(ConfigError, match="inference.tensor_parallel_size: > 1 needs"):
        validate(
            to_container(
                compose(["inference.tensor_parallel_size=2", "inference.backend=transformers"])
            )
        )


def test_a_config_attached_to_an_older_pipeline_still_validates():
    """A clone of a pipeline built before shards existed: the new keys take their defaults."""
    cfg = to_container(compose())
    for key in ("shards", "tensor_parallel_size", "gpu_memory_utilization"):
        del cfg["inference"][key]
    del cfg["sweep"]
    validate(cfg)


@pytest.mark.parametrize(
    "override",
    ["storage.secret_key=MYSECRET123", "+storage.secret_key=MYSECRET123", "api_token=MYSECRET123"],
)
def test_a_secret_on_the_command_line_is_refused_and_never_echoed(override, tmp_path):
    """Hydra refused it with "To append to your config use +storage.secret_key=<the value>"."""
    from tests.conftest import run_cli

    proc = run_cli(override, f"experiment.output_dir={tmp_path}")
    assert proc.returncode == 2
    assert "MYSECRET123" not in proc.stdout + proc.stderr
    key = override.lstrip("+").split("=")[0]
    assert proc.stderr.startswith(f"error: {key}: secrets are not settings"), proc.stderr
    assert "the value is not shown" in proc.stderr


def test_an_unknown_group_choice_lists_the_choices_only(tmp_path):
    from tests.conftest import run_cli

    proc = run_cli("model=llama3", f"experiment.output_dir={tmp_path}")
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "error: model: unknown choice 'llama3'; one of gemma3_270m, qwen3_0.6b, smollm2_1.7b, "
        "smollm2_135m, smollm2_360m"
    )


def test_make_clean_keeps_the_runs():
    """outputs/ may hold runs that were never uploaded: `make clean` leaves it alone
    (`make clean-outputs` removes only runs verified in S3)."""
    from tests.conftest import make_dry_run

    removed = make_dry_run("clean")
    assert removed.startswith("rm -rf ") and "outputs" not in removed, removed


def test_a_value_of_the_wrong_type_is_one_line_naming_the_key(tmp_path):
    """Hydra answered `inference.max_new_tokens=abc` with several lines ("Error merging
    override ..."); the docs promise `error: KEY: ...`."""
    from tests.conftest import run_cli

    proc = run_cli("inference.max_new_tokens=abc", f"experiment.output_dir={tmp_path}")
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "error: inference.max_new_tokens: Value 'abc' of type 'str' could not be converted to "
        "Integer"
    ]


def test_a_model_folder_that_does_not_exist_is_refused(tmp_path):
    """`model.path=/nonexistent/my_model` ran the packaged SmolLM2 (its GGUF won) and
    recorded the path beside it."""
    from tests.conftest import run_cli

    proc = run_cli("model.path=/nonexistent/my_model", f"experiment.output_dir={tmp_path}")
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: model.path: no such folder: '/nonexistent/my_model'")
    assert not list(tmp_path.iterdir())


def test_weights_named_in_model_path_replace_the_packaged_gguf(tmp_path):
    folder = tmp_path / "my_model"
    folder.mkdir()
    for weights in (str(folder), "s3://bucket/models/x", "clearml://model/abc"):
        cfg = validate(to_container(compose([f"model.path={weights}"])))
        assert cfg["model"]["gguf"] is None, weights
    hub = validate(to_container(compose()))  # the packaged model's original hub id: its GGUF
    assert hub["model"]["gguf"] is not None


def test_a_hub_model_where_the_hub_does_not_answer_fails_at_once(tmp_path):
    """huggingface_hub retried for about 50 s ("Retrying in 8s [Retry 5/5]") before the
    documented error; the hub here is a closed port on 127.0.0.1."""
    import os

    from tests.conftest import closed_port, run_module

    env = {k: v for k, v in os.environ.items() if not k.endswith("_OFFLINE")}
    env["HF_ENDPOINT"] = f"http://127.0.0.1:{closed_port()}"
    env["HF_HOME"] = str(tmp_path / "hf")  # an empty cache
    proc = run_module(
        "pipelines.cli.run", "model=qwen3_0.6b", "dataset.limit=1",
        f"experiment.output_dir={tmp_path / 'out'}", base_env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2
    said = proc.stdout + proc.stderr
    assert "Retrying" not in said
    assert f"the Hugging Face hub ({env['HF_ENDPOINT']}) does not answer" in said
    assert "error: model.path: cannot load 'Qwen/Qwen3-0.6B'" in proc.stderr
    assert list((tmp_path / "out").iterdir()) == []  # no half-made run folder, no lock


def test_nq_open_without_its_file_says_where_it_comes_from(tmp_path, monkeypatch):
    monkeypatch.setenv("NQ_OPEN_PATH", str(tmp_path / "missing.jsonl"))
    with pytest.raises(ConfigError, match=r"no such file: .*missing.jsonl'; NQ-open's dev file"):
        validate(to_container(compose(["dataset=nq_open"])))


def test_the_packed_backend_is_refused_a_sampling_temperature_before_anything_loads():
    with pytest.raises(ConfigError, match=r"inference\.temperature.*decodes greedily"):
        validate(to_container(compose(["inference.backend=packed", "inference.temperature=0.7"])))
    validate(to_container(compose(["inference.backend=packed"])))

"""`make run` as a user runs it (a few real subprocesses), and the same pipeline in-process
for everything a subprocess would add nothing to: three files that agree with each other."""

import subprocess
import sys

import pytest

from pipelines.config import compose, to_container
from pipelines.local import run_local
from tests.conftest import ROOT, check_run_folder, make, make_dry_run, model_folder_copy, run_cli

pytestmark = pytest.mark.slow


def run_here(*overrides: str) -> dict:
    """The pipeline in this process, as `make run ARGS="..."` composes it."""
    return run_local(to_container(compose(list(overrides))))


def test_make_run_writes_three_consistent_files(tmp_path):
    args = f"dataset.limit=5 inference.max_new_tokens=12 inference.seed=123 \
experiment.output_dir={tmp_path}"
    proc = make("run", f"ARGS={args}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = check_run_folder(tmp_path / "smollm2_135m_sample", 5)
    # The CPU engine by default, and why it was chosen.
    assert results["inference"]["backend"] == "ctranslate2"
    assert results["inference"]["dtype"] == "int8"
    assert results["inference"]["backend_reason"].startswith("cpu: ctranslate2 (installed")
    assert results["inference"]["batch_invariance"]["identical_at_batch_1_8_32"] == 1.0
    assert results["inference"]["seed"] == 123
    assert results["model"]["source"] == "gguf-cache"
    assert "token recall" in proc.stdout
    assert "questions/s" in proc.stdout
    assert "== smollm2_135m_sample (ctranslate2, cpu, int8) ==" in proc.stdout
    assert str(tmp_path / "smollm2_135m_sample" / "results.json") in proc.stdout


def test_any_qa_pairs_file_and_experiment_name(tmp_path):
    data = tmp_path / "mine.jsonl"
    data.write_text(
        '{"question_id": "q1", "question": "What is the capital of Italy?", "answer": ["Rome"]}\n'
        '{"question_id": "q2", "question": "What colour is the sky?", "answer": ["?"]}\n',
        encoding="utf-8",
    )
    run_here(
        "dataset=qa_pairs",
        f"dataset.path={data}",
        "experiment.name=mine",
        "inference.max_new_tokens=8",
        f"experiment.output_dir={tmp_path / 'out'}",
    )
    results = check_run_folder(tmp_path / "out" / "mine", 2)
    assert results["counts"]["unscorable"] == 1
    assert results["unscorable_ids"] == ["q2"]


def test_malformed_line_fails_fast_with_its_line_number(tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text(
        '{"question_id": "q1", "question": "Q?", "answer": ["a"]}\n'
        '{"question_id": "q2", "question": "Q?", "answer": []}\n'
        '{"question_id": "q3", "answer": ["b"]}\n'
        '{"question_id": "q4", "question": "", "answer": []}\n',
        encoding="utf-8",
    )
    proc = run_cli("dataset=qa_pairs", f"dataset.path={data}", f"experiment.output_dir={tmp_path}")
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"error: {data}: 3 invalid line(s); fix them and run again:",  # lines, not problems
        f"  {data}:2: answer: is an empty list",
        f"  {data}:3: question: is missing",
        f"  {data}:4: question: is empty",
        f"  {data}:4: answer: is an empty list",
    ]
    assert "step inference" not in proc.stdout + proc.stderr
    assert not (tmp_path / "smollm2_135m_bad").exists()  # named after its file


def test_config_error_names_the_key(tmp_path):
    proc = run_cli("inference.batch_size=0", f"experiment.output_dir={tmp_path}")
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "error: inference.batch_size: must be an integer >= 1, got 0"
    ]


def test_nq_open_from_shared_data(tmp_path, nq_open_path):
    run_here(
        "dataset=nq_open",
        f"dataset.path={nq_open_path}",
        "dataset.limit=6",
        "inference.max_new_tokens=10",
        f"experiment.output_dir={tmp_path}",
    )
    results = check_run_folder(tmp_path / "smollm2_135m_nq_open", 6)
    assert results["dataset"]["lines_in_file"] >= 3000


def test_makefile_run_target_passes_args_through():
    out = make_dry_run("run", "ARGS=dataset.limit=3 model=qwen3_0.6b")
    assert "-m pipelines.cli.run dataset.limit=3 model=qwen3_0.6b" in out


def test_hub_model_missing_from_the_cache_says_what_to_do(tmp_path):
    proc = run_cli(
        "model=qwen3_0.6b",
        "dataset.limit=1",
        f"experiment.output_dir={tmp_path}",
        env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")},
    )
    assert proc.returncode == 2
    assert "model.path: cannot load 'Qwen/Qwen3-0.6B'" in proc.stderr
    assert "model=smollm2_135m" in proc.stderr


def test_skip_mode_records_skipped_lines_in_results(tmp_path, capsys):
    data = tmp_path / "mixed.jsonl"
    data.write_text(
        '{"question_id": "q1", "question": "What is the capital of Italy?", "answer": ["Rome"]}\n'
        '{"question_id": "q2", "answer": ["x"]}\n'
        "not json\n",
        encoding="utf-8",
    )
    run_here(
        "dataset=qa_pairs",
        f"dataset.path={data}",
        "dataset.on_error=skip",
        "inference.max_new_tokens=6",
        f"experiment.output_dir={tmp_path / 'out'}",
    )
    results = check_run_folder(tmp_path / "out" / "smollm2_135m_mixed", 1)
    assert results["counts"]["skipped_lines"] == 2
    assert results["dataset"]["skipped_lines"] == [
        {"line": 2, "field": "question", "reason": "is missing"},
        {"line": 3, "field": "json", "reason": "Expecting value (column 1)"},
    ]
    assert f"skipped {data}:2: question: is missing" in capsys.readouterr().out


def test_experiment_name_cannot_escape_the_output_folder(tmp_path):
    run_here(
        "experiment.name=../../escape",
        "dataset.limit=1",
        "inference.max_new_tokens=4",
        f"experiment.output_dir={tmp_path / 'out'}",
    )
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["escape"]
    assert not (tmp_path / "escape").exists()


def test_unknown_model_lists_the_choices(tmp_path):
    proc = run_cli("model=gpt5", f"experiment.output_dir={tmp_path}")
    assert proc.returncode == 2  # Hydra's refusal is a user's mistake like any other
    assert proc.stderr.startswith("error: model: unknown choice 'gpt5'; one of ")
    assert "smollm2_135m" in proc.stderr and "qwen3_0.6b" in proc.stderr
    assert "schema" not in proc.stderr


def test_the_default_cpu_run_never_imports_torch(tmp_path, smollm2_path):
    """CTranslate2 needs neither torch nor AutoTokenizer's import of it (about 3 s of a 9 s
    run): the tokenizer's class is loaded directly, the seed and device read without it. (Only
    the first conversion of the model imports it: done here before.)"""
    from components.backends.ctranslate2_backend import convert

    convert(smollm2_path, "int8")
    code = (
        "import runpy, sys\n"
        "sys.argv = ['run', *sys.argv[1:]]\n"
        "try:\n"
        "    runpy.run_module('pipelines.cli.run', run_name='__main__')\n"
        "except SystemExit as exc:\n"
        "    assert not exc.code, exc.code\n"
        "print('torch imported:', 'torch' in sys.modules)\n"
    )
    args = [
        "dataset.limit=2",
        "inference.max_new_tokens=4",
        "inference.seed=7",
        f"experiment.output_dir={tmp_path}",
    ]
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "(ctranslate2, cpu, int8)" in proc.stdout
    assert "torch imported: False" in proc.stdout


def test_a_model_folder_given_is_the_model_run_and_recorded(tmp_path, smollm2_path):
    """The default model config has a packaged GGUF; `model.path=FOLDER` runs FOLDER."""
    folder = model_folder_copy(smollm2_path, tmp_path / "my_model")
    outputs = run_here(
        f"model.path={folder}",
        "dataset.limit=2",
        "inference.max_new_tokens=4",
        f"experiment.output_dir={tmp_path / 'out'}",
    )
    results = outputs["publish"]["results"]
    assert results["model"]["loaded_from"] == str(folder)
    assert results["model"]["source"] == "local" and results["model"]["gguf_sha256"] is None
    assert results["config"]["model"]["gguf"] is None


def test_a_finished_run_is_never_replaced_by_another_configuration(tmp_path, sample_path):
    """`make run ARGS="dataset.limit=5"` replaced the 60-question run, and a file given as
    dataset.path ran under the sample's name over the sample's run."""
    import json

    out = f"experiment.output_dir={tmp_path}"
    base = tmp_path / "smollm2_135m_sample"
    run_here("dataset.limit=3", "inference.max_new_tokens=4", out)
    kept = (base / "results.json").read_bytes()

    proc = run_cli("dataset.limit=2", "inference.max_new_tokens=4", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (
        f"{base} holds a finished run of another configuration (dataset.limit: 3 -> 2); "
        f"this run goes to {base}-2"
    ) in proc.stdout
    assert (base / "results.json").read_bytes() == kept
    moved = json.loads((tmp_path / "smollm2_135m_sample-2" / "results.json").read_text())
    assert (moved["experiment"], moved["counts"]["examples"]) == ("smollm2_135m_sample-2", 2)

    again = run_here("dataset.limit=3", "inference.max_new_tokens=4", out)  # the same: in place
    assert again["publish"]["results"]["experiment"] == "smollm2_135m_sample"

    other = tmp_path / "my_questions.jsonl"
    other.write_text(sample_path.read_text().replace("?", " ?"))
    third = run_here(f"dataset.path={other}", "dataset.limit=3", "inference.max_new_tokens=4", out)
    assert third["publish"]["results"]["experiment"] == "smollm2_135m_sample-3"


def test_a_run_on_the_packed_backend_records_it(tmp_path):
    """inference.backend=packed through the whole pipeline: bf16, batch-invariant, said so."""
    outputs = run_here(
        "inference.backend=packed",
        "experiment_mode=oracle_context",
        "dataset=sample_passages",
        "dataset.limit=3",
        "inference.max_new_tokens=6",
        f"experiment.output_dir={tmp_path}",
    )
    results = outputs["publish"]["results"]
    assert results["inference"]["backend"] == "packed"
    assert results["inference"]["dtype"] == "bfloat16"
    assert results["inference"]["backend_reason"] == "inference.backend=packed"
    assert results["inference"]["batch_invariance"]["identical_at_batch_1_8_32"] == 1.0
    check_run_folder(tmp_path / results["experiment"], 3)
    with pytest.raises(ValueError, match="inference.dtype: float32 with packed"):
        run_here("inference.backend=packed", "inference.dtype=float32", "dataset.limit=1")


def test_auto_in_a_context_mode_is_packed_on_a_cpu_with_amx(tmp_path):
    """What auto resolves to with passages in the prompts, through the whole pipeline."""
    from components.device import cpu_has_amx

    outputs = run_here(
        "experiment_mode=oracle_context",
        "dataset=sample_passages",
        "dataset.limit=2",
        "inference.max_new_tokens=4",
        f"experiment.output_dir={tmp_path}",
    )
    inference = outputs["publish"]["results"]["inference"]
    expected = ("packed", "bfloat16") if cpu_has_amx() else ("ctranslate2", "int8")
    assert (inference["backend"], inference["dtype"]) == expected
    assert inference["backend_reason"].startswith(f"cpu: {expected[0]} (")

"""Fast guards (`make test-fast`) of two promises the slow end-to-end tests check too: a
resumed run keeps the answers its checkpoint holds, and results.json reaches S3 last (its
presence says the run is whole). Each fails with a message that says what broke."""

from __future__ import annotations

from components.atomic import read_jsonl
from components.checkpoint import FileCheckpoint
from components.inference.config import InferenceConfig
from components.inference.run import generate_answers
from components.model_files import ModelConfig
from components.run_upload import publish_run
from pipelines.config import section
from tests.conftest import SMOLLM2
from tests.fault_proxy import FaultProxy
from tests.test_storage_faults import run_dir_with_results, through


def test_answers_the_checkpoint_holds_are_kept_not_generated_again(tmp_path):
    """Every answer is in the checkpoint, so no model is loaded: a resume that regenerates
    them shows as other predictions (and a load), in seconds."""
    examples = [
        {"question_id": f"q{i}", "question": f"What is {i} plus one?", "answers": [str(i + 1)]}
        for i in range(3)
    ]
    saved = [
        {"question_id": e["question_id"], "prediction": f"kept {i}", "prompt_tokens": 9,
         "output_tokens": 2}
        for i, e in enumerate(examples)
    ]  # fmt: skip
    FileCheckpoint(tmp_path, "key").append(saved)
    report = generate_answers(
        section(ModelConfig, SMOLLM2, "model"),
        section(InferenceConfig, {"max_new_tokens": 4}, "inference"),
        examples,
        checkpoint_for=lambda key: FileCheckpoint(tmp_path, "key"),
        generations_path=tmp_path / "generations.jsonl",
        environment={},
    )
    got = [g["prediction"] for g in read_jsonl(tmp_path / "generations.jsonl")]
    assert got == ["kept 0", "kept 1", "kept 2"], (
        f"resume is broken: the checkpoint's answers were generated again ({got})"
    )
    assert (report.resumed, report.generated) == (3, 0), "resume is broken: counts"


def test_results_json_is_uploaded_last(settings, tmp_path):
    for cleanup in (False, True):
        (tmp_path / str(cleanup)).mkdir()
        run_dir = run_dir_with_results(tmp_path / str(cleanup))
        (run_dir / "contexts.jsonl").write_text("{}\n")  # a run's other file goes first too
        with FaultProxy(settings.endpoint) as proxy:
            publish_run(through(proxy), run_dir, "exp", f"order{cleanup}", cleanup_local=cleanup)
        puts = [r.split("?")[0].rsplit("/", 1)[1] for r in proxy.seen if r.startswith("PUT ")]
        assert puts[-1] == "results.json", (
            f"upload order is broken: results.json must go last, as the mark that the run is "
            f"whole; the order was {puts}"
        )
        assert puts.count("results.json") == 1 and len(puts) == 3 + cleanup, puts

"""Clone-and-edit in the real ClearML web UI, in a real browser, on the project's own
pipeline: after a finished `make enqueue`, a user clones the controller, edits an Arg (or a
value inside ``experiment_config`` in the UI's editor), saves, enqueues it on services, and
the agents run it with the edited value. Then what users look at after a run: the DAG, the
publish step's scalars and plots, the artifacts' links to S3, a failed run's reason.

`make docs-screenshots` runs this module to refresh the pictures in docs/clearml.md.
"""

from __future__ import annotations

import json
import re

import pytest

from tests.conftest import unavailable
from tests.test_clearml_server import (  # noqa: F401 (submitter_inputs: a fixture)
    enqueue,
    failure,
    finished,
    made_dataset,
    run_files,
    submitter_inputs,
)
from tests.web_ui import Browser, WebUI, why_not_available

pytestmark = [pytest.mark.slow, pytest.mark.server, pytest.mark.docker, pytest.mark.browser]
EXPERIMENT = "smollm2_135m_sample"


@pytest.fixture(scope="module")
def ui(clearml_stack):
    reason = why_not_available()
    if reason:
        unavailable(reason)
    web = WebUI(clearml_stack).start()
    try:
        browser = Browser(web)
        try:
            browser.login()
            yield browser
        finally:
            browser.close()
    finally:
        web.stop()


@pytest.fixture(scope="module")
def pipeline(clearml_stack):
    """The README's command, finished: what a user then opens in the UI."""
    task_id = enqueue(clearml_stack, "dataset.limit=4")
    task = finished(clearml_stack, task_id)
    return {"id": task_id, "project": task["project"]["id"], "task": task}


def test_clone_edit_an_arg_save_and_enqueue_in_the_ui(clearml_stack, ui, pipeline):
    clone = ui.clone(pipeline["project"], pipeline["id"], f"{EXPERIMENT} edited in the UI")
    ui.edit_arg(pipeline["project"], clone, "eval_limit", "2")
    ui.enqueue(pipeline["project"], clone, "services")
    task = finished(clearml_stack, clone)
    assert task["name"] == f"{EXPERIMENT} edited in the UI"
    args = {p["name"]: p["value"] for p in task["hyperparams"]["Args"].values()}
    assert args["eval_limit"] == "2"
    results, predictions = run_files(clearml_stack, EXPERIMENT, clone)
    assert results["counts"]["examples"] == len(predictions) == 2
    original = clearml_stack.api().task(pipeline["id"])
    assert {p["name"]: p["value"] for p in original["hyperparams"]["Args"].values()}[
        "eval_limit"
    ] == "4"  # the clone was edited, not the run it came from


def test_clone_edit_the_configuration_object_in_the_ui(clearml_stack, ui, pipeline):
    clone = ui.clone(pipeline["project"], pipeline["id"], f"{EXPERIMENT} config edited in the UI")

    def fewer_tokens(text: str) -> str:
        edited = re.sub(r"max_new_tokens: \d+", "max_new_tokens: 3", text)
        assert edited != text, text[:500]
        return edited

    ui.edit_configuration(pipeline["project"], clone, "experiment_config", fewer_tokens)
    ui.enqueue(pipeline["project"], clone, "services")
    finished(clearml_stack, clone)
    results, predictions = run_files(clearml_stack, EXPERIMENT, clone)
    assert results["config"]["inference"]["max_new_tokens"] == 3
    assert all(p["output_tokens"] <= 3 for p in predictions)


def test_the_dag_shows_the_four_steps_and_their_edges(ui, pipeline):
    ui.open(f"/pipelines/{pipeline['project']}/tasks/{pipeline['id']}")
    steps = ui.page.locator("sm-pipeline-controller-step .step-container .title")
    steps.first.wait_for()
    assert sorted(steps.all_inner_texts()) == ["inference", "load_dataset", "publish", "score"]
    # load_dataset -> inference, score, publish; inference -> score, publish; score -> publish.
    # The steps stand in one column, so the UI draws the skip edges over the chain's: six
    # paths (zero-width vertical lines, "attached" rather than visible), three arrows seen.
    edges = ui.page.locator("svg.arrows g > path")
    edges.first.wait_for(state="attached")
    assert edges.count() == 6
    ui.shot("pipeline")


def test_a_clone_switched_to_retrieved_context_shows_the_retrieve_step(clearml_stack, ui, pipeline):
    """A closed-book run, cloned in the UI, its eval_mode Arg set to retriever_context: the
    agents run it with BM25 passages, and its DAG shows the retrieve step."""
    clone = ui.clone(pipeline["project"], pipeline["id"], f"{EXPERIMENT} with retrieval")
    ui.edit_arg(pipeline["project"], clone, "eval_mode", "retriever_context")
    ui.enqueue(pipeline["project"], clone, "services")
    finished(clearml_stack, clone)
    results, predictions = run_files(clearml_stack, f"{EXPERIMENT}_retriever_context", clone)
    assert results["context"]["mode"] == "retriever_context"
    assert results["retrieval"]["retriever"] == "bm25"
    assert all(p["passages"] is not None for p in predictions)
    ui.open(f"/pipelines/{pipeline['project']}/tasks/{clone}")
    steps = ui.page.locator("sm-pipeline-controller-step .step-container .title")
    steps.first.wait_for()
    assert sorted(steps.all_inner_texts()) == [
        "inference",
        "load_dataset",
        "publish",
        "retrieve",
        "score",
    ]
    ui.shot("pipeline-retrieve")


def test_a_clone_pointed_at_a_clearml_dataset_in_the_ui_evaluates_it(
    clearml_stack, ui, pipeline, sample_path, tmp_path
):
    """A dataset made with `clearml-data`; a run cloned in the UI, its eval_dataset_path Arg
    set to that dataset: the agents evaluate its questions, and the load_dataset step names
    it under Datasets."""
    lines = sample_path.read_bytes().splitlines(keepends=True)[10:13]
    dataset_id = made_dataset(clearml_stack, tmp_path / "ui", "3.0.0", lines, name="ui-qa")
    clone = ui.clone(pipeline["project"], pipeline["id"], f"{EXPERIMENT} on a ClearML dataset")
    ui.edit_arg(pipeline["project"], clone, "eval_dataset_path", f"clearml://dataset/{dataset_id}")
    ui.enqueue(pipeline["project"], clone, "services")
    finished(clearml_stack, clone)
    results, predictions = run_files(clearml_stack, EXPERIMENT, clone)
    assert results["dataset"]["input"]["dataset"]["id"] == dataset_id
    expected = [json.loads(line)["question_id"] for line in lines]
    assert [p["question_id"] for p in predictions] == expected
    load = clearml_stack.api().children(clone)["load_dataset"]
    assert load["hyperparams"]["Datasets"]["dataset"]["value"] == dataset_id


def test_the_inference_step_shows_the_model_folder_make_enqueue_handed_over(
    clearml_stack,
    ui,
    submitter_inputs,  # noqa: F811 (the fixture imported above)
):
    """A model folder only the submitter had, registered by `make enqueue`: the inference
    step's ARTIFACTS tab lists it as its input model, under the folder's name, and the
    model's TASKS tab lists the step."""
    finished(clearml_stack, submitter_inputs["id"])
    api = clearml_stack.api()
    inference = api.children(submitter_inputs["id"])["inference"]
    model_id = inference["models"]["input"][0]["model"]["id"]
    name = api("models.get_all", id=[model_id], only_fields=["name"])["models"][0]["name"]
    assert name == submitter_inputs["model"].name
    project = inference["project"]["id"]
    ui.open(f"/projects/{project}/tasks/{inference['id']}/artifacts/input-model/{model_id}")
    ui.page.locator("sm-experiment-info-artifacts-model", has_text=name).first.wait_for()
    ui.shot("input-model")
    # The other way: the model's TASKS tab lists the step that evaluated it.
    ui.open(f"/projects/*/models/{model_id}/tasks")
    ui.page.locator("sm-model-info-experiments", has_text="inference").first.wait_for()


def test_the_publish_step_shows_scalars_plots_and_the_controller_its_s3_links(
    clearml_stack, ui, pipeline
):
    publish = clearml_stack.api().children(pipeline["id"])["publish"]
    ui.open(f"/projects/{publish['project']['id']}/tasks/{publish['id']}/output/metrics/scalar")
    summary = ui.page.locator("sm-single-value-summary-table")
    summary.first.wait_for()
    shown = summary.inner_text()
    assert "token_recall" in shown and "exact_match" in shown
    ui.open(f"/projects/{publish['project']['id']}/tasks/{publish['id']}/output/metrics/plots")
    # The tables (best, worst) come first; the histogram below them renders once in view.
    ui.page.locator("[id='metric_name_token recall']").scroll_into_view_if_needed()
    histogram = ui.page.locator("[data-id='graphTitleName']", has_text="token recall")
    histogram.first.wait_for()
    axis = ui.page.locator(".g-xtitle text", has_text="token recall").first
    axis.wait_for()
    axis.scroll_into_view_if_needed()
    ui.shot("recall-plot")
    s3 = f"s3://{clearml_stack.s3_endpoint.split('://')[1]}/"
    for name in ("experiment_results", "model_predictions", "memory_usage"):
        ui.open(
            f"/projects/{pipeline['project']}/tasks/{pipeline['id']}/output/artifacts/other/"
            f"{name}/output"
        )
        row = ui.page.locator("sm-labeled-row[data-id='filePathId']")
        row.first.wait_for()
        url = row.inner_text().split()[-1]  # "FILE PATH s3://..."
        assert url.startswith(s3), (name, row.inner_text())
        assert f"/{EXPERIMENT}.{pipeline['id']}/artifacts/{name}/" in url, url


def test_a_failed_pipeline_shows_its_reason_where_a_user_looks_first(clearml_stack, ui, pipeline):
    bad = clearml_stack.data / "bad-ui.jsonl"
    bad.write_text('{"question_id": "a", "question": "Q?", "answer": []}\n')
    api = clearml_stack.api()
    task_id = api("tasks.clone", task=pipeline["id"], new_task_name=f"{EXPERIMENT} bad data")["id"]
    api(
        "tasks.edit_hyper_params",
        task=task_id,
        hyperparams=[{"section": "Args", "name": "eval_dataset_path", "value": str(bad)}],
    )
    api("tasks.enqueue", task=task_id, queue_name="services")
    reason = failure(finished(clearml_stack, task_id, status="failed"))
    ui.open(f"/projects/{pipeline['project']}/tasks/{task_id}/output/general")
    message = ui.page.locator("sm-labeled-row", has_text="STATUS MESSAGE")
    message.first.wait_for()
    assert "step load_dataset failed (permanent: DatasetError" in message.first.inner_text()
    assert reason.startswith("step load_dataset failed (permanent: DatasetError")
    ui.shot("failed-run")


def test_no_request_left_this_machine(ui):
    """The web app calls out (api.github.com, unpkg.com): every such request was aborted,
    none completed, and the UI worked without them."""
    assert ui.blocked, "the web app called nothing outside: the route was not in the way"
    assert not any(url.startswith(ui.ui.url) for url in ui.blocked)
    assert ui.finished_elsewhere == []
    assert ui.requests > 0

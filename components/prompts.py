"""Questions -> token ids, built once so every backend sees exactly the same prompts.

Instruct models get their chat template; base models (Gemma 3 270M) get a completion
prompt (``Q: ...\\nA:``), optionally after a few worked examples, and a stop sequence so
the answer ends at the line break instead of running on into the next invented question.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

FORMATS = ("chat", "completion")


@dataclass(frozen=True)
class PromptFormat:
    template: str = "Question: {question}\nAnswer:"
    system_prompt: str = ""
    use_chat_template: bool = True
    few_shot: tuple[tuple[str, str], ...] = ()
    stop: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, model: Mapping[str, Any], inference: Mapping[str, Any]) -> PromptFormat:
        """``model.prompt`` (format, template, system_prompt, few_shot, stop) over the
        defaults in ``inference``; a model config without ``prompt`` is a chat model."""
        prompt = dict(model.get("prompt") or {})
        fmt = str(prompt.get("format") or "chat")
        if fmt not in FORMATS:
            raise ValueError(f"model.prompt.format: {fmt!r} is not one of {', '.join(FORMATS)}")
        template = prompt.get("template")
        system = prompt.get("system_prompt")
        shots = []
        for i, shot in enumerate(prompt.get("few_shot") or []):
            if not isinstance(shot, Mapping) or not shot.get("question") or not shot.get("answer"):
                raise ValueError(
                    f"model.prompt.few_shot[{i}]: needs a non-empty question and answer"
                )
            shots.append((str(shot["question"]), str(shot["answer"])))
        stop = prompt.get("stop") or []
        if isinstance(stop, str) or not all(isinstance(s, str) and s for s in stop):
            raise ValueError(f"model.prompt.stop: must list non-empty strings, got {stop!r}")
        return cls(
            template=str(inference["prompt_template"] if template is None else template),
            system_prompt=str((inference.get("system_prompt") if system is None else system) or ""),
            use_chat_template=fmt == "chat" and bool(inference.get("use_chat_template", True)),
            few_shot=tuple(shots),
            stop=tuple(stop),
        )

    def user_text(self, question: str) -> str:
        try:
            return self.template.format(question=question)
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"prompt template: {self.template!r} must contain {{question}} "
                f"and no other {{fields}} ({exc})"
            ) from exc


def load_tokenizer(model_path: str, revision: str | None = None):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_path, revision=revision)


def uses_chat(tokenizer, fmt: PromptFormat) -> bool:
    return fmt.use_chat_template and bool(getattr(tokenizer, "chat_template", None))


def render(tokenizer, question: str, fmt: PromptFormat) -> str:
    """The exact text a model sees: its chat template (few-shot examples as earlier turns)
    or a completion prompt (examples as answered blocks above the question)."""
    if uses_chat(tokenizer, fmt):
        messages = [{"role": "system", "content": fmt.system_prompt}] if fmt.system_prompt else []
        for shot_question, shot_answer in fmt.few_shot:
            messages.append({"role": "user", "content": fmt.user_text(shot_question)})
            messages.append({"role": "assistant", "content": shot_answer})
        messages.append({"role": "user", "content": fmt.user_text(question)})
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    blocks = [fmt.system_prompt] if fmt.system_prompt else []
    blocks += [f"{fmt.user_text(q)} {a}" for q, a in fmt.few_shot]
    blocks.append(fmt.user_text(question))
    return "\n\n".join(blocks)


def encode_prompts(tokenizer, questions: Sequence[str], fmt: PromptFormat) -> list[list[int]]:
    texts = [render(tokenizer, q, fmt) for q in questions]
    # A rendered chat template already holds its special tokens; adding BOS again would
    # give the model a prompt it never saw in training. A completion prompt gets the
    # tokenizer's own (Gemma needs its BOS).
    return tokenizer(texts, add_special_tokens=not uses_chat(tokenizer, fmt))["input_ids"]


def cut_at_stop(text: str, stop: Sequence[str]) -> str | None:
    """The text before the first stop sequence, or None when none occurs."""
    cuts = [i for i in (text.find(s) for s in stop) if i >= 0]
    return text[: min(cuts)] if cuts else None

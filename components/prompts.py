"""Questions -> token ids, built once so every backend sees exactly the same prompts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class PromptFormat:
    template: str = "Question: {question}\nAnswer:"
    system_prompt: str = ""
    use_chat_template: bool = True

    def user_text(self, question: str) -> str:
        try:
            return self.template.format(question=question)
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"inference.prompt_template: {self.template!r} must contain {{question}} "
                f"and no other {{fields}} ({exc})"
            ) from exc


def load_tokenizer(model_path: str, revision: str | None = None):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_path, revision=revision)


def render(tokenizer, question: str, fmt: PromptFormat) -> str:
    """The exact text a model sees: the chat template when the model has one and it is on."""
    user = fmt.user_text(question)
    if fmt.use_chat_template and getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": user}]
        if fmt.system_prompt:
            messages.insert(0, {"role": "system", "content": fmt.system_prompt})
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return f"{fmt.system_prompt}\n\n{user}" if fmt.system_prompt else user


def encode_prompts(tokenizer, questions: Sequence[str], fmt: PromptFormat) -> list[list[int]]:
    chat = fmt.use_chat_template and bool(getattr(tokenizer, "chat_template", None))
    texts = [render(tokenizer, q, fmt) for q in questions]
    # A rendered chat template already holds its special tokens; adding BOS again would
    # give the model a prompt it never saw in training.
    return tokenizer(texts, add_special_tokens=not chat)["input_ids"]

"""A run's examples as prompts, a window at a time: contexts fitted and questions tokenized
for ``WINDOW`` examples, handed on and dropped, so an inference step's memory stays flat
however many questions the dataset holds."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from itertools import islice
from typing import Any, TypeVar

from components.contexts import Context, fit_contexts
from components.modes import ModeConfig
from components.prompts import PromptFormat, encode_prompts

# Examples per window: about 40 MB of token ids as Python lists at 300 tokens a prompt, and
# 4 of CUDA's largest batches (1,024), so length-sorted batches within a window stay full.
WINDOW = 4096

T = TypeVar("T")


@dataclass(frozen=True)
class Window:
    examples: list[Mapping[str, Any]]
    prompts: list[list[int]]
    contexts: list[Context] | None  # what each example is shown; None: closed-book


def chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """``items`` in lists of ``size`` (the last one shorter), read as they are needed."""
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


def encode_window(
    tokenizer, examples: list[Mapping[str, Any]], fmt: PromptFormat, mode: ModeConfig
) -> Window:
    """``examples``' prompts, each one as it would be encoded with the whole run."""
    contexts = fit_contexts(tokenizer, examples, mode)
    texts = [c.text for c in contexts] if contexts is not None else None
    prompts = encode_prompts(tokenizer, [e["question"] for e in examples], fmt, texts)
    return Window(examples, prompts, contexts)


def encode_windows(
    tokenizer,
    examples: Iterable[Mapping[str, Any]],
    fmt: PromptFormat,
    mode: ModeConfig,
    size: int = WINDOW,
) -> Iterator[Window]:
    for chunk in chunks(examples, size):
        yield encode_window(tokenizer, chunk, fmt, mode)

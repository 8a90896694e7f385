"""``experiment_mode.*``: what a question is shown besides itself. One class for the four
modes of conf/experiment_mode/ (each file sets its prompt and budget); defaults and checks
live here once.

- ``no_context``: closed-book, the question alone;
- ``oracle_context``: the question's gold passage(s) (or its inline ``context``);
- ``oracle_long_context``: the gold passage widened with its neighbours in the same
  document, in corpus order, up to the budget (by position, never by score);
- ``retriever_context``: the ``top_k`` passages a retriever returns scoring above
  ``min_score`` (a step of its own, ``retrieve``).
"""

from __future__ import annotations

from dataclasses import dataclass

from components.settings import one_of, positive_int, require

MODES = ("no_context", "oracle_context", "oracle_long_context", "retriever_context")
RETRIEVERS = ("bm25", "oracle")
CONTEXT_SYSTEM_PROMPT = (
    "You are a helpful assistant. Your task is to extract relevant information from provided "
    "documents and to answer to questions as briefly as possible."
)
CONTEXT_TEMPLATE = "Background:\n{context}\n\nQuestion:\n{question}"


@dataclass
class ModeConfig:
    name: str = "no_context"
    # The prompt of a context mode (a model's few-shot examples are left out there):
    # system_prompt (null: the model's), template for chat models, completion_template for
    # completion models (prompt.format), each with {context} and {question}.
    system_prompt: str | None = None
    template: str | None = None
    completion_template: str | None = None
    max_context_tokens: int = 512  # by the model's tokenizer; whole passages first
    retriever: str = "bm25"  # retriever_context: which one (components/retrieval/)
    top_k: int = 3
    min_score: float = 0.0  # passages scoring at or below it are not shown

    def __post_init__(self) -> None:
        one_of(self.name, MODES, "experiment_mode.name")
        one_of(self.retriever, RETRIEVERS, "experiment_mode.retriever")
        positive_int(self.max_context_tokens, "experiment_mode.max_context_tokens")
        positive_int(self.top_k, "experiment_mode.top_k")
        if self.uses_context:
            for key in ("template", "completion_template"):
                value = getattr(self, key)
                require(
                    value is not None and "{context}" in value and "{question}" in value,
                    f"experiment_mode.{key}",
                    f"{self.name} needs a template with {{context}} and {{question}}, "
                    f"got {value!r}",
                )

    @property
    def uses_context(self) -> bool:
        return self.name != "no_context"

    @property
    def retrieves(self) -> bool:
        return self.name == "retriever_context"

    @property
    def needs_gold(self) -> bool:
        """Every question needs its gold passage(s) or an inline context."""
        return self.name in ("oracle_context", "oracle_long_context")

    def template_for(self, prompt_format: str) -> str | None:
        """The user turn of this mode for a model's prompt format; None: closed-book."""
        if not self.uses_context:
            return None
        return self.template if prompt_format == "chat" else self.completion_template


def mode_suffix(name: str) -> str:
    """What an experiment's default name gains: closed-book keeps ``<model>_<dataset>`` (the
    names of every run made before the modes), the others end in ``_<mode>``."""
    return "" if name == "no_context" else f"_{name}"

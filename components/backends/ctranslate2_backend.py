"""CTranslate2 backend: the model converted once into CTranslate2's format (int8 weights by
default), then batched greedy decoding on the CPU: one single-threaded replica per core, each
decoding its own batch, several times transformers' fp32 speed (docs/benchmarks.md).

Answers do not depend on the batch size. CTranslate2 runs the first ``min(len) - 1`` tokens of
a batch's prompts at once (prefill, matrix by matrix) and forces the rest one step at a time,
so in a batch of mixed lengths the split, and with it a prompt's numbers (and, through int8's
rounding, sometimes its answer), depends on its neighbours. Here each prompt's split is a
function of its own length alone, ``split_point``: its length less one, rounded down to a
multiple of ``SPLIT_STEP`` past the format's shared prefix. Prompts are batched only
with prompts of the same split, and a batch none of whose prompts is exactly one token past
it carries one more row of that length (a prefix of its first prompt; its answer is dropped).
Each row is computed alone (activations are quantized per row, int8 products summed exactly,
one thread per batch), so a prompt's answer is the same at any batch size; and at most
``SPLIT_STEP - 1`` of its tokens are forced one step at a time, however long its context
(before: every token past the format's shared prefix, all of a passage in a context mode).

Not done: CTranslate2's ``static_prompt`` would compute a context shared by several questions
once, but it answers differently from the same prompt computed whole (36 of 96 SQuAD answers
identical), so a question's answer would depend on which other questions are in the run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from components.atomic import atomic_folder
from components.backends.base import Generation, GenerationParams
from components.batching import CPU_BATCH
from components.checkpoint import short_digest
from components.fault_injection import out_of_memory_above
from components.model_files import MARKER, default_cache_dir, model_config, model_file
from components.prompts import decode_answer, end_ids, eos_ids, load_tokenizer

COMPUTE_TYPES = ("int8", "int8_float32", "float32")
DEFAULT_DTYPE = "int8"  # what inference.dtype=auto means here (docs/benchmarks.md)
SETTINGS_DTYPES = ("auto", "int8", "float32")  # the inference.dtype values it runs
CONVERTED = "slm_qa_eval_ct2.json"
# Tokens a prompt may have forced one step at a time (past its split, counted from the
# format's shared prefix): smaller batches fewer prompts together (and adds extra rows),
# larger forces more tokens; 32 measured best with one passage and closed-book alike
# (docs/benchmarks.md).
SPLIT_STEP = 32


def split_point(length: int, shared_prefix: int = 0) -> int:
    """Where a prompt of ``length`` tokens is split: prefilled before, forced after. Steps of
    ``SPLIT_STEP`` counted from the format's shared prefix (closed-book questions, a few
    tokens past it, then mostly share one split); never below 1 (a split at 0 gives the
    prompt back)."""
    base = min(shared_prefix, length - 1)
    return max(base + (length - 1 - base) // SPLIT_STEP * SPLIT_STEP, 1)


def batches_by_split(
    lengths: Sequence[int], batch_size: int, shared_prefix: int = 0
) -> list[tuple[int, list[int]]]:
    """(split, prompt indices) for each batch: prompts of one split together, longest
    split first (the batch most likely to fail comes first), each in dataset order."""
    groups: dict[int, list[int]] = {}
    for index, length in enumerate(lengths):
        groups.setdefault(split_point(length, shared_prefix), []).append(index)
    return [
        (split, members[start : start + batch_size])
        for split, members in sorted(groups.items(), key=lambda item: -item[0])
        for start in range(0, len(members), batch_size)
    ]


def unsupported_reason(model_path: str, revision: str | None = None) -> str | None:
    """None when CTranslate2 converts this model's architecture, else why not. A model
    converted before is known to be supported (the converter's import pulls in torch)."""
    if any(converted(model_path, revision, q) is not None for q in ("int8", "float32")):
        return None
    from ctranslate2.converters.transformers import _MODEL_LOADERS

    try:
        name = type(model_config(model_path, revision)).__name__
    except (OSError, ValueError) as exc:
        return f"its config cannot be read here ({exc.__class__.__name__})"
    return None if name in _MODEL_LOADERS else f"CTranslate2 has no converter for {name}"


def _cache_name(model_path: str, revision: str | None) -> str:
    """The converted folder's name: a packaged model's cached folder is already named by its
    weights (``<model>-<sha256>``); a hub id or other folder gets a digest of where it is."""
    folder = Path(model_path)
    if (folder / MARKER).is_file():
        return folder.name
    # A folder's weights may be saved again in place (a new checkpoint): their sizes and
    # times are part of the name, so the copy is converted again.
    weights = {
        f.name: [(st := f.stat()).st_size, st.st_mtime_ns]
        for f in sorted(folder.glob("*"))
        if f.suffix in (".safetensors", ".bin", ".json")
    }
    where = short_digest(
        {
            "path": str(folder.resolve()) if folder.is_dir() else model_path,
            "revision": revision,
            "weights": weights,
        }
    )
    return f"{folder.name if folder.is_dir() else model_path.replace('/', '--')}-{where}"


def _target(model_path: str, revision: str | None, quantization: str) -> Path:
    """Where the converted copy of this model in this quantization is kept."""
    return default_cache_dir() / "ct2" / f"{_cache_name(model_path, revision)}-{quantization}"


def converted(model_path: str, revision: str | None, quantization: str) -> Path | None:
    """The cached CTranslate2 copy, where one was made."""
    target = _target(model_path, revision, quantization)
    return target if (target / CONVERTED).is_file() else None


def convert(model_path: str, quantization: str, revision: str | None = None) -> Path:
    """The CTranslate2 copy of a Hugging Face model folder, converted once and cached
    beside the project's other converted models."""
    target = _target(model_path, revision, quantization)
    if (target / CONVERTED).is_file():
        return target
    from ctranslate2.converters import TransformersConverter

    with atomic_folder(target, CONVERTED) as tmp:
        print(f"Converting {model_path} for CTranslate2 ({quantization}) into {target} (once)")
        converter = TransformersConverter(model_path, revision=revision, low_cpu_mem_usage=True)
        converter.convert(str(tmp / "model"), quantization=quantization, force=True)
        for item in (tmp / "model").iterdir():
            item.rename(tmp / item.name)
        (tmp / "model").rmdir()
        (tmp / CONVERTED).write_text(
            json.dumps({"source": model_path, "quantization": quantization})
        )
    return target


def generation_eos(model_path: str, revision: str | None = None) -> int | list[int] | None:
    """The model's end-of-generation token(s), as its generation_config.json gives them (read
    directly: transformers' GenerationConfig imports torch)."""
    path = model_file(model_path, "generation_config.json", revision)
    try:
        config = json.loads(path.read_text()) if path is not None else None
    except (OSError, ValueError):
        return None
    return config.get("eos_token_id") if isinstance(config, dict) else None


def cpu_threads() -> int:
    """The cores this process may run on (its affinity), one replica each."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


class CTranslate2Backend:
    name = "ctranslate2"

    def __init__(
        self,
        model_path: str,
        *,
        device: str,
        dtype: str,
        tokenizer: Any = None,
        seed: int | None = None,
        revision: str | None = None,
        batch_size: int = CPU_BATCH,
    ) -> None:
        """``dtype`` is CTranslate2's compute type (int8, int8_float32, float32): the weights
        are converted to it once. ``batch_size`` may be changed between calls."""
        import ctranslate2

        if dtype not in COMPUTE_TYPES:
            raise ValueError(f"ctranslate2 backend: dtype {dtype!r} is not one of {COMPUTE_TYPES}")
        self.device, self.dtype, self.batch_size = device, dtype, batch_size
        self.tokenizer = tokenizer or load_tokenizer(model_path, revision)
        folder = convert(model_path, "int8" if dtype.startswith("int8") else "float32", revision)
        self.replicas = cpu_threads()  # batches decoded at once, one thread each
        self.generator = ctranslate2.Generator(
            str(folder),
            device=device,
            compute_type=dtype,
            inter_threads=self.replicas,
            intra_threads=1,
        )
        self.vocabulary = json.loads((folder / "vocabulary.json").read_text(encoding="utf-8"))
        self.eos_ids = eos_ids(generation_eos(model_path, revision), self.tokenizer)
        self._stop_ids: dict[tuple[str, ...], list[int]] = {}

    def _end_ids(self, stop: tuple[str, ...]) -> list[int]:
        if stop not in self._stop_ids:
            size = len(self.vocabulary)
            self._stop_ids[stop] = end_ids(self.tokenizer, self.eos_ids, stop, size)
        return self._stop_ids[stop]

    def generate(
        self,
        prompts: Sequence[list[int]],
        params: GenerationParams,
        on_progress: Callable[[int], None] | None = None,
        on_batch: Callable[[list[int], list[Generation]], None] | None = None,
    ) -> list[Generation]:
        import ctranslate2

        if params.seed is not None:
            ctranslate2.set_random_seed(params.seed)
        sampling = (
            {"sampling_topk": 1}
            if params.greedy
            else {
                "sampling_topk": 0,
                "sampling_topp": params.top_p,
                "sampling_temperature": params.temperature,
            }
        )
        end = self._end_ids(params.stop)

        def decode(planned: tuple[int, list[int]]) -> list[Generation]:
            split, batch = planned
            out_of_memory_above(len(batch))
            rows = [[self.vocabulary[t] for t in prompts[i]] for i in batch]
            if all(len(row) != split + 1 for row in rows):
                rows.append(rows[0][: split + 1])  # puts the batch's split at each row's own
            outputs = self.generator.generate_batch(
                rows,
                max_length=params.max_new_tokens,
                include_prompt_in_result=False,
                end_token=end,
                return_end_token=True,
                **sampling,
            )
            generations = []
            for index, output in zip(batch, outputs[: len(batch)], strict=True):
                text, count = decode_answer(self.tokenizer, output.sequences_ids[0], params.stop)
                generations.append(Generation(text, len(prompts[index]), count))
            return generations

        lengths = [len(p) for p in prompts]
        batches = batches_by_split(lengths, self.batch_size, params.shared_prefix)
        results: list[Generation | None] = [None] * len(prompts)
        pool = ThreadPoolExecutor(self.replicas)
        try:
            for (_, batch), generations in zip(batches, pool.map(decode, batches), strict=True):
                for index, generation in zip(batch, generations, strict=True):
                    results[index] = generation
                if on_batch is not None:
                    on_batch(batch, generations)
                if on_progress is not None:
                    on_progress(len(batch))
        finally:
            # On Ctrl-C, a stop or a failed batch only the batches already running finish.
            pool.shutdown(wait=True, cancel_futures=True)
        return [r for r in results if r is not None]

    def close(self) -> None:
        """Frees the model (idempotent)."""
        if getattr(self, "generator", None) is not None:
            self.generator.unload_model()
            self.generator = None

"""Everything an inference step decides before the model loads: the weights' folder, the
device, dtype and backend ``auto`` resolves to here, and the checkpoint key the prompt token
ids of the whole run make (walked a window at a time, never held at once). One resolution
for a run and for a sweep's check of whether an earlier run's results still stand here."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sized
from dataclasses import dataclass, field
from typing import Any

from components.backends import BackendChoice, GenerationParams, resolve_backend
from components.backends.ctranslate2_backend import DEFAULT_DTYPE as CTRANSLATE2_DTYPE
from components.backends.ctranslate2_backend import SETTINGS_DTYPES as CTRANSLATE2_DTYPES
from components.backends.packed_backend import SETTINGS_DTYPES as PACKED_DTYPES
from components.batching import ModelShape, model_shape
from components.checkpoint import PromptsDigest, checkpoint_key
from components.device import resolve_device, resolve_dtype
from components.inference.config import InferenceConfig
from components.inference.windows import WINDOW, Window, encode_window, encode_windows
from components.model_files import (
    ModelConfig,
    ModelFiles,
    ModelFilesError,
    loaded_weights_digest,
    resolve_model,
    weights_digest,
)
from components.modes import ModeConfig
from components.prompts import PromptFormat, common_length, format_prefix, load_tokenizer, render
from components.seeding import seed_everything


@dataclass(frozen=True)
class Execution:
    device: str
    dtype: str
    backend: BackendChoice
    shape: ModelShape | None


@dataclass(frozen=True)
class InferencePlan:
    files: ModelFiles
    execution: Execution
    tokenizer: Any
    fmt: PromptFormat
    mode: ModeConfig
    params: GenerationParams
    key: str  # the checkpoint's: everything that decides an answer, as resolved
    examples: int  # of the whole run
    longest_prompt: int  # in tokens, of the whole run
    prompt: dict[str, Any] = field(default_factory=dict)  # as results.json records it

    def encode(self, examples: list[Mapping[str, Any]]) -> Window:
        """These examples' prompts (and contexts) exactly as the key was made from them."""
        return encode_window(self.tokenizer, examples, self.fmt, self.mode)

    @property
    def device(self) -> str:
        return self.execution.device

    @property
    def dtype(self) -> str:
        return self.execution.dtype

    @property
    def backend_name(self) -> str:
        return self.execution.backend.name


def resolve_execution(
    inference: InferenceConfig,
    model_path: str,
    revision: str | None,
    questions: int,
    context: bool = False,
) -> Execution:
    """``context``: the prompts carry passages (a context mode), which can change what
    ``auto`` means on a CPU (components/backends/choice.py)."""
    device = resolve_device(inference.device)
    # Only CUDA's choices (backend by model size, batch by memory) need it; it reads files.
    shape = model_shape(model_path, revision) if device == "cuda" else None
    backend = resolve_backend(
        inference.backend,
        device,
        parameters=shape.parameters if shape else None,
        questions=questions,
        tensor_parallel_size=inference.tensor_parallel_size,
        model_path=model_path,
        revision=revision,
        dtype=inference.dtype,
        context=context,
    )
    return Execution(device, engine_dtype(inference.dtype, device, backend.name), backend, shape)


def engine_dtype(dtype: str, device: str, backend: str) -> str:
    """``inference.dtype`` as the chosen backend runs it: CTranslate2 computes in int8 (or
    float32) on its converted weights, packed in bfloat16; the others take a torch dtype."""
    if backend == "ctranslate2":
        if dtype not in CTRANSLATE2_DTYPES:
            raise ValueError(f"inference.dtype: {dtype} with ctranslate2; it runs int8 or float32")
        return CTRANSLATE2_DTYPE if dtype == "auto" else dtype
    if dtype == "int8":
        raise ValueError(f"inference.dtype: int8 is ctranslate2's; this run uses {backend}")
    if backend == "packed":
        if dtype not in PACKED_DTYPES:
            raise ValueError(f"inference.dtype: {dtype} with packed; it runs bfloat16")
        return "bfloat16"
    return resolve_dtype(dtype, device)


def check_gpus(gpus: int, backend_name: str, device: str) -> None:
    """Tensor parallelism: vLLM on CUDA, with as many GPUs visible as asked for."""
    if gpus <= 1:
        return
    if backend_name != "vllm" or device != "cuda":
        raise ValueError(
            f"inference.tensor_parallel_size: > 1 needs the vllm backend on CUDA; this run "
            f"would use {backend_name} on {device}"
        )
    import torch

    if torch.cuda.device_count() < gpus:
        raise ValueError(
            f"inference.tensor_parallel_size: {gpus} GPUs asked, {torch.cuda.device_count()} "
            f"visible here; run on a queue whose agents hold {gpus} GPUs (make agent "
            f"QUEUE=gpu-{gpus}x GPUS=0,1,...; make enqueue QUEUE=gpu-{gpus}x)"
        )


@dataclass(frozen=True)
class PromptWalk:
    """What the whole run's prompts decide, from one pass over them."""

    examples: int
    longest: int
    shared_prefix: int
    digest: str
    first: str | None  # the first prompt as rendered


def walk_prompts(tokenizer, fmt: PromptFormat, windows: Iterable[Window]) -> PromptWalk:
    """Every prompt of the run (``encode_windows``' windows) into a digest, its count, its
    longest and the prefix they all share (the CTranslate2 backend splits there)."""
    from tqdm import tqdm

    digest, prefix = PromptsDigest(), format_prefix(tokenizer, fmt)
    count = longest = 0
    shared, first = len(prefix), None
    with tqdm(desc="prompts", unit="q", delay=2) as bar:  # shown where it takes a while
        for w in windows:
            if first is None:
                context = w.contexts[0].text if w.contexts else None
                first = render(tokenizer, w.examples[0]["question"], fmt, context)
            digest.update(w.prompts)
            shared = common_length(prefix[:shared], w.prompts)
            count += len(w.prompts)
            longest = max(longest, *map(len, w.prompts))
            bar.update(len(w.prompts))
    return PromptWalk(count, longest, shared, digest.hexdigest(), first)


def plan_inference(
    model: ModelConfig,
    inference: InferenceConfig,
    examples: Iterable[Mapping[str, Any]],
    mode: ModeConfig | None = None,
    fetched: ModelFiles | None = None,
    window: int = WINDOW,
) -> InferencePlan:
    """``examples``: records with ``question`` (and, in a context mode, ``passages``), read
    once here; ``fetched``: the weights where a step fetched them (``model.path`` names them
    elsewhere)."""
    files = fetched or resolve_model(model, digest=weights_digest(model))
    weights = loaded_weights_digest(files, model.revision)
    if weights != files.gguf_sha256:
        files = dataclasses.replace(files, weights_sha256=weights)
    if files.identity is None:
        where = {"source": files.source, "path": model.path, "revision": model.revision}
        files = dataclasses.replace(files, identity={**where, "sha256": weights})
    try:
        tokenizer = load_tokenizer(files.path, model.revision)
    except OSError as exc:
        raise ModelFilesError(
            f"model.path: cannot load {files.path!r} ({exc.__class__.__name__}). A hub id "
            "is downloaded where downloads are allowed (not with HF_HUB_OFFLINE=1) or read "
            "from the Hugging Face cache; here, use model=smollm2_135m, or point model.path "
            "at a local folder, s3://... or clearml://model/<id>."
        ) from exc
    mode = mode or ModeConfig()
    fmt = PromptFormat.from_config(model.prompt, inference, mode)
    for note in fmt.unused_settings(inference):
        print(f"note: inference.{note}", flush=True)
    # Settings the machine refuses fail before every prompt is tokenized (minutes at 1M).
    questions = len(examples) if isinstance(examples, Sized) else sum(1 for _ in examples)
    execution = resolve_execution(
        inference, files.path, model.revision, questions, mode.uses_context
    )
    if inference.seed is not None:
        seed_everything(inference.seed, torch=execution.backend.name != "ctranslate2")
    check_gpus(inference.tensor_parallel_size, execution.backend.name, execution.device)
    walk = walk_prompts(tokenizer, fmt, encode_windows(tokenizer, examples, fmt, mode, window))
    shown = {  # results.json: the prompt as set, where from, and the first one as rendered
        "template": fmt.template,
        "system_prompt": fmt.system_prompt,
        **{f"{part}_from": where for part, where in fmt.origin},
        "first": walk.first,
    }
    params = GenerationParams(
        max_new_tokens=inference.max_new_tokens,
        temperature=inference.temperature,
        top_p=inference.top_p,
        seed=inference.seed,
        stop=fmt.stop,
        shared_prefix=walk.shared_prefix,
    )
    key = checkpoint_key(
        model={"name": model.name, "path": model.path, "revision": model.revision},
        weights=weights,
        backend=execution.backend.name,
        device=execution.device,
        dtype=execution.dtype,
        generation={
            k: getattr(params, k)
            for k in ("max_new_tokens", "temperature", "top_p", "seed", "stop")
        },
        prompts=walk.digest,
    )
    return InferencePlan(
        files, execution, tokenizer, fmt, mode, params, key, walk.examples, walk.longest, shown
    )

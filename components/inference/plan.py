"""Everything an inference step decides before the model loads: the weights' folder, the
device, dtype and backend ``auto`` resolves to here, the prompt token ids of the whole run
and the checkpoint key they make. One resolution for a run and for a sweep's check of
whether an earlier run's results still stand on this machine."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from components.backends import BackendChoice, GenerationParams, resolve_backend
from components.backends.ctranslate2_backend import DEFAULT_DTYPE as CTRANSLATE2_DTYPE
from components.backends.ctranslate2_backend import SETTINGS_DTYPES as CTRANSLATE2_DTYPES
from components.batching import ModelShape, model_shape
from components.checkpoint import checkpoint_key, prompts_digest
from components.contexts import Context, fit_contexts
from components.device import resolve_device, resolve_dtype
from components.inference.config import InferenceConfig
from components.model_files import (
    ModelConfig,
    ModelFiles,
    ModelFilesError,
    loaded_weights_digest,
    resolve_model,
    weights_digest,
)
from components.modes import ModeConfig
from components.prompts import (
    PromptFormat,
    encode_prompts,
    load_tokenizer,
    render,
    shared_prefix,
)
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
    prompts: list[list[int]]  # of every example of the run, in dataset order
    params: GenerationParams
    key: str  # the checkpoint's: everything that decides an answer, as resolved
    contexts: list[Context] | None = None  # what each example is shown; None: closed-book
    prompt: dict[str, Any] = field(default_factory=dict)  # as results.json records it

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
    inference: InferenceConfig, model_path: str, revision: str | None, questions: int
) -> Execution:
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
    )
    return Execution(device, engine_dtype(inference.dtype, device, backend.name), backend, shape)


def engine_dtype(dtype: str, device: str, backend: str) -> str:
    """``inference.dtype`` as the chosen backend runs it: CTranslate2 computes in int8 (or
    float32) on its converted weights; the others take a torch dtype."""
    if backend == "ctranslate2":
        if dtype not in CTRANSLATE2_DTYPES:
            raise ValueError(f"inference.dtype: {dtype} with ctranslate2; it runs int8 or float32")
        return CTRANSLATE2_DTYPE if dtype == "auto" else dtype
    if dtype == "int8":
        raise ValueError(f"inference.dtype: int8 is ctranslate2's; this run uses {backend}")
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


def plan_inference(
    model: ModelConfig,
    inference: InferenceConfig,
    examples: Sequence[Mapping[str, Any]],
    mode: ModeConfig | None = None,
    fetched: ModelFiles | None = None,
) -> InferencePlan:
    """``examples``: records with ``question`` (and, in a context mode, ``passages``);
    ``fetched``: the weights where a step fetched them (``model.path`` names them elsewhere)."""
    files = fetched or resolve_model(model, digest=weights_digest(model))
    weights = loaded_weights_digest(files, model.revision)
    if weights != files.gguf_sha256:
        files = dataclasses.replace(files, weights_sha256=weights)
    if files.identity is None:
        where = {"source": files.source, "path": model.path, "revision": model.revision}
        files = dataclasses.replace(files, identity={**where, "sha256": weights})
    execution = resolve_execution(inference, files.path, model.revision, len(examples))
    if inference.seed is not None:
        seed_everything(inference.seed, torch=execution.backend.name != "ctranslate2")
    check_gpus(inference.tensor_parallel_size, execution.backend.name, execution.device)
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
    contexts = fit_contexts(tokenizer, examples, mode)
    texts = [c.text for c in contexts] if contexts is not None else None
    prompts = encode_prompts(tokenizer, [e["question"] for e in examples], fmt, texts)
    shown = {  # results.json: the prompt as set, where from, and the first one as rendered
        "template": fmt.template,
        "system_prompt": fmt.system_prompt,
        **{f"{part}_from": where for part, where in fmt.origin},
        "first": render(tokenizer, examples[0]["question"], fmt, texts[0] if texts else None)
        if examples
        else None,
    }
    params = GenerationParams(
        max_new_tokens=inference.max_new_tokens,
        temperature=inference.temperature,
        top_p=inference.top_p,
        seed=inference.seed,
        stop=fmt.stop,
        shared_prefix=shared_prefix(tokenizer, fmt, prompts),
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
        prompts=prompts_digest(prompts),
    )
    return InferencePlan(files, execution, tokenizer, prompts, params, key, contexts, shown)

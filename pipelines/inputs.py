"""A run's inputs made local where its step runs: ``dataset.path``, ``dataset.corpus`` and
``model.path`` as paths or URIs (components/inputs.py), each with the identity that
results.json records.

On one machine a local path passes through. On an agent the same step fetches what the
reference names: an S3 object through the run's S3 client, a ClearML Dataset or model through
the ClearML wing (registered there, pipelines/clearml/inputs.py).
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

from components.dataset import DatasetConfig, load_qa_dataset
from components.hf_datasets import FieldMap, is_hf, write_qa_pairs
from components.inputs import Fetched, fetch_input, is_remote
from components.model_files import ModelConfig, ModelFiles, default_cache_dir
from pipelines.executor import RunContext


def fetched_dataset(
    dataset: DatasetConfig, run: RunContext
) -> tuple[DatasetConfig, dict[str, Any]]:
    """The dataset settings with local paths, and ``{"dataset": ..., "corpus": ...}``: where
    each was read from."""
    folder = run.dir / "inputs"
    hub = str(dataset.path).startswith("hf://")
    got = Fetched(Path(), {}) if hub else _fetch(dataset.path, "dataset.path", folder, run)
    source = dataset.path if hub else str(got.path)
    if is_hf(source):  # a Hugging Face set: made into qa_pairs.jsonl here
        target = folder / "qa_pairs.jsonl"
        identity = write_qa_pairs(source, dataset.fields, target)
        got = Fetched(target, {**identity, **({"fetched": got.identity} if not hub else {})})
    corpus = _fetch(dataset.corpus, "dataset.corpus", folder, run) if dataset.corpus else None
    local = dataclasses.replace(
        dataset, path=str(got.path), corpus=str(corpus.path) if corpus else None
    )
    return local, {"dataset": got.identity, "corpus": corpus.identity if corpus else None}


def check_local_questions(dataset: dict[str, Any]) -> None:
    """Every line of a question set on this machine checked as the load step will check it:
    a Hugging Face set (parquet, a saved folder) through its field mapping first. A reference
    to elsewhere (s3://, clearml://, hf://) is checked where it is fetched."""
    path = str(dataset["path"])
    if is_remote(path) or path.startswith("hf://") or not Path(path).exists():
        return
    if not is_hf(path):
        load_qa_dataset(path, dataset["limit"], dataset["on_error"])
        return
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "qa_pairs.jsonl"
        write_qa_pairs(path, FieldMap(**(dataset.get("fields") or {})), target)
        load_qa_dataset(target, dataset["limit"], dataset["on_error"])


def fetched_model(model: ModelConfig, run: RunContext) -> ModelFiles | None:
    """The weights of a ``model.path`` URI, fetched into the machine's cache (models are large
    and shared by runs); None for a packaged GGUF, a local folder or a hub id, which the
    inference step resolves itself."""
    if model.gguf or not is_remote(model.path):
        return None
    got = _fetch(model.path, "model.path", default_cache_dir() / "inputs", run)
    return ModelFiles(
        path=str(got.path),
        source=str(got.identity.get("source")),
        weights_sha256=got.identity.get("sha256"),
        identity=got.identity,
    )


def _fetch(reference: str, setting: str, folder: Path, run: RunContext) -> Fetched:
    return fetch_input(reference, setting, folder, run.storage, default_cache_dir())

"""ClearML's ways in for a run's inputs, and `make enqueue`'s hand-over of local ones.

    clearml://dataset/<id>
    clearml://dataset/<project>/<name>[@<version>][#<file>]   the last segment is the name
    clearml://model/<id>        a model in the registry (an InputModel)
    clearml://task/<id>         that task's last output model (what a training task produced)

A step fetches a Dataset with an alias (``Datasets/dataset``, ``Datasets/corpus`` in its
CONFIGURATION) and connects a model as its input model, so the web UI shows the lineage both
ways. On `make enqueue`, a dataset or corpus file that exists only here is uploaded once to
the run's storage, under its sha256 (``<prefix>/inputs/<sha256>/<file>``), and a model folder
is packaged once and registered as a ClearML model; the config the pipeline runs with names
those copies, so every agent reads the same bytes.
"""

from __future__ import annotations

import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from components.archives import is_archive, unpacked
from components.atomic import disk_full, sha256_file
from components.inputs import FETCHERS, Fetched, InputError, folder_digest, hidden
from components.model_files import default_cache_dir
from components.storage import S3, safe_name
from pipelines.config import PROJECT_ROOT

ALIASES = {"dataset.path": "dataset", "dataset.corpus": "corpus"}
_ID = re.compile(r"^[0-9a-f]{32}$")


def register() -> None:
    FETCHERS["clearml"] = fetch


def fetch(reference: str, setting: str, folder: Path) -> Fetched:
    """A ``clearml://`` input as a local file or folder (ClearML's cache keeps it)."""
    kind, _, rest = reference.removeprefix("clearml://").partition("/")
    try:
        if kind == "dataset":
            return _dataset(reference, setting, rest)
        if kind in ("model", "task"):
            return _model(reference, kind, rest.strip("/"))
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 (the SDK raises ValueError, ConnectionError, ...)
        if disk_full(exc):  # the failure's own hint says what to do
            raise
        raise InputError(
            f"{setting}: cannot fetch {reference!r}: {exc.__class__.__name__}: {exc}; check it "
            "exists on the server (clearml-data list, the web UI's Datasets or Models) and "
            "that this machine's clearml.conf has the credentials of the storage it is in"
        ) from exc
    raise InputError(
        f"{setting}: {reference!r}: expected clearml://dataset/..., clearml://model/<id> or "
        "clearml://task/<id>"
    )


def _dataset(reference: str, setting: str, rest: str) -> Fetched:
    from clearml import Dataset, Task

    target, _, wanted = rest.partition("#")
    target, _, version = target.strip("/").partition("@")
    # The alias shows the dataset in the step's CONFIGURATION; without a task there is none.
    alias = ALIASES.get(setting, setting.replace(".", "_")) if Task.current_task() else None
    if _ID.match(target):
        found = Dataset.get(dataset_id=target, alias=alias)
    else:
        project, _, name = target.rpartition("/")
        found = Dataset.get(
            dataset_project=project or None,
            dataset_name=name,
            dataset_version=version or None,
            only_completed=True,
            alias=alias,
        )
    root = Path(found.get_local_copy())
    files = sorted(found.list_files())
    if wanted:
        chosen = wanted
    elif "dataset.json" in files:
        chosen = ""  # a MIRAGE folder: the whole copy
    elif len(files) == 1:
        chosen = files[0]
    else:
        shown = ", ".join(files[:10])
        raise InputError(
            f"{setting}: dataset {found.id} holds {len(files)} files ({shown}); name one: "
            f"{reference.partition('#')[0]}#<file>"
        )
    path = root / chosen if chosen else root
    if not path.exists():
        raise InputError(f"{setting}: dataset {found.id} has no file {chosen!r}; it holds {files}")
    identity = {
        "source": "clearml-dataset",
        "reference": reference,
        "id": found.id,
        "project": found.project,
        "name": found.name,
        "version": found.version,
        "file": chosen or None,
        "sha256": _digest(path),
    }
    return Fetched(path, identity)


def _model(reference: str, kind: str, target: str) -> Fetched:
    from clearml import InputModel, Task

    model_id = target
    if kind == "task":
        models = Task.get_task(task_id=target).models["output"]
        if not models:
            raise InputError(
                f"model.path: task {target} has no output model; point at the model itself "
                "(clearml://model/<id>) or at the training task that saved one"
            )
        model_id = models[-1].id
    model = InputModel(model_id=model_id)
    current = Task.current_task()
    if current is not None:
        current.connect(model, name="evaluated")  # the task's input model, and its lineage
    try:
        local = _weights(model)
    except InputError as exc:
        raise InputError(f"model.path: {reference!r}: {exc}") from exc
    while local.is_dir() and len(shown := _shown(local)) == 1 and shown[0].is_dir():
        local = shown[0]  # an archive of one folder
    identity = {
        "source": "clearml-model",
        "reference": reference,
        "id": model.id,
        "name": model.name,
        "project": model.project,
        "uri": model.url,
        "task": model.original_task,  # the task that made it (.task: the one using it)
        "sha256": _digest(local),
    }
    return Fetched(local, identity)


def _weights(model: Any) -> Path:
    """The model's file, or its package unpacked into the model cache (components/archives.py
    says why not ClearML's cache)."""
    local = Path(model.get_weights(raise_on_error=True))
    if not is_archive(local):
        return local
    packages = default_cache_dir() / "packages"
    try:
        return unpacked(local, packages)
    except FileNotFoundError:  # ClearML's cache cleanup took it before it was unpacked
        return unpacked(Path(model.get_weights(raise_on_error=True)), packages)


def _shown(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if not hidden(p, folder)]


def _digest(local: Path) -> str:
    return folder_digest(local, default_cache_dir()) if local.is_dir() else sha256_file(local)


def hand_over(node: DictConfig, s3: S3, project: str) -> list[str]:
    """Local inputs that exist only here, stored once where the agents read them, and the
    config changed to name those copies. Files inside the project ride in the images.
    Returns what it did, one line each."""
    done = []
    for setting in ("dataset.path", "dataset.corpus"):
        value = OmegaConf.select(node, setting)
        path = Path(str(value)).absolute() if value else None
        if path is None or not path.exists() or path.is_relative_to(PROJECT_ROOT):
            continue
        url, uploaded = _store(s3, path)
        OmegaConf.update(node, setting, url)
        done.append(f"{setting}: {value} -> {url} ({'uploaded' if uploaded else 'already stored'})")
    model_path = Path(str(node.model.path))
    if not node.model.get("gguf") and model_path.is_dir():
        model = _register_model(s3, model_path, project)
        OmegaConf.update(node, "model.path", f"clearml://model/{model.id}")
        done.append(f"model.path: {model_path} -> clearml://model/{model.id} ({model.url})")
    return done


def _store(s3: S3, path: Path) -> tuple[str, bool]:
    """A file (or a folder, file by file) under its content's sha256; (URL, uploaded)."""
    digest = _digest(path)
    base = f"{s3.prefix}/inputs/{digest}/{safe_name(path.name)}"
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    uploaded = False
    for file in files:
        key = base if path.is_file() else f"{base}/{file.relative_to(path).as_posix()}"
        if not s3.exists(key):
            s3.upload(file, key)
            uploaded = True
    return s3.url(base), uploaded


def _register_model(s3: S3, folder: Path, project: str) -> Any:
    """The folder zipped once under its content's sha256 and registered as a model package
    (ClearML finds the one registered at that address before creating another)."""
    from clearml import InputModel

    digest = folder_digest(folder, default_cache_dir())
    key = f"{s3.prefix}/inputs/models/{digest}/{safe_name(folder.name)}.zip"
    if not s3.exists(key):
        with tempfile.TemporaryDirectory() as tmp:
            archive = Path(tmp) / "model.zip"
            with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zipped:
                for file in sorted(p for p in folder.rglob("*") if p.is_file()):
                    if not hidden(file, folder):
                        zipped.write(file, file.relative_to(folder).as_posix())
            s3.upload(archive, key)
    return InputModel.import_model(
        weights_url=s3.url(key),
        name=folder.name,
        project=project,
        tags=[f"sha256:{digest[:16]}"],
        is_package=True,
        comment=f"{folder} as `make enqueue` handed it over (sha256 of its files {digest})",
    )

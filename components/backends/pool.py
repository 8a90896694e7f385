"""Keeping one loaded model across runs in a process: a sweep over datasets, or the shards
of a local run, load each model once.

Outside ``keep_loaded()`` a backend is closed as soon as its run is done (a single run
frees the GPU before scoring). Inside, the last backend stays loaded until a different one
is asked for or the block ends, so at most one model is in memory at a time.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from typing import Any

_kept: dict[str, Any] | None = None  # {"key": str, "backend": Backend} inside keep_loaded()
_depth = 0


def backend_key(**settings: Any) -> str:
    return json.dumps(settings, sort_keys=True, default=str)


@contextlib.contextmanager
def keep_loaded() -> Iterator[None]:
    """Nested blocks share the outermost one's model."""
    global _kept, _depth
    _depth += 1
    if _kept is None:
        _kept = {}
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0:
            _close_kept()
            _kept = None


def _close_kept() -> None:
    if _kept and _kept.get("backend") is not None:
        backend = _kept.pop("backend")
        _kept.pop("key", None)
        backend.close()


def acquire(key: str, create: Callable[[], Any]) -> tuple[Any, bool]:
    """The backend for ``key``, and whether it was already loaded."""
    if _kept is not None and _kept.get("key") == key:
        return _kept["backend"], True
    if _kept is not None:
        _close_kept()  # free the previous model before loading the next
    backend = create()
    if _kept is not None:
        _kept.update(key=key, backend=backend)
    return backend, False


def release(backend: Any) -> None:
    """Closes the backend unless ``keep_loaded()`` holds it."""
    if _kept is None or _kept.get("backend") is not backend:
        backend.close()

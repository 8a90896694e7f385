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

_depth = 0  # nesting of keep_loaded() blocks; 0: nothing is kept
_key: str | None = None
_backend: Any = None


def backend_key(**settings: Any) -> str:
    return json.dumps(settings, sort_keys=True, default=str)


@contextlib.contextmanager
def keep_loaded() -> Iterator[None]:
    """Nested blocks share the outermost one's model."""
    global _depth
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0:
            _close_kept()


def _close_kept() -> None:
    global _key, _backend
    backend, _key, _backend = _backend, None, None
    if backend is not None:
        backend.close()


def acquire(key: str, create: Callable[[], Any]) -> tuple[Any, bool]:
    """The backend for ``key``, and whether it was already loaded."""
    global _key, _backend
    if _depth and _backend is not None and _key == key:
        return _backend, True
    _close_kept()  # free the previous model before loading the next
    backend = create()
    if _depth:
        _key, _backend = key, backend
    return backend, False


def release(backend: Any) -> None:
    """Closes the backend unless ``keep_loaded()`` holds it."""
    if backend is not _backend:
        backend.close()

"""Command-line entry points, one per `make` verb: thin `@hydra.main` functions that
compose the config, call into the library and turn a user's mistake into one line.

    make run -> run.py      make sweep -> sweep.py      make compare -> compare.py
    make enqueue -> enqueue.py      make enqueue-sweep -> enqueue_sweep.py
    make fetch / publish / retention -> fetch.py / publish.py / retention.py
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from typing import Any

from pipelines.config import register

register()  # conf/'s schemas, before @hydra.main composes anything


class Stopped(Exception):
    """SIGTERM (an agent stopping the task, `kill`): leave cleanly, checkpoints intact."""


def _raise_stopped(signum: int, _frame: Any) -> None:
    raise Stopped(signal.Signals(signum).name)


def user_errors() -> tuple[type[BaseException], ...]:
    """What a user can fix: printed as `error: ...` with exit 2, no traceback."""
    from components.model_files import ModelFilesError
    from components.storage import StorageError
    from pipelines.clearml.sdk import ServerNotConfigured

    return (ValueError, ModelFilesError, StorageError, ServerNotConfigured)


def finish(work: Callable[[], int | None]) -> None:
    """Runs a command's body and exits with its code."""
    import logging

    logging.getLogger("httpx").setLevel(logging.WARNING)
    signal.signal(signal.SIGTERM, _raise_stopped)
    try:
        code = work() or 0
    except user_errors() as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        code = 2
    sys.exit(code)

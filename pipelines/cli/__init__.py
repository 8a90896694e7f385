"""Command-line entry points, one per `make` verb: thin `@hydra.main` functions that
compose the config, call into the library and turn a user's mistake into one line.

    make run -> run.py      make sweep -> sweep.py      make compare -> compare.py
    make leaderboard -> leaderboard.py      make enqueue -> enqueue.py
    make enqueue-sweep -> enqueue_sweep.py  make fetch / publish / retention -> artifacts.py
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from typing import Any

from pipelines import config  # noqa: F401  (registers conf/'s schemas before @hydra.main)


class Stopped(Exception):
    """SIGTERM (an agent stopping the task, `kill`): leave cleanly, checkpoints intact."""


def _raise_stopped(signum: int, _frame: Any) -> None:
    raise Stopped(signal.Signals(signum).name)


def user_errors() -> tuple[type[BaseException], ...]:
    """What a user can fix: printed as `error: ...` with exit 2, no traceback."""
    from components.model_files import ModelFilesError
    from components.storage import StorageError
    from pipelines.clearml.sdk import ServerNotConfigured

    return (ValueError, OSError, ModelFilesError, StorageError, ServerNotConfigured)


def finish(work: Callable[[], int | None], stopped_hint: Callable[[], str] | None = None) -> None:
    """Runs a command's body and exits with its code: 2 for a user's mistake, 143 after
    SIGTERM, 130 after Ctrl-C (``stopped_hint``: what was kept and how to go on)."""
    import logging

    from pipelines.steps import GenerationOutOfMemory

    logging.getLogger("httpx").setLevel(logging.WARNING)
    signal.signal(signal.SIGTERM, _raise_stopped)
    try:
        code = work() or 0
    except GenerationOutOfMemory as exc:
        print(f"error: {exc}; set a smaller inference.batch_size", file=sys.stderr, flush=True)
        code = 2
    except user_errors() as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        code = 2
    except (Stopped, KeyboardInterrupt) as exc:
        label = str(exc) if isinstance(exc, Stopped) else "interrupt"
        hint = f": {stopped_hint()}" if stopped_hint else ""
        print(f"stopped ({label}){hint}", file=sys.stderr, flush=True)
        code = 143 if isinstance(exc, Stopped) else 130
    sys.exit(code)

"""Command-line entry points, one per `make` verb: thin `@hydra.main` functions that
compose the config, call into the library and turn a user's mistake into one line.

    make run -> run.py      make sweep -> sweep.py      make compare -> compare.py
    make prompts -> prompts.py
    make leaderboard -> leaderboard.py      make enqueue -> enqueue.py
    make enqueue-sweep -> enqueue_sweep.py
    make fetch / publish / retention / clean-outputs -> files.py

Only here and in pipelines/clearml/ is anything chosen between a local run and ClearML; the
S3 keys of clearml.conf are handed to storage here, once, for every command, and clearml://
inputs become readable.
"""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Callable
from typing import Any

from components.atomic import DISK_FULL_HINT, disk_full
from components.inference.engine import GenerationOutOfMemory
from components.inputs import InputError
from components.model_files import ModelFilesError
from components.secrets import is_secret_key
from components.storage import StorageError
from pipelines import config  # noqa: F401  (registers conf/'s schemas before @hydra.main)
from pipelines.clearml import credentials, inputs
from pipelines.clearml.sdk import ServerNotConfigured
from pipelines.local import RunFolderInUse

credentials.register()
inputs.register()  # clearml:// inputs, where this machine's clearml.conf reaches a server


class Stopped(Exception):
    """SIGTERM (an agent stopping the task, `kill`): leave cleanly, checkpoints intact."""


def _raise_stopped(signum: int, _frame: Any) -> None:
    raise Stopped(signal.Signals(signum).name)


def user_errors() -> tuple[type[BaseException], ...]:
    """What a user can fix: printed as `error: ...` with exit 2, no traceback."""
    return (
        ValueError,
        OSError,
        ModelFilesError,
        StorageError,
        ServerNotConfigured,
        InputError,
        RunFolderInUse,
    )


_started = False  # finish() was reached: Hydra accepted the command line


def refuse_before_hydra(argv: list[str]) -> str | None:
    """What Hydra would answer badly: a secret-looking key (Hydra's "use +key=value" hint
    prints the value) and an unknown group choice (its list shows the ``schema`` entries)."""
    for arg in argv:
        key, eq, value = arg.lstrip("+~").partition("=")
        if not eq or arg.startswith("-"):
            continue
        if is_secret_key(key.rsplit(".", 1)[-1]):
            return (
                f"{key}: secrets are not settings, and a command line is kept in shell "
                "history: export AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or give the "
                "storage host keys in clearml.conf (sdk.aws.s3.credentials); the value is not "
                "shown"
            )
        if key in config.GROUPS and (config.CONF_DIR / key).is_dir():
            choices = config.group_choices(key)
            if value not in choices:
                return f"{key}: unknown choice {value!r}; one of {', '.join(choices)}"
    return None


def launch(main: Callable[[], None], composes: bool = False) -> None:
    """Runs a `@hydra.main` entry point. Hydra's own refusal of the command line (an unknown
    ``model=``, a malformed override) exits 1 before our code runs; it is a user's mistake
    like any other, so it exits 2. ``composes``: the entry point reads conf/config.yaml, so a
    value of the wrong type is named in one line here, not in Hydra's several."""
    refused = refuse_before_hydra(sys.argv[1:])
    if refused is None and composes and not any(a.startswith(("-", "hydra")) for a in sys.argv[1:]):
        try:
            config.compose(sys.argv[1:])
        except config.ConfigError as exc:
            refused = str(exc)
    if refused:
        print(f"error: {refused}", file=sys.stderr, flush=True)
        sys.exit(2)
    try:
        main()
    except SystemExit as exc:
        if exc.code == 1 and not _started:
            sys.exit(2)
        raise


def finish(work: Callable[[], int | None], stopped_hint: Callable[[], str] | None = None) -> None:
    """Runs a command's body and exits with its code: 2 for a user's mistake, 143 after
    SIGTERM, 130 after Ctrl-C (``stopped_hint``: what was kept and how to go on)."""
    global _started
    _started = True
    logging.getLogger("httpx").setLevel(logging.WARNING)
    signal.signal(signal.SIGTERM, _raise_stopped)
    try:
        code = work() or 0
    except GenerationOutOfMemory as exc:  # a batch of one did not fit (larger ones are retried)
        print(
            f"error: {exc}; even one prompt at a time does not fit on this device: a smaller "
            "model, a shorter inference.max_new_tokens, or another device",
            file=sys.stderr,
            flush=True,
        )
        code = 2
    except user_errors() as exc:
        hint = f"\n{DISK_FULL_HINT}" if disk_full(exc) else ""
        print(f"error: {exc}{hint}", file=sys.stderr, flush=True)
        code = 2
    except (Stopped, KeyboardInterrupt) as exc:
        label = str(exc) if isinstance(exc, Stopped) else "interrupt"
        hint = f": {stopped_hint()}" if stopped_hint else ""
        print(f"stopped ({label}){hint}", file=sys.stderr, flush=True)
        code = 143 if isinstance(exc, Stopped) else 130
    sys.exit(code)

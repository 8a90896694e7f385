"""Retries that tell transient from permanent.

A step that fails records why on its own task (user properties ``failure_kind`` and
``failure_reason``); the controller's retry policy reads them: a permanent failure (bad
data, bad config, a missing model, code that differs from the controller's) fails the
pipeline at once with the reason on the controller; a transient one (storage timeouts, a
killed process, CUDA out of memory when a smaller batch is possible) is retried, each retry
logged on the controller with its cause.
"""

from __future__ import annotations

from typing import Any

from components.atomic import DISK_FULL_HINT, disk_full
from components.inference.engine import GenerationOutOfMemory
from components.storage import StorageError

PERMANENT, TRANSIENT = "permanent", "transient"


class CodeSkew(RuntimeError):
    """A step runs other code than its controller (an image built from another commit)."""


def classify(exc: BaseException) -> tuple[str, str]:
    """(kind, one-line reason) of a step's exception."""
    reason = " ".join(f"{exc.__class__.__name__}: {str(exc).strip() or repr(exc)}".split())
    if isinstance(exc, GenerationOutOfMemory):
        kind = TRANSIENT if exc.smaller_batch is not None else PERMANENT
    elif isinstance(exc, StorageError):
        kind = TRANSIENT if exc.transient else PERMANENT
    elif isinstance(exc, (ConnectionError, TimeoutError)):
        kind = TRANSIENT
    elif disk_full(exc):  # the retry would land on the same full disk
        kind, reason = PERMANENT, f"{reason}; {DISK_FULL_HINT}"
    elif isinstance(exc, OSError) and not isinstance(
        exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)
    ):
        kind = TRANSIENT  # a dropped mount, an I/O error
    elif _is_botocore_network_error(exc):
        kind = TRANSIENT
    else:
        kind = PERMANENT  # bad data, bad config, a missing model, a bug: the same next time
    return kind, reason[:500]


def _is_botocore_network_error(exc: BaseException) -> bool:
    try:
        from boto3.exceptions import RetriesExceededError
        from botocore.exceptions import ConnectionError as BotoConnectionError
        from botocore.exceptions import ReadTimeoutError
    except ImportError:
        return False
    return isinstance(exc, (BotoConnectionError, ReadTimeoutError, RetriesExceededError))


def record(task: Any, exc: BaseException) -> None:
    """Leaves the failure's kind and reason on the step's task for the controller."""
    kind, reason = classify(exc)
    properties = {"failure_kind": kind, "failure_reason": reason}
    if isinstance(exc, GenerationOutOfMemory) and exc.smaller_batch is not None:
        properties["batch_size_cap"] = str(exc.smaller_batch)
    task.set_user_properties(**properties)
    print(f"step failed ({kind}): {reason}", flush=True)


def batch_cap(task: Any) -> int | None:
    """The batch size an earlier attempt of this step ran out of memory above."""
    value = (task.get_user_properties(value_only=True) or {}).get("batch_size_cap")
    return int(value) if value else None


class RetryPolicy:
    """``retry_on_failure`` of the PipelineController: at most ``retries`` retries of
    transient failures; the reasons of final failures are kept for the controller's own."""

    def __init__(self, retries: int) -> None:
        self.retries = retries
        self.final: dict[str, str] = {}

    def __call__(self, pipeline: Any, node: Any, attempts: int) -> bool:
        task = node.job.task
        task.reload()
        props = task.get_user_properties(value_only=True) or {}
        kind = props.get("failure_kind") or TRANSIENT
        reason = props.get("failure_reason") or (
            "its process was killed before it could say why (out of memory, or stopped "
            "from outside)"
        )
        retry = kind == TRANSIENT and attempts < self.retries
        if retry:
            task.set_user_properties(failure_kind="", failure_reason="")
            what = f"retry {attempts + 1} of {self.retries}"
        else:
            self.final[node.name] = f"{kind}: {reason}"
            what = "not retried (permanent)" if kind == PERMANENT else "no retries left"
        pipeline.get_logger().report_text(f"step {node.name} failed ({kind}): {reason}; {what}")
        return retry

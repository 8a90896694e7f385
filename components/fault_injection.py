"""Test-only faults, read from the environment here and nowhere else: they let the tests make
the failures the README promises to survive happen on cue, through the real code paths.

- ``SLM_QA_EVAL_TEST_OOM_ABOVE=N``: a generation batch of more than N prompts raises the
  device's own out-of-memory error (``torch.OutOfMemoryError``).
- ``SLM_QA_EVAL_TEST_HOLD_S=S``: an inference attempt that resumed nothing pauses S seconds
  after its first checkpointed batch, so a test can kill it mid-run, deterministically; the
  retry (which resumes) does not pause.

Unset, each is a no-op.
"""

from __future__ import annotations

import os
import time

OOM_ABOVE = "SLM_QA_EVAL_TEST_OOM_ABOVE"
HOLD_S = "SLM_QA_EVAL_TEST_HOLD_S"


def _number(name: str) -> float | None:
    text = os.environ.get(name, "").strip()
    return float(text) if text else None


def out_of_memory_above(rows: int) -> None:
    """Raises torch's out-of-memory error when a batch of ``rows`` exceeds the set limit."""
    limit = _number(OOM_ABOVE)
    if limit is not None and rows > limit:
        import torch

        raise torch.OutOfMemoryError(
            f"CUDA out of memory (injected by {OOM_ABOVE}={limit:g}: a batch of {rows} prompts)"
        )


def hold_after_first_batch(resumed: int, batches_saved: int) -> None:
    """Pauses a fresh attempt once its first batch is checkpointed."""
    seconds = _number(HOLD_S)
    if seconds and resumed == 0 and batches_saved == 1:
        print(f"holding {seconds:g} s after the first checkpointed batch ({HOLD_S})", flush=True)
        time.sleep(seconds)

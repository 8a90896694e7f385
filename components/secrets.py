"""Keep secrets out of everything a run saves or shares."""

from __future__ import annotations

import re
from typing import Any

_SECRET_KEY = re.compile(r"secret|password|passwd|token|access_key|private_key|credential", re.I)
REDACTED = "***redacted***"


def redact(value: Any) -> Any:
    """A copy with the value of every secret-looking key replaced: configs are saved with
    results and attached to clone-able ClearML tasks, so secrets must never reach them."""
    if isinstance(value, dict):
        return {
            k: REDACTED if _SECRET_KEY.search(str(k)) and v not in (None, "") else redact(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value

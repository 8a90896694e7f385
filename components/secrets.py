"""Keep secrets out of everything a run saves or shares."""

from __future__ import annotations

import re
from typing import Any

# Whole name segments only: `api_token` and `aws_access_key_id` are secrets, `max_new_tokens`
# is not.
_SECRET_KEY = re.compile(
    r"(^|_)(secret|secret_key|password|passwd|token|api_key|access_key|private_key|"
    r"credentials?)($|_)",
    re.I,
)
REDACTED = "***redacted***"


def is_secret_key(name: str) -> bool:
    """Whether a setting's name (its last segment) says it holds a secret."""
    return bool(_SECRET_KEY.search(name))


def redact(value: Any) -> Any:
    """A copy with the value of every secret-looking key replaced: configs are saved with
    results and attached to clone-able ClearML tasks, so secrets must never reach them."""
    if isinstance(value, dict):
        return {
            k: REDACTED if is_secret_key(str(k)) and v not in (None, "") else redact(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value

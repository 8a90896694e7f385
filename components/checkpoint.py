"""Resume after a kill: finished generations are appended to a checkpoint, flushed per batch.

The file name carries a hash of everything that decides a prediction (model, inference
settings, the examples), so a changed config or dataset never reuses another run's answers.
Batch size, shard count and GPU memory share are left out: they decide speed and memory,
and a run that died of them can resume with other values.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

EXECUTION_ONLY = ("batch_size", "shards", "gpu_memory_utilization")


def prediction_settings(inference: dict[str, Any]) -> dict[str, Any]:
    """The inference settings that decide a prediction."""
    return {k: v for k, v in inference.items() if k not in EXECUTION_ONLY}


def short_digest(value: Any) -> str:
    """16 hex characters of the sha256 of ``value`` as sorted JSON."""
    blob = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def checkpoint_key(model: dict[str, Any], inference: dict[str, Any], examples_sha256: str) -> str:
    return short_digest(
        {"model": model, "inference": prediction_settings(inference), "examples": examples_sha256}
    )


class Checkpoint:
    def __init__(self, run_dir: str | Path, key: str) -> None:
        self.path = Path(run_dir) / f"checkpoint-{key}.jsonl"

    def load(self) -> dict[str, dict[str, Any]]:
        """Records by question id. A line cut short by SIGKILL is ignored (and redone)."""
        done: dict[str, dict[str, Any]] = {}
        if not self.path.is_file():
            return done
        with self.path.open(encoding="utf-8", errors="replace") as fh:
            for line in fh:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(record, dict) and "question_id" in record:
                    done[record["question_id"]] = record
        return done

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        with self.path.open("a", encoding="utf-8") as fh:
            if fh.tell() and not self._ends_with_newline():
                fh.write("\n")  # seal a line a kill cut short, so it stays one bad line
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())

    def _ends_with_newline(self) -> bool:
        with self.path.open("rb") as fh:
            fh.seek(-1, os.SEEK_END)
            return fh.read(1) == b"\n"

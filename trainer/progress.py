"""Machine-readable progress: one JSON object per line on a worker's stdout.

The local runner draws its progress bar from these records and the operator turns the
chief's into TrainingJob status, so this is the one channel a worker reports through.
Record types: `start`, `resumed`, `batch` (chief, throttled), `epoch`, `result`, `error`.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO

RECORD_TYPES = ("start", "resumed", "batch", "epoch", "result", "error")


def emit(record_type: str, stream: TextIO | None = None, **fields: Any) -> None:
    record = {"type": record_type, "time": round(time.time(), 3), **fields}
    out = stream or sys.stdout
    out.write(json.dumps(record, default=float) + "\n")
    out.flush()


def parse(line: str) -> dict[str, Any] | None:
    """The record on a line, or None for anything else a worker may print."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if isinstance(record, dict) and record.get("type") in RECORD_TYPES:
        return record
    return None

"""Operator-wide settings, read once from the environment (the Deployment sets them)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from kubetrain.trainer.api.entrypoints import SERVE_COMMAND, WORKER_COMMAND


def _command(variable: str, default: list[str] | None) -> list[str] | None:
    """A command given as a JSON list, e.g. KUBETRAIN_WORKER_COMMAND='["kubetrain","worker"]'."""
    raw = os.environ.get(variable)
    if not raw:
        return default
    value = json.loads(raw)
    if not (isinstance(value, list) and value and all(isinstance(v, str) for v in value)):
        raise ValueError(f"{variable} must be a non-empty JSON list of strings")
    return value


@dataclass
class Settings:
    interval: float = field(
        default_factory=lambda: float(os.environ.get("KUBETRAIN_RECONCILE_INTERVAL", "2"))
    )
    """Seconds between two reconciles of one job (progress and rollout polling too)."""
    threads: int = field(default_factory=lambda: int(os.environ.get("KUBETRAIN_THREADS", "16")))
    log_tail_lines: int = 200
    log_limit_bytes: int = 256 * 1024
    """The most of the chief's log one reconcile reads: a chief printing huge lines must not
    push the operator, shared by every job, out of memory. Progress is read from what fits."""
    worker_command: list[str] = field(
        default_factory=lambda: _command("KUBETRAIN_WORKER_COMMAND", list(WORKER_COMMAND))
    )
    """Worker entrypoint before `--workdir DIR --model-root DIR`."""
    serving_command: list[str] = field(
        default_factory=lambda: _command("KUBETRAIN_SERVING_COMMAND", list(SERVE_COMMAND))
    )
    """Model server entrypoint before `--model-dir DIR --port 8501`."""
    liveness_port: int | None = field(
        default_factory=lambda: int(os.environ.get("KUBETRAIN_LIVENESS_PORT", "0")) or None
    )


SETTINGS = Settings()

"""Operator-wide settings, read once from the environment (the Deployment sets them)."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

from kubetrain.operator.defaults import JobDefaults
from kubetrain.operator.serving import Access
from kubetrain.trainer.api.entrypoints import SERVE_COMMAND, WORKER_COMMAND
from kubetrain.trainer.api.spec import (
    LOCAL_TRAINER_IMAGE,
    OBJECT_STORE_URI,
    Storage,
    parse_storage,
)


def _command(variable: str, default: list[str] | None) -> list[str] | None:
    """A command given as a JSON list, e.g. KUBETRAIN_WORKER_COMMAND='["kubetrain","worker"]'."""
    raw = os.environ.get(variable)
    if not raw:
        return default
    value = json.loads(raw)
    if not (isinstance(value, list) and value and all(isinstance(v, str) for v in value)):
        raise ValueError(f"{variable} must be a non-empty JSON list of strings")
    return value


def _flag(variable: str, default: bool) -> bool:
    raw = os.environ.get(variable, "").strip().lower()
    if not raw:
        return default
    if raw not in ("true", "false"):
        raise ValueError(f"{variable} must be true or false, got {raw!r}")
    return raw == "true"


def _peers(variable: str) -> list[dict[str, Any]]:
    """NetworkPolicy `from` peers as a JSON list, e.g. '[{"podSelector": {}}]'."""
    raw = os.environ.get(variable)
    if raw is None:
        return [{"podSelector": {}}]
    value = json.loads(raw)
    if not (isinstance(value, list) and all(isinstance(v, dict) for v in value)):
        raise ValueError(f"{variable} must be a JSON list of NetworkPolicy peers (objects)")
    return value


def _job_defaults() -> JobDefaults:
    """KUBETRAIN_DEFAULT_IMAGE, and KUBETRAIN_DEFAULT_STORAGE as a JSON `spec.storage`."""
    image = os.environ.get("KUBETRAIN_DEFAULT_IMAGE") or LOCAL_TRAINER_IMAGE
    raw = os.environ.get("KUBETRAIN_DEFAULT_STORAGE", "").strip()
    storage: Storage | None = None
    if raw and raw != "{}":
        try:
            storage = parse_storage(json.loads(raw))
        except ValueError as err:  # SpecError and JSONDecodeError among them
            raise ValueError(f"KUBETRAIN_DEFAULT_STORAGE: {err}") from None
        if storage.uri and not re.match(OBJECT_STORE_URI, storage.uri):
            raise ValueError(
                f"KUBETRAIN_DEFAULT_STORAGE: uri {storage.uri!r} must be s3://bucket/prefix "
                "or gs://bucket/prefix"
            )
    return JobDefaults(image=image, storage=storage)


@dataclass
class Settings:
    interval: float = field(
        default_factory=lambda: float(os.environ.get("KUBETRAIN_RECONCILE_INTERVAL", "2"))
    )
    """Seconds between two looks at a promotion under way (its model check, its rollout):
    the operator watches no Deployments, and a promotion lasts seconds to minutes."""
    progress_interval: float = field(
        default_factory=lambda: float(os.environ.get("KUBETRAIN_PROGRESS_INTERVAL", "10"))
    )
    """Seconds between two reads of a running chief's log, and between two looks at a job
    waiting for what no watch reports (a missing claim, a refused pod)."""
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
    network_policies: bool = field(
        default_factory=lambda: _flag("KUBETRAIN_NETWORK_POLICIES", True)
    )
    """Give each job's workers, and each serving Deployment, a NetworkPolicy."""
    serving_allow_from: list[dict[str, Any]] = field(
        default_factory=lambda: _peers("KUBETRAIN_SERVING_ALLOW_FROM")
    )
    """Who may call the serving pods (peers of a NetworkPolicy rule): the namespace's pods."""
    metrics_namespace: str | None = field(
        default_factory=lambda: os.environ.get("KUBETRAIN_METRICS_NAMESPACE") or None
    )
    """The namespace whose pods may scrape serving pods' metrics."""
    job_defaults: JobDefaults = field(default_factory=_job_defaults)
    """The trainer image and storage of jobs that name none (the chart's jobDefaults)."""
    liveness_port: int | None = field(
        default_factory=lambda: int(os.environ.get("KUBETRAIN_LIVENESS_PORT", "0")) or None
    )
    metrics_port: int | None = field(
        default_factory=lambda: int(os.environ.get("KUBETRAIN_METRICS_PORT", "8080")) or None
    )
    """Port of the operator's Prometheus metrics (`/metrics`, every replica); 0 turns it off."""
    leader_election: bool = field(default_factory=lambda: _flag("KUBETRAIN_LEADER_ELECTION", False))
    """Reconcile only while holding the Lease, so that several replicas can run."""
    lease_namespace: str = field(
        default_factory=lambda: (
            os.environ.get("KUBETRAIN_LEASE_NAMESPACE")
            or os.environ.get("WATCH_NAMESPACE")
            or "default"
        )
    )
    """Where the Lease lives: the operator's own namespace (the chart's downward API)."""
    lease_duration: float = field(
        default_factory=lambda: float(os.environ.get("KUBETRAIN_LEASE_DURATION", "15"))
    )
    """Seconds a standby waits on an unrenewed Lease (renew deadline and retry scale with it)."""

    def serving_access(self) -> Access | None:
        """Who may reach serving pods, or None when NetworkPolicies are off."""
        if not self.network_policies:
            return None
        return Access(self.serving_allow_from, self.metrics_namespace)


SETTINGS = Settings()

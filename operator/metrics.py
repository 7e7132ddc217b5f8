"""The operator's Prometheus metrics: what happened to jobs, and how the reconciles keep up.

A reconcile is level-triggered and may run many times per job, so counters do not count
reconciles: they count transitions, the differences between the status a reconcile read and
the status it wrote (`transitions`, a pure function). The handler records them only after the
status patch went through, so a job's step is counted once, whoever reconciles it and however
often (an operator that dies between the two loses that count, as it loses all its counts).
Only the leader reconciles, so only its counters move; every replica serves its own.

The metrics live in a registry of their own (`REGISTRY`), not the process-wide default, so
that nothing else imported into the process adds to what the operator's endpoint shows.
"""

from __future__ import annotations

import threading
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from wsgiref.simple_server import WSGIServer

from kubetrain.operator.promotion import GATE_REFUSALS
from kubetrain.operator.reconcile import FINISHED_TRAINING
from kubetrain.operator.status import get_condition
from kubetrain.operator.trials import ENDED as TRIAL_ENDED
from kubetrain.trainer.api.status import ConditionType, Phase
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)

PATH = "/metrics"
"""Where the endpoint answers (it answers on any path; this is the one to scrape)."""

# Metric names, as scraped. Counters end in _total (prometheus_client also adds a _created
# series per label set, the time it was first counted).
JOBS_CREATED = "kubetrain_jobs_created_total"
JOBS_SUCCEEDED = "kubetrain_jobs_succeeded_total"
JOBS_FAILED = "kubetrain_jobs_failed_total"
JOBS_RESTARTED = "kubetrain_jobs_restarted_total"
PROMOTIONS = "kubetrain_promotions_total"
TRIALS_ENDED = "kubetrain_trials_ended_total"
RECONCILE_SECONDS = "kubetrain_reconcile_duration_seconds"
QUEUE_DEPTH = "kubetrain_workqueue_depth"
LEADER = "kubetrain_is_leader"

# Labels. Not `namespace`: Prometheus gives every scraped series its target's `namespace`
# (the operator's), and would rename a `namespace` label of the metric to
# `exported_namespace`.
JOB_NAMESPACE = "job_namespace"
REASON = "reason"
"""A condition's reason (`kubetrain.trainer.api.status.Reason`): a fixed set of values."""
OUTCOME = "outcome"
STATE = "state"
RESULT = "result"


class Outcome(StrEnum):
    """How a promotion ended, from its Promoted condition."""

    PROMOTED = "promoted"
    """The new version rolled out and serves."""
    REJECTED = "rejected"
    """The gate kept the served model: the new one is not better, or not comparable."""
    FAILED = "failed"
    """Promotion could not happen or did not finish (no model, a foreign Deployment, a model
    missing from storage, a rollout that failed and was rolled back, a refused request)."""


class Result(StrEnum):
    """How one reconcile ended."""

    SUCCESS = "success"
    ERROR = "error"
    """It raised: retried with backoff."""


TRAINED = FINISHED_TRAINING - {Phase.FAILED}
"""Phases of a job whose training succeeded, whatever became of its promotion since."""

REGISTRY = CollectorRegistry()
# The process's memory, CPU and garbage collection, as the default registry would show them.
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

_jobs_created = Counter(
    JOBS_CREATED,
    "TrainingJobs the operator started to handle (first status written).",
    [JOB_NAMESPACE],
    registry=REGISTRY,
)
_jobs_succeeded = Counter(
    JOBS_SUCCEEDED,
    "TrainingJobs whose training succeeded (phase Succeeded), before any promotion.",
    [JOB_NAMESPACE],
    registry=REGISTRY,
)
_jobs_failed = Counter(
    JOBS_FAILED,
    "TrainingJobs that failed (phase Failed), by the reason of their Failed condition.",
    [JOB_NAMESPACE, REASON],
    registry=REGISTRY,
)
_jobs_restarted = Counter(
    JOBS_RESTARTED,
    "Restarts of all of a TrainingJob's workers after one of them failed.",
    [JOB_NAMESPACE],
    registry=REGISTRY,
)
_promotions = Counter(
    PROMOTIONS,
    "Promotions decided, by outcome and the reason of the Promoted condition.",
    [JOB_NAMESPACE, OUTCOME, REASON],
    registry=REGISTRY,
)
_trials_ended = Counter(
    TRIALS_ENDED,
    "Trials of jobs with spec.trials that ended, by state: Succeeded, EarlyStopped or Failed.",
    [JOB_NAMESPACE, STATE],
    registry=REGISTRY,
)
_reconcile_seconds = Histogram(
    RECONCILE_SECONDS,
    "Seconds one reconcile of one job took: reading it, acting, writing its status.",
    [RESULT],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    registry=REGISTRY,
)
_queue_depth = Gauge(
    QUEUE_DEPTH,
    "Jobs due for a reconcile that no worker thread has taken yet.",
    registry=REGISTRY,
)
_leader = Gauge(
    LEADER,
    "1 on the replica that reconciles (holds the Lease, or elects none), 0 on a standby.",
    registry=REGISTRY,
)


@dataclass(frozen=True)
class Transitions:
    """What one status update changed that is worth counting."""

    created: bool = False
    succeeded: bool = False
    failed: str | None = None
    """The reason of the Failed condition, when the job turned Failed."""
    restarts: int = 0
    promotion: tuple[Outcome, str] | None = None
    """(outcome, reason) when the Promoted condition was set or changed."""
    trials: tuple[tuple[str, int], ...] = ()
    """(state, how many) of the trials that ended, by state."""


def _condition(status: dict[str, Any], type_: str) -> tuple[str, str] | None:
    cond = get_condition(status.get("conditions") or [], type_)
    return (cond.get("status") or "", cond.get("reason") or "") if cond else None


def outcome(promoted: str, reason: str) -> Outcome:
    """A Promoted condition's (status, reason) as an outcome."""
    if promoted == "True":
        return Outcome.PROMOTED
    return Outcome.REJECTED if reason in GATE_REFUSALS else Outcome.FAILED


def transitions(old: dict[str, Any], new: dict[str, Any]) -> Transitions:
    """What changed from the status `old` (as read) to `new` (as written).

    Every value is a change, never a state: a reconcile that writes what it read counts
    nothing, so running it again, or after an operator restart, adds nothing.
    """
    was, now = old.get("phase"), new.get("phase")
    failed = None
    if now == Phase.FAILED and was != Phase.FAILED:
        failed = (_condition(new, ConditionType.FAILED) or ("", "Unknown"))[1]
    promotion = None
    promoted = _condition(new, ConditionType.PROMOTED)
    if promoted is not None and promoted != _condition(old, ConditionType.PROMOTED):
        promotion = (outcome(*promoted), promoted[1])
    before = {row["index"]: row.get("state") for row in old.get("trials") or []}
    ended = Tally(
        row["state"]
        for row in new.get("trials") or []
        if row.get("state") in TRIAL_ENDED and before.get(row["index"]) != row["state"]
    )
    return Transitions(
        created=was is None and now is not None,
        succeeded=now in TRAINED and was not in TRAINED,
        failed=failed,
        restarts=max(0, int(new.get("restarts") or 0) - int(old.get("restarts") or 0)),
        promotion=promotion,
        trials=tuple(sorted(ended.items())),
    )


def record(namespace: str, old: dict[str, Any], new: dict[str, Any]) -> Transitions:
    """Count what a status update that went through changed; returns what was counted."""
    changed = transitions(old, new)
    if changed.created:
        _jobs_created.labels(namespace).inc()
    if changed.succeeded:
        _jobs_succeeded.labels(namespace).inc()
    if changed.failed is not None:
        _jobs_failed.labels(namespace, changed.failed).inc()
    if changed.restarts:
        _jobs_restarted.labels(namespace).inc(changed.restarts)
    if changed.promotion is not None:
        _promotions.labels(namespace, *changed.promotion).inc()
    for state, count in changed.trials:
        _trials_ended.labels(namespace, state).inc(count)
    return changed


@contextmanager
def reconcile_timer() -> Iterator[None]:
    """Time one reconcile into the histogram, as an error if it raises (which passes on)."""
    started = time.monotonic()
    result = Result.ERROR
    try:
        yield
        result = Result.SUCCESS
    finally:
        _reconcile_seconds.labels(result).observe(time.monotonic() - started)


def track(queue_depth: Callable[[], int], leading: Callable[[], bool]) -> None:
    """Read the queue's depth and the leadership at each scrape, not on every change."""
    _queue_depth.set_function(queue_depth)
    _leader.set_function(lambda: 1.0 if leading() else 0.0)


@dataclass
class Server:
    """The metrics endpoint: an HTTP server on its own daemon thread."""

    httpd: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return self.httpd.server_port

    def close(self) -> None:
        """Stop serving and free the port (an in-process operator may start again)."""
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


def serve(port: int, address: str = "0.0.0.0") -> Server:
    """Serve `REGISTRY` on `address:port` (port 0: any free one, see `Server.port`)."""
    httpd, thread = start_http_server(port, address, registry=REGISTRY)
    return Server(httpd, thread)

"""Decide what a TrainingJob needs next, from its spec, its status and its worker pods.

`plan()` is a pure function: the handler observes (status, pods), calls it, carries out the
returned actions and patches the returned status. Every decision can be re-made from what
the API server holds, so running it twice, or after an operator restart, is harmless:
creating an existing pod is a 409, and each status value is computed, not incremented
blindly (a restart sets `restarts` to the observed attempt + 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from kubetrain.operator.manifests import pod_name
from kubetrain.operator.status import ConditionType, Phase, now_iso, parse_time, set_condition
from kubetrain.trainer.spec import TrainingJobSpec

PERMANENT_EXIT_CODE = 3
"""The trainer exits 3 for a bad spec or bad data: restarting cannot help."""

DELETE_GRACE_SECONDS = 1
"""Grace for pods the operator deletes: TensorFlow ignores SIGTERM, so SIGKILL follows soon."""

FORCE_DELETE_AFTER = timedelta(seconds=20)
"""A pod still terminating this long (its node is gone) is removed from the API at once."""

FINISHED_TRAINING = {Phase.SUCCEEDED, Phase.PROMOTING, Phase.PROMOTED, Phase.FAILED}


@dataclass
class Problem:
    """Something wrong with the job that its schema could not catch."""

    reason: str
    message: str
    permanent: bool


@dataclass
class Plan:
    status: dict[str, Any] = field(default_factory=dict)
    """Status fields whose value changes (a JSON merge patch of `status`)."""
    create: list[int] = field(default_factory=list)
    """Worker indexes whose pods to create."""
    delete: list[tuple[str, int]] = field(default_factory=list)
    """(pod name, grace seconds) to delete."""
    events: list[tuple[str, str, str]] = field(default_factory=list)
    """(type, reason, message) Events to post on the job."""
    read_progress: bool = False
    """Read the chief's latest epoch records: while it runs, and on the tick it succeeds
    (before `delete` removes its pod, and its log with it)."""
    promote: bool = False
    """Training succeeded and promotion is due or under way."""
    delete_job: bool = False
    """`ttlSecondsAfterFinished` has passed."""


def promotion_decided(spec: TrainingJobSpec, status: dict[str, Any]) -> bool:
    return not spec.promotion.enabled or any(
        c.get("type") == ConditionType.PROMOTED for c in status.get("conditions") or []
    )


def is_finished(spec: TrainingJobSpec, status: dict[str, Any]) -> bool:
    phase = status.get("phase")
    return phase in (Phase.FAILED, Phase.PROMOTED) or (
        phase == Phase.SUCCEEDED and promotion_decided(spec, status)
    )


def _deletions(pods: list[dict[str, Any]], now: datetime, select: Any) -> list[tuple[str, int]]:
    """Delete the selected pods once; force those stuck terminating on a lost node."""
    out = []
    for pod in pods:
        if not select(pod):
            continue
        since = parse_time(pod.get("deletionTimestamp"))
        if since is None:
            out.append((pod["name"], DELETE_GRACE_SECONDS))
        elif now - since > FORCE_DELETE_AFTER:
            out.append((pod["name"], 0))
    return out


def _running(pod: dict[str, Any]) -> bool:
    return pod["phase"] not in ("Succeeded", "Failed")


def cleanup(
    pods: list[dict[str, Any]], policy: str, now: datetime, kill_running: bool = False
) -> list[tuple[str, int]]:
    """Pods to delete when the job has finished, per `cleanPodPolicy`."""

    def select(pod: dict[str, Any]) -> bool:
        if policy == "All":
            return True
        return _running(pod) and (policy == "Running" or kill_running)

    return _deletions(pods, now, select)


def worker_counts(
    replicas: int, pods: list[dict[str, Any]], completed: list[int]
) -> dict[str, Any]:
    phases = [p["phase"] for p in pods]
    ready = phases.count("Running")
    return {
        "workers": {
            "desired": replicas,
            "active": phases.count("Running") + phases.count("Pending"),
            "ready": ready,
            "succeeded": len(
                set(completed) | {p["index"] for p in pods if p["phase"] == "Succeeded"}
            ),
            "failed": phases.count("Failed"),
            "completedIndexes": sorted(completed),
        },
        "workersReady": f"{ready}/{replicas}",
    }


def _describe_failure(pod: dict[str, Any]) -> str:
    if pod.get("exitCode") is not None:
        what = f"exited with code {pod['exitCode']}"
        if pod.get("reason"):
            what += f" ({pod['reason']})"
    else:
        what = f"failed ({pod.get('reason') or 'no reason given'})"
    message = (pod.get("message") or "").strip().splitlines()
    tail = f": {message[-1]}" if message else ""
    return f"{pod['name']} {what}{tail}"


class _Builder:
    """Accumulates a new status and the actions that go with it."""

    def __init__(self, status: dict[str, Any], now: datetime) -> None:
        self.old = status
        self.new = dict(status)
        self.now = now
        self.stamp = now_iso(now)
        self.plan = Plan()

    def condition(self, type_: str, value: bool, reason: str, message: str = "") -> None:
        self.new["conditions"] = set_condition(
            self.new.get("conditions") or [], type_, value, reason, message, self.stamp
        )

    def event(self, type_: str, reason: str, message: str) -> None:
        self.plan.events.append((type_, reason, message))

    def fail(self, cause: str, reason: str, message: str) -> None:
        """Mark the job Failed; `cause` is the condition that turns False with the reason."""
        self.new["phase"] = Phase.FAILED
        self.new["completionTime"] = self.stamp
        self.new["lastFailure"] = message
        self.condition(cause, False, reason, message)
        self.condition(ConditionType.FAILED, True, reason, message)
        self.event("Warning", reason, message)

    def finish(self) -> Plan:
        self.plan.status = {k: v for k, v in self.new.items() if self.old.get(k) != v}
        return self.plan


def plan(
    spec: TrainingJobSpec,
    name: str,
    status: dict[str, Any],
    pods: list[dict[str, Any]],
    now: datetime,
    problem: Problem | None = None,
    generation: int | None = None,
) -> Plan:
    """What to do next for job `name`, given its status and its worker pods' summaries."""
    b = _Builder(status, now)
    if generation is not None:
        b.new["observedGeneration"] = generation
    policy = spec.run_policy
    replicas = spec.workers.replicas
    phase = status.get("phase")
    restarts = int(status.get("restarts") or 0)
    current = [p for p in pods if p["attempt"] == restarts]
    stale = [p for p in pods if p["attempt"] != restarts]
    completed = list((status.get("workers") or {}).get("completedIndexes") or [])

    def fail(reason: str, message: str, kill_running: bool = False) -> Plan:
        b.fail(ConditionType.RUNNING, reason, message)
        b.plan.delete = cleanup(pods, policy.clean_pod_policy, now, kill_running)
        b.new.update(worker_counts(replicas, current, completed))
        return b.finish()

    if phase in FINISHED_TRAINING:
        b.plan.delete = cleanup(pods, policy.clean_pod_policy, now)
        b.new.update(worker_counts(replicas, current, completed))
        if phase == Phase.PROMOTING or (
            phase == Phase.SUCCEEDED and not promotion_decided(spec, status)
        ):
            b.plan.promote = True
        elif policy.ttl_seconds_after_finished is not None and is_finished(spec, status):
            done = parse_time(status.get("completionTime")) or now
            if now >= done + timedelta(seconds=policy.ttl_seconds_after_finished):
                b.plan.delete_job = True
        return b.finish()

    if phase is None:
        b.new["phase"] = Phase.PENDING
        b.new["restarts"] = 0
        b.new["totalEpochs"] = spec.training.epochs
        b.new["epochProgress"] = f"0/{spec.training.epochs}"

    if problem is not None:
        b.condition(ConditionType.VALID, False, problem.reason, problem.message)
        if problem.permanent:
            return fail(problem.reason, problem.message)
        if (status.get("conditions") or []) != b.new["conditions"] or phase is None:
            b.event("Warning", problem.reason, problem.message)
        b.new.update(worker_counts(replicas, current, completed))
        return b.finish()
    b.condition(ConditionType.VALID, True, "Valid", "")
    if not b.new.get("startTime"):
        b.new["startTime"] = b.stamp
        b.event("Normal", "Started", f"Starting {replicas} worker pod(s)")

    deadline = policy.active_deadline_seconds
    started = parse_time(b.new.get("startTime"))
    if deadline is not None and started and now >= started + timedelta(seconds=deadline):
        return fail(
            "DeadlineExceeded",
            f"the job ran longer than activeDeadlineSeconds ({deadline}s)",
            kill_running=True,
        )

    if stale:  # a restart is under way: the old attempt's pods must be gone first
        b.new["phase"] = Phase.RESTARTING
        b.plan.delete = _deletions(stale, now, lambda _: True)
        b.new.update(worker_counts(replicas, current, completed))
        return b.finish()

    by_index = {p["index"]: p for p in current}
    for pod in current:
        if pod["exitCode"] == PERMANENT_EXIT_CODE:
            return fail("PermanentError", _describe_failure(pod))

    completed = sorted(set(completed) | {p["index"] for p in current if p["phase"] == "Succeeded"})
    chief = by_index.get(0)
    if chief is not None and chief["phase"] == "Succeeded":
        b.new["phase"] = Phase.SUCCEEDED
        b.new["completionTime"] = b.stamp
        b.condition(ConditionType.RUNNING, False, "Completed", "")
        b.condition(
            ConditionType.SUCCEEDED,
            True,
            "ChiefSucceeded",
            "the chief finished training and exported the best model",
        )
        b.event("Normal", "Succeeded", "Training finished")
        b.plan.read_progress = True  # its last epochs, before cleanup deletes its log
        b.plan.delete = cleanup(pods, policy.clean_pod_policy, now)
        b.plan.promote = spec.promotion.enabled
        b.new.update(worker_counts(replicas, current, completed))
        return b.finish()

    failures = [_describe_failure(p) for p in current if p["phase"] == "Failed"]
    failures += [
        f"{p['name']} was deleted"
        for p in current
        if p["deletionTimestamp"] and p["phase"] != "Succeeded" and p["phase"] != "Failed"
    ]
    if status.get("launchedAttempt") == restarts:
        failures += [
            f"{pod_name(name, i)} disappeared"
            for i in range(replicas)
            if i not in by_index and i not in completed
        ]
    if failures:
        message = "; ".join(failures)
        if restarts >= policy.backoff_limit:
            return fail(
                "BackoffLimitExceeded",
                f"{message} (no restarts left: backoffLimit is {policy.backoff_limit})",
            )
        b.new["phase"] = Phase.RESTARTING
        b.new["restarts"] = restarts + 1
        b.new["lastFailure"] = message
        b.condition(ConditionType.RUNNING, False, "Restarting", message)
        b.event(
            "Warning", "Restarting", f"restart {restarts + 1} of {policy.backoff_limit}: {message}"
        )
        b.plan.delete = _deletions(current, now, lambda _: True)
        b.new.update(worker_counts(replicas, [], []))
        return b.finish()

    missing = [i for i in range(replicas) if i not in by_index and i not in completed]
    if missing:
        b.plan.create = missing
    else:
        b.new["launchedAttempt"] = restarts
    waiting = [p for p in current if p["phase"] == "Pending"]
    if missing or waiting:
        b.new["phase"] = Phase.PENDING
        b.condition(
            ConditionType.RUNNING,
            False,
            "WorkersPending",
            f"{len(missing) + len(waiting)} worker pod(s) not running yet",
        )
    else:
        if phase != Phase.RUNNING:
            b.event("Normal", "Running", f"All {replicas} worker pod(s) running")
        b.new["phase"] = Phase.RUNNING
        b.condition(ConditionType.RUNNING, True, "WorkersRunning", "")
    b.plan.read_progress = chief is not None and chief["phase"] == "Running"
    b.new.update(worker_counts(replicas, current, completed))
    return b.finish()


def reject(status: dict[str, Any], reason: str, message: str, now: datetime) -> Plan:
    """A job whose spec does not parse (the schema let it through): Failed, Valid=False."""
    b = _Builder(status, now)
    if status.get("phase") != Phase.FAILED:
        b.fail(ConditionType.VALID, reason, message)
    return b.finish()

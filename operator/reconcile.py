"""Decide what a TrainingJob needs next, from its spec, its status and its worker pods.

`plan()` is a pure function made of named steps (finished, problem, deadline, restart,
launch, ...): the handler observes (status, pods), calls it, carries out the returned actions
and patches the returned status. Every decision can be re-made from what
the API server holds, so running it twice, or after an operator restart, is harmless:
creating an existing pod is a 409, and each status value is computed, not incremented
blindly (a restart sets `restarts` to the observed attempt + 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from kubetrain.operator import tensorboard
from kubetrain.operator.manifests import pod_name
from kubetrain.operator.status import get_condition, now_iso, parse_time, set_condition
from kubetrain.operator.tensorboard import Action as TensorBoardAction
from kubetrain.trainer.api.records import EXIT_PERMANENT
from kubetrain.trainer.api.spec import TrainingJobSpec
from kubetrain.trainer.api.status import ConditionType, Phase, Reason

DELETE_GRACE_SECONDS = 1
"""Grace for pods the operator deletes: TensorFlow ignores SIGTERM, so SIGKILL follows soon."""

FORCE_DELETE_AFTER = timedelta(seconds=20)
"""A pod still terminating this long (its node is gone) is removed from the API at once."""

FINISHED_TRAINING = {Phase.SUCCEEDED, Phase.PROMOTING, Phase.PROMOTED, Phase.FAILED}


@dataclass
class Problem:
    """Something wrong with the job that its schema could not catch."""

    reason: Reason
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
    create_trials: list[int] = field(default_factory=list)
    """With spec.trials: the trials whose TrainingJobs to create."""
    delete_trials: list[str] = field(default_factory=list)
    """With spec.trials: trial TrainingJobs to delete (stopped early, or the job failed)."""
    create_refit: int | None = None
    """With spec.trials.refit: the trial whose parameters the refit's TrainingJob trains."""
    tensorboard: TensorBoardAction | None = None
    """Create or delete the job's TensorBoard (`tensorboard.action`); the handler records
    the outcome in `status.tensorboard`."""


def promotion_decided(spec: TrainingJobSpec, status: dict[str, Any]) -> bool:
    return not spec.promotion.enabled or any(
        c.get("type") == ConditionType.PROMOTED for c in status.get("conditions") or []
    )


def is_finished(spec: TrainingJobSpec, status: dict[str, Any]) -> bool:
    phase = status.get("phase")
    return phase in (Phase.FAILED, Phase.PROMOTED) or (
        phase == Phase.SUCCEEDED and promotion_decided(spec, status)
    )


def _deletions(
    pods: list[dict[str, Any]], now: datetime, select: Any, lost: frozenset[str] = frozenset()
) -> list[tuple[str, int]]:
    """Delete the selected pods once; force those on a lost node (no kubelet will ever
    confirm that they stopped) and those stuck terminating."""
    out = []
    for pod in pods:
        if not select(pod):
            continue
        since = parse_time(pod.get("deletionTimestamp"))
        if pod.get("node") in lost:
            out.append((pod["name"], 0))
        elif since is None:
            out.append((pod["name"], DELETE_GRACE_SECONDS))
        elif now - since > FORCE_DELETE_AFTER:
            out.append((pod["name"], 0))
    return out


def node_suspects(pods: list[dict[str, Any]]) -> set[str]:
    """Nodes worth asking about: those of pods that should run but are not Ready (when a
    node stops reporting, the node controller marks its pods not Ready first)."""
    return {p["node"] for p in pods if p.get("node") and _running(p) and not p.get("ready")}


def node_lost(node: dict[str, Any] | None) -> bool:
    """A node that is gone, or whose Ready condition is False or Unknown (no heartbeat)."""
    if node is None:
        return True
    conditions = (node.get("status") or {}).get("conditions") or []
    ready = next((c.get("status") for c in conditions if c.get("type") == "Ready"), None)
    return ready != "True"


NODE_CONTROLLER_TAINTS = frozenset(
    {"node.kubernetes.io/unreachable", "node.kubernetes.io/not-ready"}
)
"""The taints the node controller gives a node that is not Ready."""
SETTLE_LIMIT = timedelta(seconds=60)
"""The longest a restart waits for the scheduler to keep off its lost nodes."""


def scheduler_keeps_off(node: dict[str, Any] | None) -> bool:
    """Whether no new pod will be placed on a lost node: it is gone, cordoned, tainted
    NoSchedule by the node controller, or Ready again (and so a fair place for one).

    The node controller marks a node's Ready condition Unknown first and taints it a moment
    later; until then the scheduler still places pods there, where they would never start.
    """
    if node is None or not node_lost(node):
        return True
    if (node.get("spec") or {}).get("unschedulable"):
        return True
    taints = (node.get("spec") or {}).get("taints") or []
    return any(
        t.get("key") in NODE_CONTROLLER_TAINTS and t.get("effect") == "NoSchedule" for t in taints
    )


def _running(pod: dict[str, Any]) -> bool:
    return pod["phase"] not in ("Succeeded", "Failed")


def cleanup(
    pods: list[dict[str, Any]],
    policy: str,
    now: datetime,
    kill_running: bool = False,
    lost: frozenset[str] = frozenset(),
) -> list[tuple[str, int]]:
    """Pods to delete when the job has finished, per `cleanPodPolicy`."""

    def select(pod: dict[str, Any]) -> bool:
        if policy == "All":
            return True
        return _running(pod) and (policy == "Running" or kill_running)

    return _deletions(pods, now, select, lost)


def worker_counts(
    replicas: int, pods: list[dict[str, Any]], completed: list[int]
) -> dict[str, Any]:
    phases = [p["phase"] for p in pods]
    ready = phases.count("Running")
    by_index = {p["index"]: p.get("node") or "" for p in pods}
    nodes = [by_index.get(i, "") for i in range(replicas)] if any(by_index.values()) else []
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
            "nodes": nodes,
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


class StatusBuilder:
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


@dataclass
class _Job:
    """What every step reads: the job, its observed status and pods, and the plan being built."""

    spec: TrainingJobSpec
    name: str
    status: dict[str, Any]
    pods: list[dict[str, Any]]
    now: datetime
    b: StatusBuilder
    restarts: int = 0
    current: list[dict[str, Any]] = field(default_factory=list)
    """This attempt's pods."""
    stale: list[dict[str, Any]] = field(default_factory=list)
    """Pods of earlier attempts, on their way out."""
    completed: list[int] = field(default_factory=list)
    """Workers that exited 0 in this attempt."""
    lost: frozenset[str] = frozenset()
    """Nodes that stopped reporting (not Ready): their pods' processes are out of reach."""
    settling: frozenset[str] = frozenset()
    """Of the nodes the last attempt lost, those the scheduler may still place pods on."""

    @property
    def replicas(self) -> int:
        return self.spec.workers.replicas

    @property
    def by_index(self) -> dict[int, dict[str, Any]]:
        return {p["index"]: p for p in self.current}

    def done(self, pods: list[dict[str, Any]] | None = None) -> Plan:
        """The plan, with the worker counts of `pods` (this attempt's by default)."""
        counted = self.current if pods is None else pods
        completed = self.completed if pods is None else []
        if self.spec.trials is None:  # a job with trials has no workers: its trials do
            self.b.new.update(worker_counts(self.replicas, counted, completed))
        return self.b.finish()

    def fail(self, reason: str, message: str, kill_running: bool = False) -> Plan:
        self.b.fail(ConditionType.RUNNING, reason, message)
        policy = self.spec.run_policy.clean_pod_policy
        self.b.plan.delete = cleanup(self.pods, policy, self.now, kill_running, self.lost)
        return self.done()

    def on_lost_node(self, pod: dict[str, Any]) -> bool:
        return pod.get("node") in self.lost and pod["phase"] not in ("Succeeded", "Failed")


def _finished(job: _Job) -> Plan | None:
    """Training has ended: clean up, promote if that is due, and delete after the TTL."""
    if job.status.get("phase") not in FINISHED_TRAINING:
        return None
    spec, status, now, b = job.spec, job.status, job.now, job.b
    policy = spec.run_policy
    b.plan.delete = cleanup(job.pods, policy.clean_pod_policy, now, lost=job.lost)
    phase = status.get("phase")
    if phase == Phase.PROMOTING or (
        phase == Phase.SUCCEEDED and not promotion_decided(spec, status)
    ):
        b.plan.promote = True
    elif policy.ttl_seconds_after_finished is not None and is_finished(spec, status):
        done = parse_time(status.get("completionTime")) or now
        if now >= done + timedelta(seconds=policy.ttl_seconds_after_finished):
            b.plan.delete_job = True
    return job.done()


def _initialize(job: _Job) -> None:
    """A job seen for the first time is Pending at attempt 0."""
    if job.status.get("phase") is None:
        epochs = job.spec.training.epochs
        job.b.new["phase"] = Phase.PENDING
        job.b.new["restarts"] = 0
        job.b.new["totalEpochs"] = epochs
        job.b.new["epochProgress"] = f"0/{epochs}"


def creation_problem(status: int, message: str) -> Problem | None:
    """What an API error on creating worker pods means; None: a passing fault, retry soon."""
    if status in (400, 422):  # the API server refuses the pod: no retry can help
        return Problem(Reason.POD_REJECTED, message, permanent=True)
    if status == 403:  # a quota, Pod Security admission or a webhook: may clear, must be seen
        return Problem(
            Reason.POD_FORBIDDEN,
            f"creating worker pods is forbidden: {message}; the job retries until "
            "spec.runPolicy.activeDeadlineSeconds",
            permanent=False,
        )
    return None


def _problem(job: _Job, problem: Problem | None) -> Plan | None:
    """Something the schema could not catch: fail at once, or wait (reporting it once).

    The job has started either way, so that `activeDeadlineSeconds` also bounds the wait.
    """
    b = job.b
    b.new.setdefault("startTime", b.stamp)
    if problem is None:
        valid = get_condition(job.status.get("conditions") or [], ConditionType.VALID)
        b.condition(ConditionType.VALID, True, Reason.VALID, "")
        if valid is None or valid.get("status") != "True":
            b.event("Normal", Reason.STARTED, f"Starting {job.replicas} worker pod(s)")
        return None
    b.condition(ConditionType.VALID, False, problem.reason, problem.message)
    if problem.permanent:
        return job.fail(problem.reason, problem.message)
    changed = (job.status.get("conditions") or []) != b.new["conditions"]
    if changed or job.status.get("phase") is None:
        b.event("Warning", problem.reason, problem.message)
    return job.done()


def _deadline(job: _Job) -> Plan | None:
    """`activeDeadlineSeconds` has passed: fail, stopping running workers whatever the policy."""
    deadline = job.spec.run_policy.active_deadline_seconds
    started = parse_time(job.b.new.get("startTime"))
    if deadline is None or not started or job.now < started + timedelta(seconds=deadline):
        return None
    return job.fail(
        Reason.DEADLINE_EXCEEDED,
        f"the job ran longer than activeDeadlineSeconds ({deadline}s)",
        kill_running=True,
    )


def _restarting(job: _Job) -> Plan | None:
    """A restart is under way: the old attempt's pods must be gone before new ones start."""
    if not job.stale:
        return None
    job.b.new["phase"] = Phase.RESTARTING
    job.b.plan.delete = _deletions(job.stale, job.now, lambda _: True, job.lost)
    return job.done()


def _permanent_error(job: _Job) -> Plan | None:
    """A worker exited with the trainer's permanent code: no restart can help."""
    for pod in job.current:
        if pod["exitCode"] == EXIT_PERMANENT:
            return job.fail(Reason.PERMANENT_ERROR, _describe_failure(pod))
    return None


def _succeeded(job: _Job) -> Plan | None:
    """The chief exited 0: it trained, exported and wrote its result."""
    job.completed = sorted(
        set(job.completed) | {p["index"] for p in job.current if p["phase"] == "Succeeded"}
    )
    chief = job.by_index.get(0)
    if chief is None or chief["phase"] != "Succeeded":
        return None
    b, policy = job.b, job.spec.run_policy
    b.new["phase"] = Phase.SUCCEEDED
    b.new["completionTime"] = b.stamp
    b.condition(ConditionType.RUNNING, False, Reason.COMPLETED, "")
    b.condition(
        ConditionType.SUCCEEDED,
        True,
        Reason.CHIEF_SUCCEEDED,
        "the chief finished training and exported the best model",
    )
    b.event("Normal", Reason.SUCCEEDED, "Training finished")
    b.plan.read_progress = True  # its last epochs, before cleanup deletes its log
    b.plan.delete = cleanup(job.pods, policy.clean_pod_policy, job.now, lost=job.lost)
    b.plan.promote = job.spec.promotion.enabled
    return job.done()


def _failures(job: _Job) -> list[str]:
    """What went wrong with this attempt's workers, one description each."""
    failures = [_describe_failure(p) for p in job.current if p["phase"] == "Failed"]
    failures += [
        f"{p['name']} was lost with its node {p['node']} (not Ready)"
        for p in job.current
        if job.on_lost_node(p)
    ]
    failures += [
        f"{p['name']} was deleted"
        for p in job.current
        if p["deletionTimestamp"]
        and p["phase"] not in ("Succeeded", "Failed")
        and not job.on_lost_node(p)
    ]
    if job.status.get("launchedAttempt") == job.restarts:
        failures += [
            f"{pod_name(job.name, i)} disappeared"
            for i in range(job.replicas)
            if i not in job.by_index and i not in job.completed
        ]
    return failures


def _restart(job: _Job) -> Plan | None:
    """A worker failed: restart every worker (it cannot rejoin alone), or fail past the limit."""
    failures = _failures(job)
    if not failures:
        return None
    b, limit, restarts = job.b, job.spec.run_policy.backoff_limit, job.restarts
    message = "; ".join(failures)
    if restarts >= limit:
        return job.fail(
            Reason.BACKOFF_LIMIT_EXCEEDED,
            f"{message} (no restarts left: backoffLimit is {limit})",
        )
    b.new["phase"] = Phase.RESTARTING
    b.new["restarts"] = restarts + 1
    b.new["lastFailure"] = message
    lost = sorted({p["node"] for p in job.current if job.on_lost_node(p)})
    if lost or job.status.get("lostNodes"):
        b.new["lostNodes"] = lost
    b.condition(ConditionType.RUNNING, False, Reason.RESTARTING, message)
    for node in lost:
        b.event("Warning", Reason.NODE_LOST, f"node {node} is not Ready: its workers are lost")
    b.event("Warning", Reason.RESTARTING, f"restart {restarts + 1} of {limit}: {message}")
    b.plan.delete = _deletions(job.current, job.now, lambda _: True, job.lost)
    return job.done(pods=[])


def _launch(job: _Job) -> Plan:
    """Create the workers still missing; Running once every one of them runs."""
    b, by_index = job.b, job.by_index
    missing = [i for i in range(job.replicas) if i not in by_index and i not in job.completed]
    if missing and job.settling and not _settle_limit_passed(job):
        nodes = ", ".join(sorted(job.settling))
        b.new["phase"] = Phase.PENDING
        b.condition(
            ConditionType.RUNNING,
            False,
            Reason.LOST_NODES_SCHEDULABLE,
            f"waiting for the node controller to taint lost node(s) {nodes} NoSchedule, so "
            "that no worker of the new attempt is placed where it cannot start",
        )
        return job.done()
    if missing:
        b.plan.create = missing
    else:
        b.new["launchedAttempt"] = job.restarts
    waiting = [p for p in job.current if p["phase"] == "Pending"]
    if missing or waiting:
        b.new["phase"] = Phase.PENDING
        b.condition(
            ConditionType.RUNNING,
            False,
            Reason.WORKERS_PENDING,
            f"{len(missing) + len(waiting)} worker pod(s) not running yet",
        )
    else:
        if job.status.get("phase") != Phase.RUNNING:
            b.event("Normal", Reason.RUNNING, f"All {job.replicas} worker pod(s) running")
        b.new["phase"] = Phase.RUNNING
        b.condition(ConditionType.RUNNING, True, Reason.WORKERS_RUNNING, "")
    chief = by_index.get(0)
    b.plan.read_progress = chief is not None and chief["phase"] == "Running"
    return job.done()


def _settle_limit_passed(job: _Job) -> bool:
    """A cluster whose node controller never taints (or an operator that cannot read nodes
    in time) must not hold a restart back for good."""
    running = get_condition(job.status.get("conditions") or [], ConditionType.RUNNING)
    since = parse_time((running or {}).get("lastTransitionTime"))
    return since is None or job.now - since >= SETTLE_LIMIT


def _tensorboard(
    spec: TrainingJobSpec,
    name: str,
    status: dict[str, Any],
    generation: int | None,
    b: StatusBuilder,
) -> None:
    """Whatever the phase: create or delete the job's TensorBoard as its spec asks, or say
    once per spec change why it cannot have one."""
    b.plan.tensorboard = tensorboard.action(spec, status)
    changed = generation is None or generation != status.get("observedGeneration")
    if spec.tensorboard.enabled and not tensorboard.has_storage(spec) and changed:
        b.event(*tensorboard.no_storage_event(name))


def owned_pods(pods: list[dict[str, Any]], uid: str) -> list[dict[str, Any]]:
    """The worker pods this job created, by its UID: labels alone are not enough.

    A pod with the job's labels but another owner (left by an earlier job of the same name,
    or made by anyone who can create pods) must not decide this job's fate or result.
    """
    return [p for p in pods if p.get("owner") == uid]


def plan(
    spec: TrainingJobSpec,
    name: str,
    status: dict[str, Any],
    pods: list[dict[str, Any]],
    now: datetime,
    problem: Problem | None = None,
    generation: int | None = None,
    lost_nodes: frozenset[str] = frozenset(),
    settling_nodes: frozenset[str] = frozenset(),
) -> Plan:
    """What to do next for job `name`, given its status and its worker pods' summaries,
    which of their nodes are lost (not Ready), and which of the nodes the last attempt lost
    the scheduler may still place pods on.

    The steps run in order and the first that decides ends the tick: a finished job, the
    deadline, a problem, a restart under way, a permanent error, the chief's success, a
    failed worker; otherwise the missing workers are launched.
    """
    b = StatusBuilder(status, now)
    if generation is not None:
        b.new["observedGeneration"] = generation
    _tensorboard(spec, name, status, generation, b)
    restarts = int(status.get("restarts") or 0)
    job = _Job(
        spec=spec,
        name=name,
        status=status,
        pods=pods,
        now=now,
        b=b,
        restarts=restarts,
        current=[p for p in pods if p["attempt"] == restarts],
        stale=[p for p in pods if p["attempt"] != restarts],
        completed=list((status.get("workers") or {}).get("completedIndexes") or []),
        lost=lost_nodes,
        settling=settling_nodes,
    )
    decided = _finished(job)
    if decided is not None:
        return decided
    _initialize(job)
    for step in (
        _deadline,
        lambda j: _problem(j, problem),
        _restarting,
        _permanent_error,
        _succeeded,
        _restart,
    ):
        decided = step(job)
        if decided is not None:
            return decided
    return _launch(job)


MIN_REQUEUE = 1.0
"""The soonest a job is looked at again: a moment already past must not spin a worker."""


def requeue_after(
    spec: TrainingJobSpec,
    status: dict[str, Any],
    pods: list[dict[str, Any]],
    now: datetime,
    lost_nodes: frozenset[str] = frozenset(),
    progress_every: float = 10.0,
    follow_every: float = 2.0,
) -> float | None:
    """Seconds until time alone changes what `plan` does for a job in `status` (as patched),
    or None: until the job or one of its pods changes, nothing will.

    Time is the trigger for: the active deadline, the TTL, a pod stuck terminating (its
    force-deletion), a node not yet known to be lost under a worker that stopped being Ready,
    a restart waiting for the nodes its last attempt lost to be tainted,
    a running chief's progress (every `progress_every`), a job waiting for what no watch
    reports (a missing claim, a refused pod: every `progress_every`), a promotion under
    way (its model check, its rollout and their deadlines: every `follow_every`), and a
    TensorBoard whose creation or removal failed (every `progress_every`).
    """
    moments: list[float] = []

    def at(moment: datetime | None) -> None:
        if moment is not None:
            moments.append((moment - now).total_seconds())

    phase = status.get("phase")
    policy = spec.run_policy
    for pod in pods:
        since = parse_time(pod.get("deletionTimestamp"))
        if since is not None:
            at(since + FORCE_DELETE_AFTER)
    if phase in FINISHED_TRAINING:
        if phase == Phase.PROMOTING or (
            phase == Phase.SUCCEEDED and not promotion_decided(spec, status)
        ):
            moments.append(follow_every)
        elif policy.ttl_seconds_after_finished is not None and is_finished(spec, status):
            done = parse_time(status.get("completionTime"))
            if done is not None:
                at(done + timedelta(seconds=policy.ttl_seconds_after_finished))
    else:
        started = parse_time(status.get("startTime"))
        if policy.active_deadline_seconds is not None and started is not None:
            at(started + timedelta(seconds=policy.active_deadline_seconds))
        restarts = int(status.get("restarts") or 0)
        chief_running = any(
            p["index"] == 0 and p["attempt"] == restarts and p["phase"] == "Running" for p in pods
        )
        valid = get_condition(status.get("conditions") or [], ConditionType.VALID)
        if (phase == Phase.RUNNING and chief_running) or (
            valid is not None and valid.get("status") == "False"
        ):
            moments.append(progress_every)
        if node_suspects(pods) - lost_nodes:
            moments.append(follow_every)
        if status.get("lostNodes") and status.get("launchedAttempt") != restarts:
            moments.append(follow_every)  # a restart waiting for lost nodes to be tainted
    if tensorboard.action(spec, status) is not None:  # a create or delete that failed
        moments.append(progress_every)
    if not moments:
        return None
    return max(min(moments), MIN_REQUEUE)


def reject(status: dict[str, Any], reason: Reason, message: str, now: datetime) -> Plan:
    """A job whose spec does not parse (the schema let it through): Failed, Valid=False."""
    b = StatusBuilder(status, now)
    if status.get("phase") != Phase.FAILED:
        b.fail(ConditionType.VALID, reason, message)
    return b.finish()

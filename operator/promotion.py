"""Promotion as a pure planner: observe the Deployment and the job, decide, return the actions.

A job that succeeded starts a rollout of its model (or decides not to: no model, a Deployment
someone else owns, a model no better than the served one); a job that is Promoting follows the
rollout to Promoted, or rolls the Deployment back when it fails. The served model's metric is
read from the Deployment's annotations. `plan()` talks to nothing: the handler fetches the
Deployment, calls it, and carries out what it returns, so every outcome is testable without a
cluster and a tick repeated after a lost status update re-derives the same decision.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from kubetrain.operator import serving
from kubetrain.operator.serving import (
    ANN_JOB,
    ANN_METRIC,
    ANN_PREVIOUS_VERSION,
    ANN_VALUE,
    served_version,
)
from kubetrain.operator.status import now_iso, parse_time, set_condition
from kubetrain.trainer.api.metrics import better
from kubetrain.trainer.api.spec import TrainingJobSpec
from kubetrain.trainer.api.status import ConditionType, Phase, Reason


@dataclass
class Gate:
    promote: bool
    reason: Reason
    message: str


def gate(
    metric: str, value: float | None, annotations: dict[str, str], min_improvement: float
) -> Gate:
    """Promote only a model that beats the served one by more than `min_improvement`."""
    served_metric = annotations.get(ANN_METRIC)
    served_raw = annotations.get(ANN_VALUE)
    if served_raw is None:
        return Gate(True, Reason.NOTHING_SERVED, "no model with a recorded metric is being served")
    try:
        served = float(served_raw)
    except ValueError:
        return Gate(
            False,
            Reason.NOT_COMPARABLE,
            f"the served model's {ANN_VALUE} annotation {served_raw!r} is not a number",
        )
    if served_metric != metric:
        return Gate(
            False,
            Reason.NOT_COMPARABLE,
            f"the served model was chosen by {served_metric}, this one by {metric}",
        )
    if value is None:
        return Gate(False, Reason.NO_METRIC, f"the result has no {metric}")
    if better(metric, value, served, min_improvement):
        return Gate(
            True,
            Reason.BETTER,
            f"{metric} {value:.4f} beats served {served:.4f}"
            + (f" by more than {min_improvement}" if min_improvement else ""),
        )
    return Gate(
        False,
        Reason.NOT_BETTER,
        f"{metric} {value:.4f} does not beat served {served:.4f}"
        + (f" by more than {min_improvement}" if min_improvement else ""),
    )


GATE_REFUSALS = frozenset({Reason.NOT_COMPARABLE, Reason.NO_METRIC, Reason.NOT_BETTER})
"""The reasons `gate` keeps the served model for: a verdict on the model, not a fault."""


ROLLOUT_SLACK = timedelta(seconds=30)


def rollout_state(
    dep: dict[str, Any], started: datetime | None, now: datetime, deadline_seconds: int
) -> tuple[str, str]:
    """("Complete" | "Progressing" | "Failed", message) as the deployment controller reports.

    The controller's own ProgressDeadlineExceeded is the primary signal; the operator's clock
    is a fallback in case the controller never reports (e.g. it is down). Like the
    controller's, the deadline is for making progress: it counts from the last pod that
    became available, so a slow node with many replicas is not taken for a broken model.
    """
    desired = dep["spec"].get("replicas", 1)
    st = dep.get("status") or {}
    # Until the controller has seen this generation, its conditions describe an older rollout.
    observed = st.get("observedGeneration", 0) >= dep["metadata"].get("generation", 0)
    since = started
    for cond in st.get("conditions") or [] if observed else []:
        if cond.get("type") != "Progressing":
            continue
        if cond.get("status") == "False" and cond.get("reason") == "ProgressDeadlineExceeded":
            return "Failed", cond.get("message") or "progress deadline exceeded"
        progressed = parse_time(cond.get("lastUpdateTime"))
        if since and progressed and progressed > since:
            since = progressed
    if (
        observed
        and st.get("updatedReplicas", 0) == desired
        and st.get("availableReplicas", 0) == desired
        and st.get("replicas", 0) == desired
    ):
        return "Complete", f"{desired} replica(s) updated and available"
    if since and now > since + timedelta(seconds=deadline_seconds) + ROLLOUT_SLACK:
        return "Failed", f"rollout made no progress for {deadline_seconds}s"
    return "Progressing", (
        f"{st.get('updatedReplicas', 0)} of {desired} updated, "
        f"{st.get('availableReplicas', 0)} available"
    )


@dataclass
class PromotionPlan:
    status: dict[str, Any] = field(default_factory=dict)
    """Status fields to patch."""
    events: list[tuple[str, str, str]] = field(default_factory=list)
    """(type, reason, message) Events to post on the job."""
    create: list[dict[str, Any]] = field(default_factory=list)
    """Objects to create, in order: the serving NetworkPolicy (before any pod can be
    reached), the Service, then the Deployment."""
    patch: dict[str, Any] | None = None
    """A strategic merge patch for the serving Deployment."""
    remove: bool = False
    """Delete the serving Deployment and its Service."""
    check: int | None = None
    """Start the model-check pod for this version (`serving.model_check_pod`)."""
    remove_check: bool = False
    """Delete the model-check pod: its answer is in."""


def _decided(
    status: dict[str, Any],
    promoted: bool,
    reason: Reason,
    message: str,
    now: datetime,
    event: tuple[str, str],
) -> PromotionPlan:
    """The Promoted condition set, which ends promotion one way or the other."""
    conditions = set_condition(
        status.get("conditions") or [],
        ConditionType.PROMOTED,
        promoted,
        reason,
        message,
        now_iso(now),
    )
    return PromotionPlan(
        status={"phase": Phase.PROMOTED if promoted else Phase.SUCCEEDED, "conditions": conditions},
        events=[(*event, message)],
    )


TRANSIENT_API_ERRORS = frozenset({409, 429, 500, 502, 503, 504})
"""A changed object, throttling or a server fault: the next tick reads and decides again."""


def api_refused(
    spec: TrainingJobSpec, status: dict[str, Any], code: int, detail: str, now: datetime
) -> PromotionPlan:
    """What promotion does when the API server refuses one of its requests.

    Either way the tick's other status fields (Succeeded, the result) are still written: the
    worker pods may already be gone, and losing them would train the job again.
    """
    name = spec.serving_deployment
    if code in TRANSIENT_API_ERRORS:
        message = f"promoting to {name}: the API server answered {code} ({detail}); retrying"
        return PromotionPlan(events=[("Warning", Reason.PROMOTION_RETRYING, message)])
    message = f"the API server refused promoting to {name} ({code}): {detail}"
    reason = Reason.PROMOTION_REFUSED
    step = _decided(status, False, reason, message, now, ("Warning", reason))
    if status.get("phase") == Phase.PROMOTING:
        step.status["phase"] = Phase.SUCCEEDED
    return step


def check_model(
    spec: TrainingJobSpec, status: dict[str, Any], check: dict[str, Any] | None, now: datetime
) -> PromotionPlan | None:
    """None once the model-check pod found the version complete; else what to do meanwhile.

    The chief's result only names a version: before any serving pod is touched, a pod that
    mounts the storage as the server does must find that version complete there.
    """
    version = int(status["model"]["version"])
    if check is None:
        message = f"checking that {spec.model_name} version {version} is complete in storage"
        return PromotionPlan(check=version, events=[("Normal", Reason.CHECKING_MODEL, message)])
    if check["phase"] == "Succeeded":
        return None
    if check["phase"] == "Failed":
        detail = check.get("message") or f"exit code {check.get('exitCode')}"
        message = f"{spec.model_name} version {version} cannot be served: {detail}"
        reason = Reason.MODEL_NOT_FOUND
    else:
        created = parse_time(check.get("created"))
        deadline = spec.promotion.progress_deadline_seconds
        if created is None or now <= created + timedelta(seconds=deadline):
            return PromotionPlan()
        message = (
            f"the check of {spec.model_name} version {version} did not finish in {deadline}s "
            f"(pod {check.get('name')}: {check['phase']})"
        )
        reason = Reason.MODEL_CHECK_TIMED_OUT
    step = _decided(status, False, reason, message, now, ("Warning", reason))
    step.remove_check = True
    return step


def plan(
    spec: TrainingJobSpec,
    namespace: str,
    job_uid: str,
    status: dict[str, Any],
    deployment: dict[str, Any] | None,
    now: datetime,
    command: list[str] | None = None,
    access: serving.Access | None = None,
    check: dict[str, Any] | None = None,
) -> PromotionPlan:
    """What promotion does next for a job in `status`, given its serving Deployment (or None).

    A job that has just succeeded has its model checked (`check`: the model-check pod, or
    None before there is one), then starts a rollout, or decides not to and says why; a job
    that is Promoting follows it (`follow`). `command` is the model server's entrypoint for
    a Deployment created now, and `access` who may reach it (None: no NetworkPolicy).
    """
    if status.get("phase") != Phase.SUCCEEDED:
        return follow(spec, status, deployment, now)
    name = spec.serving_deployment
    model = status.get("model")
    if not model:
        message = "the chief's result names no exported model"
        return _decided(status, False, Reason.NO_MODEL, message, now, ("Warning", Reason.NO_MODEL))
    if deployment is not None and not serving.is_managed(deployment):
        message = f"Deployment {name} exists and is not managed by kubetrain; not touching it"
        reason = Reason.DEPLOYMENT_NOT_MANAGED
        return _decided(status, False, reason, message, now, ("Warning", reason))
    if deployment is not None and (mismatch := serving.other_model(spec, deployment)):
        reason = Reason.SERVES_ANOTHER_MODEL
        return _decided(status, False, reason, mismatch, now, ("Warning", reason))
    annotations = (deployment or {}).get("metadata", {}).get("annotations") or {}
    best = status.get("bestCheckpoint") or {}
    metric = best.get("metric") or spec.training.metric
    value = best.get("value")
    version = int(model["version"])
    previous = served_version(deployment) if deployment else None
    step = PromotionPlan()
    if deployment is not None and annotations.get(ANN_JOB) == job_uid and previous == version:
        # Patched on an earlier tick whose status update was lost: only record it.
        previous_raw = annotations.get(ANN_PREVIOUS_VERSION)
        previous = int(previous_raw) if previous_raw else None
    else:
        verdict = gate(metric, value, annotations, spec.promotion.min_improvement)
        if not verdict.promote:
            return _decided(
                status, False, verdict.reason, verdict.message, now, ("Normal", Reason.NOT_PROMOTED)
            )
        if (waiting := check_model(spec, status, check, now)) is not None:
            return waiting
        step.remove_check = True
        new = serving.served_annotations(
            version, metric, value, job_uid, annotations if deployment else None
        )
        if deployment is None:
            step.create = [
                *([serving.network_policy(spec, namespace, access)] if access else []),
                serving.service(spec, namespace),
                serving.disruption_budget(spec, namespace),
                serving.deployment(spec, namespace, version, new, command),
                *([hpa] if (hpa := serving.autoscaler(spec, namespace)) else []),
            ]
        else:
            step.patch = serving.version_patch(spec, version, new)
            # Applied only to the Deployment the gate read: a promotion that raced this
            # one gets a 409 and the next tick gates against what it served.
            step.patch["metadata"]["resourceVersion"] = deployment["metadata"]["resourceVersion"]
    message = f"rolling {name} out to {model['name']} version {version}" + (
        f" (serving version {previous})" if previous is not None else ""
    )
    step.status = {
        "phase": Phase.PROMOTING,
        "promotionStartTime": now_iso(now),
        "serving": {
            "deployment": name,
            "version": version,
            "previousVersion": previous,
            "metric": metric,
            "value": value,
        },
    }
    step.events = [("Normal", Reason.PROMOTING, message)]
    return step


def follow(
    spec: TrainingJobSpec,
    status: dict[str, Any],
    deployment: dict[str, Any] | None,
    now: datetime,
) -> PromotionPlan:
    """Promoting: wait for the rollout, then record it, or roll back one that failed."""
    name = spec.serving_deployment
    served = dict(status.get("serving") or {})
    version, previous = served.get("version"), served.get("previousVersion")
    if deployment is None:
        message = f"Deployment {name} was deleted during the rollout"
        reason = Reason.DEPLOYMENT_DELETED
        return _decided(status, False, reason, message, now, ("Warning", reason))
    if served_version(deployment) != version:
        message = f"{name} no longer pins version {version}; another rollout replaced it"
        reason = Reason.SUPERSEDED
        return _decided(status, False, reason, message, now, ("Warning", reason))
    state, detail = rollout_state(
        deployment,
        parse_time(status.get("promotionStartTime")),
        now,
        spec.promotion.progress_deadline_seconds,
    )
    if state == "Progressing":
        return PromotionPlan()
    if state == "Complete":
        message = f"{name} serves version {version}" + (
            f" (was {previous})" if previous is not None else ""
        )
        step = _decided(status, True, Reason.ROLLED_OUT, message, now, ("Normal", Reason.PROMOTED))
        step.status.update(
            {"serving": {**served, "promotedAt": now_iso(now)}, "served": f"{name}:{version}"}
        )
        return step
    if previous is not None:
        annotations = deployment["metadata"].get("annotations") or {}
        message = f"{detail}; {name} rolled back to version {previous}"
        patch = serving.version_patch(spec, previous, serving.restored_annotations(annotations))
        remove = False
    else:  # it never served anything else: remove it rather than leave it broken
        message = f"{detail}; {name} removed (it had no earlier version)"
        patch, remove = None, True
    reason = Reason.ROLLOUT_FAILED
    step = _decided(status, False, reason, message, now, ("Warning", reason))
    step.patch, step.remove = patch, remove
    return step

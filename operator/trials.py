"""A job with `spec.trials` on Kubernetes: every trial a TrainingJob of its own, owned by it.

Katib runs trials and promotes nothing; a TFJob has no notion of best. Here the job creates
its trials' jobs `parallelism` at a time (the candidates `kubetrain run` would train, from the
trainer's `trials.candidates`), stops those the median rule gives up on by deleting them, and
once every trial has ended takes the best one's exported model as its own (or, with
`spec.trials.refit`, the model of a last TrainingJob that trains the best one's parameters on
the training and validation splits together): from there it is Succeeded and promotion runs
as for any job. What became of each trial is kept in the job's status, so a trial job that is
gone (stopped, or deleted by someone) is never needed again.

`plan` is pure: the handler lists the trial jobs, calls it and carries out its actions.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from kubetrain.operator.manifests import owner_reference
from kubetrain.operator.reconcile import Plan, StatusBuilder
from kubetrain.operator.status import metric_values, parse_time
from kubetrain.trainer.api.metrics import better
from kubetrain.trainer.api.spec import REFIT_SUFFIX, TRIAL_SUFFIX, TrainingJob
from kubetrain.trainer.api.status import ConditionType, Phase, Reason
from kubetrain.trainer.trials import Candidate, TrialState, describe, median_stop, rank, refit

LABEL_TRIAL_OF = "kubetrain.io/trial-of"
"""On a trial's TrainingJob: the job it is a trial of."""
LABEL_TRIAL = "kubetrain.io/trial"
"""On a trial's TrainingJob: its index; on the refit's, `REFIT`."""
REFIT = "refit"

ENDED = {TrialState.SUCCEEDED, TrialState.EARLY_STOPPED, TrialState.FAILED}

_Fail = Callable[[str], None]


def trial_job_name(job: str, index: int) -> str:
    return f"{job}{TRIAL_SUFFIX}{index}"


def refit_job_name(job: str) -> str:
    return f"{job}{REFIT_SUFFIX}"


def trial_job(body: dict[str, Any], candidate: Candidate) -> dict[str, Any]:
    """The TrainingJob of one trial: the candidate's spec, owned by the job."""
    name = trial_job_name(body["metadata"]["name"], candidate.index)
    return _child_job(body, name, str(candidate.index), candidate.job)


def refit_job(body: dict[str, Any], job: TrainingJob, winner: Candidate) -> dict[str, Any]:
    """The TrainingJob of `spec.trials.refit`: the winner's parameters on the training and
    validation splits together, owned by the job."""
    name = refit_job_name(body["metadata"]["name"])
    return _child_job(body, name, REFIT, refit(job, winner.parameters))


def _child_job(body: dict[str, Any], name: str, label: str, job: TrainingJob) -> dict[str, Any]:
    """A TrainingJob the job trains through, owned by it (deleting the job deletes it and
    its pods). It promotes nothing and keeps no deadline, TTL or TensorBoard of its own:
    the job decides those for all it runs."""
    meta = body["metadata"]
    spec = job.spec
    spec = spec.model_copy(
        update={
            "promotion": spec.promotion.model_copy(update={"enabled": False}),
            "run_policy": spec.run_policy.model_copy(
                update={"active_deadline_seconds": None, "ttl_seconds_after_finished": None}
            ),
            "tensorboard": spec.tensorboard.model_copy(update={"enabled": False}),
        }
    )
    return {
        "apiVersion": body["apiVersion"],
        "kind": body["kind"],
        "metadata": {
            "name": name,
            "namespace": meta["namespace"],
            "labels": {LABEL_TRIAL_OF: meta["name"], LABEL_TRIAL: label},
            "ownerReferences": [owner_reference(body)],
        },
        "spec": spec.model_dump(mode="json", by_alias=True, exclude_none=True),
    }


def summarize(body: dict[str, Any]) -> dict[str, Any]:
    """What `plan` reads of a trial's (or the refit's) TrainingJob."""
    meta = body["metadata"]
    owners = meta.get("ownerReferences") or []
    label = meta["labels"][LABEL_TRIAL]
    return {
        "index": label if label == REFIT else int(label),
        "name": meta["name"],
        "owner": next((o["uid"] for o in owners if o.get("controller")), None),
        "deleting": bool(meta.get("deletionTimestamp")),
        "status": dict(body.get("status") or {}),
    }


def _row(job: str, candidate: Candidate) -> dict[str, Any]:
    return {
        "index": candidate.index,
        "job": trial_job_name(job, candidate.index),
        "parameters": describe(candidate.parameters),
        "state": TrialState.PENDING,
        "epochs": 0,
        "history": [],
    }


def _child_status(
    row: dict[str, Any], child: dict[str, Any] | None, fail: _Fail
) -> dict[str, Any] | None:
    """The status of a row's TrainingJob (a trial's or the refit's), or None when there is
    nothing to read: the row has ended, or its job is gone (a row that was running fails)."""
    if row["state"] in ENDED:
        return None
    if child is None or child["deleting"]:
        if row["state"] == TrialState.RUNNING:
            fail(f"its TrainingJob {row['job']} was deleted before it finished")
        return None
    row["state"] = TrialState.RUNNING  # also a job created on a tick whose status was lost
    return child["status"]


def _settle(row: dict[str, Any], status: dict[str, Any], fail: _Fail) -> bool:
    """Record how a child TrainingJob ended, if it has; True when it succeeded (with a model:
    succeeding without one is failing)."""
    phase = status.get("phase")
    if phase == Phase.SUCCEEDED and status.get("model"):
        row["state"] = TrialState.SUCCEEDED
        row["model"] = status["model"]
        return True
    if phase in (Phase.SUCCEEDED, Phase.FAILED):
        fail(status.get("lastFailure") or "its chief exported no model")
    return False


def _failer(row: dict[str, Any], b: StatusBuilder, reason: Reason, event: str) -> _Fail:
    """Mark the row Failed with a message, and say so in a Warning (`event` formats it)."""

    def fail(message: str) -> None:
        row["state"] = TrialState.FAILED
        row["message"] = message
        b.event("Warning", reason, event.format(message=message))

    return fail


def _observe(row: dict[str, Any], trial: dict[str, Any] | None, b: StatusBuilder) -> None:
    """Bring a trial's row up to date with its job; record how it ended, once."""
    fail = _failer(row, b, Reason.TRIAL_FAILED, f"trial {row['index']}: {{message}}")
    status = _child_status(row, trial, fail)
    if status is None:
        return
    history = [float(v) for v in status.get("metricHistory") or []]
    if history:
        row["history"] = history
    row["epochs"] = max(len(row["history"]), int(status.get("epoch") or 0))
    best = (status.get("bestCheckpoint") or {}).get("value")
    if best is not None:
        row["bestMetric"] = best
    if _settle(row, status, fail):
        b.event(
            "Normal",
            Reason.TRIAL_SUCCEEDED,
            f"trial {row['index']} ({row['parameters']}) finished: best "
            f"{(status.get('bestCheckpoint') or {}).get('metric')} {best}",
        )


def _observe_refit(row: dict[str, Any], refit: dict[str, Any] | None, b: StatusBuilder) -> None:
    """Bring the refit's row up to date with its job; record how it ended, once."""
    fallback = f"the job exports trial {row['trial']}'s own model"
    fail = _failer(row, b, Reason.REFIT_FAILED, f"refit: {{message}}; {fallback}")
    status = _child_status(row, refit, fail)
    if status is None:
        return
    row["epochs"] = int(status.get("epoch") or 0)
    if _settle(row, status, fail):
        row["testMetrics"] = status.get("testMetrics") or {}
        b.event(
            "Normal",
            Reason.REFIT_SUCCEEDED,
            f"refit of trial {row['trial']} finished: test accuracy "
            f"{row['testMetrics'].get('test_accuracy')}",
        )


def _stop_weak(job: TrainingJob, rows: dict[int, dict[str, Any]], b: StatusBuilder) -> list[str]:
    """Running trials the median rule gives up on: marked stopped; their jobs to delete."""
    rule = job.spec.trials.early_stopping.median_stop if job.spec.trials else None
    metric, epochs = job.spec.training.metric, job.spec.training.epochs
    stopped = []
    if rule is None:
        return stopped
    for row in rows.values():
        history = row["history"]
        if row["state"] != TrialState.RUNNING or not history or len(history) >= epochs:
            continue  # a trial past its last epoch has nothing left to save
        others = [r["history"] for r in rows.values() if r["index"] != row["index"]]
        decision = median_stop(metric, rule, history, others)
        if decision is not None:
            row["state"] = TrialState.EARLY_STOPPED
            row["message"] = decision.message(metric)
            stopped.append(row["job"])
            b.event("Normal", Reason.TRIAL_STOPPED, f"trial {row['index']}: {row['message']}")
    return stopped


def _best(metric: str, rows: list[dict[str, Any]], states: set[TrialState]) -> dict | None:
    best = None
    for row in rows:
        value = row.get("bestMetric")
        if row["state"] not in states or value is None:
            continue
        if best is None or better(metric, value, best["bestMetric"]):
            best = row
    return best


def plan(
    job: TrainingJob,
    candidates: list[Candidate],
    status: dict[str, Any],
    trials: list[dict[str, Any]],
    now: datetime,
    generation: int | None = None,
) -> Plan:
    """What a job with `spec.trials` does next, given its trials' jobs (`summarize`d, owned
    by it) while it trains; a job that has finished training is `reconcile.plan`'s."""
    assert job.spec.trials is not None
    spec, name = job.spec, job.metadata.name
    count, metric = len(candidates), spec.training.metric
    b = StatusBuilder(status, now)
    if generation is not None:
        b.new["observedGeneration"] = generation
    if status.get("phase") is None:
        b.new["phase"] = Phase.PENDING
        b.new["startTime"] = b.stamp
        b.condition(ConditionType.VALID, True, Reason.VALID, "")
        b.event(
            "Normal",
            Reason.STARTED,
            f"Training {count} trial(s), {spec.trials.parallelism} at a time",
        )
    rows = {r["index"]: dict(r) for r in status.get("trials") or []}
    for candidate in candidates:
        rows.setdefault(candidate.index, _row(name, candidate))
    seen = {t["index"]: t for t in trials}
    for index, row in rows.items():
        _observe(row, seen.get(index), b)
    refit_row = dict(status["refit"]) if status.get("refit") else None
    if refit_row is not None:
        _observe_refit(refit_row, seen.get(REFIT), b)
        b.new["refit"] = refit_row

    deadline = spec.run_policy.active_deadline_seconds
    started = parse_time(b.new.get("startTime"))
    if deadline is not None and started and now >= started + timedelta(seconds=deadline):
        message = f"the job ran longer than activeDeadlineSeconds ({deadline}s)"
        for row in [*rows.values(), *([refit_row] if refit_row else [])]:
            if row["state"] == TrialState.RUNNING:
                row["state"] = TrialState.FAILED
                row["message"] = message
                b.plan.delete_trials.append(row["job"])
        b.fail(ConditionType.RUNNING, Reason.DEADLINE_EXCEEDED, message)
        return _finish(b, rows, metric)

    b.plan.delete_trials = _stop_weak(job, rows, b)
    running = sum(r["state"] == TrialState.RUNNING for r in rows.values())
    waiting = sorted(i for i, r in rows.items() if r["state"] == TrialState.PENDING)
    for index in waiting[: max(spec.trials.parallelism - running, 0)]:
        rows[index]["state"] = TrialState.RUNNING
        b.plan.create_trials.append(index)
        b.event(
            "Normal",
            Reason.TRIAL_STARTED,
            f"trial {index} ({rows[index]['parameters']}) started as {rows[index]['job']}",
        )
    ended = [r for r in rows.values() if r["state"] in ENDED]
    if len(ended) < count:
        running = sum(r["state"] == TrialState.RUNNING for r in rows.values())
        b.new["phase"] = Phase.RUNNING
        b.condition(
            ConditionType.RUNNING,
            True,
            Reason.TRIALS_RUNNING,
            f"{running} trial(s) running, {len(ended)} of {count} ended",
        )
        return _finish(b, rows, metric)

    winner = _best(metric, list(rows.values()), {TrialState.SUCCEEDED})
    if winner is None:
        failures = "; ".join(
            f"trial {r['index']}: {r.get('message') or r['state']}" for r in rows.values()
        )
        b.fail(
            ConditionType.RUNNING,
            Reason.NO_TRIAL_SUCCEEDED,
            f"none of the {count} trial(s) succeeded ({failures})",
        )
        return _finish(b, rows, metric)
    message = (
        f"trial {winner['index']} ({winner['parameters']}) has the best {metric}, "
        f"{winner['bestMetric']}"
    )
    if spec.trials.refit and refit_row is None:
        refit_row = {
            "trial": winner["index"],
            "job": refit_job_name(name),
            "state": TrialState.RUNNING,
            "epochs": 0,
        }
        b.new["refit"] = refit_row
        b.plan.create_refit = winner["index"]
        b.event(
            "Normal",
            Reason.REFITTING,
            f"{message}: training its parameters on the training and validation splits "
            f"together as {refit_row['job']}",
        )
    if refit_row is not None and refit_row["state"] not in ENDED:
        b.new["phase"] = Phase.RUNNING
        b.condition(
            ConditionType.RUNNING,
            True,
            Reason.REFITTING,
            f"all {count} trial(s) ended; {message}; its refit {refit_row['job']} is training",
        )
        return _finish(b, rows, metric)
    refitted = refit_row is not None and refit_row["state"] == TrialState.SUCCEEDED
    model = refit_row["model"] if refitted else winner["model"]
    b.new["phase"] = Phase.SUCCEEDED
    b.new["completionTime"] = b.stamp
    b.new["model"] = model
    source = "its refit on training + validation" if refitted else "its model"
    message += f"; {source} is {model['name']} version {model['version']}"
    b.condition(ConditionType.RUNNING, False, Reason.COMPLETED, "")
    b.condition(ConditionType.SUCCEEDED, True, Reason.BEST_TRIAL, message)
    b.event("Normal", Reason.SUCCEEDED, f"All {count} trial(s) ended: {message}")
    b.plan.promote = spec.promotion.enabled
    winning = (seen.get(winner["index"]) or {}).get("status") or {}
    for key in ("bestCheckpoint", "bestMetrics", "testMetrics"):
        if winning.get(key):
            b.new[key] = winning[key]
    if refitted and refit_row.get("testMetrics"):
        # The search's validation estimate stands; the test split is the refit's to measure.
        b.new["testMetrics"] = refit_row["testMetrics"]
    return _finish(b, rows, metric)


def refuse(plan: Plan, index: int, error: str) -> None:
    """The API server refused trial `index`'s job for good (`reconcile.creation_problem`:
    an invalid object, a webhook's verdict): the trial fails now instead of being retried on
    every tick; the job goes on with the others, and fails if none succeeds."""
    board = plan.status["trials"]
    row = next(r for r in board if r["index"] == index)
    row["state"] = TrialState.FAILED
    row["message"] = f"the API server refused its TrainingJob {row['job']}: {error}"
    plan.status["trialsProgress"] = progress(board)
    plan.events.append(("Warning", Reason.TRIAL_FAILED, f"trial {index}: {row['message']}"))


def refuse_refit(plan: Plan, error: str) -> None:
    """The API server refused the refit's job for good: the best trial's model is the job's."""
    row = plan.status["refit"]
    row["state"] = TrialState.FAILED
    row["message"] = f"the API server refused its TrainingJob {row['job']}: {error}"
    plan.events.append(
        (
            "Warning",
            Reason.REFIT_FAILED,
            f"refit: {row['message']}; the next reconcile exports trial {row['trial']}'s model",
        )
    )


def progress(board: list[dict[str, Any]]) -> str:
    """`status.trialsProgress`: trials ended of all the candidates, as `kubectl get` shows it."""
    return f"{sum(r['state'] in ENDED for r in board)}/{len(board)}"


def _finish(b: StatusBuilder, rows: dict[int, dict[str, Any]], metric: str) -> Plan:
    """The leaderboard (best first), the count of ended trials and the best so far."""
    board = sorted(rows.values(), key=lambda r: rank(metric, r.get("bestMetric"), r["index"]))
    b.new["trials"] = board
    b.new["trialsProgress"] = progress(board)
    best = _best(metric, board, {TrialState.SUCCEEDED, TrialState.RUNNING})
    best = best or _best(metric, board, set(TrialState))
    if best is not None:
        b.new["bestTrial"] = best["index"]
        if not b.new.get("bestMetrics") or b.new.get("phase") == Phase.RUNNING:
            b.new["bestMetrics"] = metric_values({metric: best["bestMetric"]})
    return b.finish()

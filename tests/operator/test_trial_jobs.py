"""A job with spec.trials on Kubernetes: its trials' jobs created `parallelism` at a time,
weak ones stopped, the best one's model taken as the job's (`operator.trials.plan`)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from kubetrain.operator import trials
from kubetrain.operator.status import now_iso
from kubetrain.trainer.api.status import Phase, Reason
from kubetrain.trainer.trials import candidates
from trainingjobs import body, job

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
RATES = [0.1, 0.01, 0.001]


def trials_body(**trial_overrides: Any) -> dict[str, Any]:
    spec = {
        "count": 3,
        "parallelism": 2,
        "algorithm": "grid",
        "parameters": {"training.learningRate": {"values": RATES}},
        **trial_overrides,
    }
    return body(trials=spec)


def tick(b: dict[str, Any], status: dict[str, Any], seen: list[dict[str, Any]], now=NOW):
    j = job(b)
    return trials.plan(j, candidates(j), status, seen, now)


def after(status: dict[str, Any], plan) -> dict[str, Any]:
    return {**status, **plan.status}


def trial(
    index: int | str,
    phase: str | None = "Running",
    history: list[float] | None = None,
    model_version: int | None = None,
    failure: str | None = None,
    owner: str = "uid-1234",
) -> dict[str, Any]:
    """A trial's TrainingJob as the API server holds it, summarized."""
    status: dict[str, Any] = {"phase": phase}
    if history:
        status["metricHistory"] = history
        status["epoch"] = len(history)
        best = max(history)
        status["bestCheckpoint"] = {
            "epoch": history.index(best) + 1,
            "metric": "val_accuracy",
            "value": best,
        }
        status["bestMetrics"] = {"val_accuracy": best, "val_loss": 1 - best}
    if model_version is not None:
        status["model"] = {"name": "mnist", "version": model_version}
        status["testMetrics"] = {"accuracy": max(history or [0])}
    if failure:
        status["lastFailure"] = failure
    return trials.summarize(
        {
            "metadata": {
                "name": f"mnist-t{index}" if index != trials.REFIT else "mnist-refit",
                "labels": {trials.LABEL_TRIAL_OF: "mnist", trials.LABEL_TRIAL: str(index)},
                "ownerReferences": [{"uid": owner, "controller": True}],
            },
            "status": status,
        }
    )


def rows(status: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {r["index"]: r for r in status["trials"]}


def test_a_new_job_starts_parallelism_trials_and_lists_every_trial_pending_or_running():
    plan = tick(trials_body(), {}, [])
    assert plan.create_trials == [0, 1]
    assert plan.status["phase"] == Phase.RUNNING
    assert plan.status["trialsProgress"] == "0/3"
    states = {i: r["state"] for i, r in rows(plan.status).items()}
    assert states == {0: "Running", 1: "Running", 2: "Pending"}
    assert rows(plan.status)[2]["parameters"] == "training.learningRate=0.001"
    assert rows(plan.status)[0]["job"] == "mnist-t0"
    reasons = [reason for _, reason, _ in plan.events]
    assert reasons == [Reason.STARTED, Reason.TRIAL_STARTED, Reason.TRIAL_STARTED]


def test_a_trial_job_is_the_candidate_owned_by_the_job_promoting_nothing_itself():
    b = trials_body()
    b["spec"]["runPolicy"] = {"ttlSecondsAfterFinished": 60, "activeDeadlineSeconds": 600}
    j = job(b)
    made = trials.trial_job(b, candidates(j)[2])
    assert made["metadata"]["name"] == "mnist-t2"
    assert made["metadata"]["labels"] == {trials.LABEL_TRIAL_OF: "mnist", trials.LABEL_TRIAL: "2"}
    assert made["metadata"]["ownerReferences"][0]["uid"] == "uid-1234"
    spec = made["spec"]
    assert "trials" not in spec
    assert spec["training"]["learningRate"] == 0.001
    assert spec["promotion"]["enabled"] is False
    assert "ttlSecondsAfterFinished" not in spec["runPolicy"]
    assert "activeDeadlineSeconds" not in spec["runPolicy"]
    assert spec["storage"]["claimName"] == "models"


def test_a_finished_trial_makes_room_for_the_next_and_keeps_its_model():
    b = trials_body()
    first = tick(b, {}, [])
    status = after({}, first)
    plan = tick(
        b,
        status,
        [trial(0, "Succeeded", [0.9, 0.95], model_version=4), trial(1, "Running", [0.8])],
    )
    assert plan.create_trials == [2]
    board = rows(after(status, plan))
    assert board[0]["state"] == "Succeeded"
    assert board[0]["model"] == {"name": "mnist", "version": 4}
    assert board[0]["bestMetric"] == 0.95
    assert board[1]["history"] == [0.8]
    assert plan.status["trialsProgress"] == "1/3"
    assert plan.status["bestTrial"] == 0
    assert plan.status["bestMetrics"] == {"val_accuracy": 0.95}
    assert [r["index"] for r in plan.status["trials"]][:2] == [0, 1]  # best first


def test_a_job_created_on_a_tick_whose_status_was_lost_is_adopted_not_created_again():
    b = trials_body()
    plan = tick(b, {"phase": Phase.PENDING, "startTime": now_iso(NOW)}, [trial(0), trial(1)])
    assert plan.create_trials == []
    assert {i: r["state"] for i, r in rows(plan.status).items()}[0] == "Running"


def test_the_median_rule_stops_a_trial_behind_the_others_and_deletes_its_job():
    b = trials_body(count=3, parallelism=3, earlyStopping={"medianStop": {"minTrials": 2}})
    b["spec"]["training"]["epochs"] = 5
    status = after({}, tick(b, {}, []))
    plan = tick(
        b,
        status,
        [trial(0, history=[0.9, 0.95]), trial(1, history=[0.92, 0.96]), trial(2, history=[0.5])],
    )
    assert plan.delete_trials == ["mnist-t2"]
    stopped = rows(plan.status)[2]
    assert stopped["state"] == "EarlyStopped"
    assert "worse than the median 0.9100 of 2 other trial(s)" in stopped["message"]
    assert any(reason == Reason.TRIAL_STOPPED for _, reason, _ in plan.events)
    # Once deleted, its job is gone: the trial stays stopped, not failed.
    status = after(status, plan)
    later = tick(b, status, [trial(0, history=[0.9, 0.95]), trial(1)])
    assert rows(after(status, later))[2]["state"] == "EarlyStopped"
    assert later.delete_trials == []


def test_a_trial_past_its_last_epoch_is_never_stopped():
    b = trials_body(count=3, parallelism=3, earlyStopping={"medianStop": {"minTrials": 2}})
    b["spec"]["training"]["epochs"] = 2
    status = after({}, tick(b, {}, []))
    plan = tick(
        b,
        status,
        [
            trial(0, history=[0.9, 0.95]),
            trial(1, history=[0.92, 0.96]),
            trial(2, history=[0.5, 0.6]),
        ],
    )
    assert plan.delete_trials == []


def test_when_every_trial_ended_the_best_ones_model_is_the_jobs_and_promotion_follows():
    b = trials_body()
    status = after({}, tick(b, {}, []))
    status["trials"] = [
        {**r, "state": "Running"} if r["index"] == 2 else r for r in status["trials"]
    ]
    seen = [
        trial(0, "Succeeded", [0.9, 0.95], model_version=4),
        trial(1, "Succeeded", [0.91, 0.97], model_version=5),
        trial(2, "Failed", [0.3], failure="mnist-t2-worker-0 exited with code 1"),
    ]
    plan = tick(b, status, seen)
    assert plan.status["phase"] == Phase.SUCCEEDED
    assert plan.status["model"] == {"name": "mnist", "version": 5}
    assert plan.status["bestCheckpoint"]["value"] == 0.97
    assert plan.status["testMetrics"] == {"accuracy": 0.97}
    assert plan.status["bestTrial"] == 1
    assert plan.status["trialsProgress"] == "3/3"
    assert plan.promote
    assert [r["index"] for r in plan.status["trials"]] == [1, 0, 2]
    assert rows(plan.status)[2]["message"] == "mnist-t2-worker-0 exited with code 1"
    succeeded = next(c for c in plan.status["conditions"] if c["type"] == "Succeeded")
    assert succeeded["reason"] == Reason.BEST_TRIAL
    assert "trial 1 (training.learningRate=0.01)" in succeeded["message"]


def test_when_no_trial_succeeded_the_job_fails_saying_what_became_of_each():
    b = trials_body(count=2, parallelism=2)
    status = after({}, tick(b, {}, []))
    seen = [trial(0, "Failed", failure="out of memory"), trial(1, "Failed", failure="bad data")]
    plan = tick(b, status, seen)
    assert plan.status["phase"] == Phase.FAILED
    assert plan.status["lastFailure"] == (
        "none of the 2 trial(s) succeeded (trial 0: out of memory; trial 1: bad data)"
    )
    assert not plan.promote


def test_a_running_trial_whose_job_was_deleted_fails_and_the_next_one_starts():
    b = trials_body()
    status = after({}, tick(b, {}, []))
    plan = tick(b, status, [trial(1)])
    board = rows(plan.status)
    assert board[0]["state"] == "Failed"
    assert "mnist-t0 was deleted before it finished" in board[0]["message"]
    assert plan.create_trials == [2]


def test_the_active_deadline_fails_the_job_and_deletes_its_running_trials():
    b = trials_body()
    b["spec"]["runPolicy"] = {"activeDeadlineSeconds": 60}
    status = after({}, tick(b, {}, []))
    plan = tick(b, status, [trial(0), trial(1)], now=NOW + timedelta(seconds=61))
    assert plan.status["phase"] == Phase.FAILED
    assert sorted(plan.delete_trials) == ["mnist-t0", "mnist-t1"]
    assert plan.create_trials == []


def test_a_trial_whose_job_the_api_server_refuses_fails_and_the_next_one_starts():
    b = trials_body()
    plan = tick(b, {}, [])
    assert plan.create_trials == [0, 1]
    trials.refuse(plan, 0, "admission webhook denied the request: no GPUs here")
    status = after({}, plan)
    refused = rows(status)[0]
    assert refused["state"] == "Failed"
    assert "refused its TrainingJob mnist-t0" in refused["message"]
    assert "no GPUs here" in refused["message"]
    assert status["trialsProgress"] == "1/3"
    assert ("Warning", Reason.TRIAL_FAILED) in [(t, r) for t, r, _ in plan.events]

    plan = tick(b, status, [trial(1)])
    assert plan.create_trials == [2]
    assert rows(after(status, plan))[0]["state"] == "Failed"


def test_a_job_whose_every_trial_is_refused_fails():
    b = trials_body(
        count=2, parallelism=2, parameters={"training.learningRate": {"values": RATES[:2]}}
    )
    plan = tick(b, {}, [])
    for index in plan.create_trials:
        trials.refuse(plan, index, "the spec is invalid")
    status = after({}, plan)
    final = after(status, tick(b, status, []))
    assert final["phase"] == Phase.FAILED
    assert "the spec is invalid" in final["lastFailure"]
    failed = [c for c in final["conditions"] if c["type"] == "Failed"]
    assert failed[0]["reason"] == Reason.NO_TRIAL_SUCCEEDED


def ended_trials(b: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A job's status and trial jobs once its three trials ended: trial 1 won."""
    status = after({}, tick(b, {}, []))
    status["trials"] = [{**r, "state": "Running"} for r in status["trials"]]
    seen = [
        trial(0, "Succeeded", [0.9, 0.95], model_version=4),
        trial(1, "Succeeded", [0.91, 0.97], model_version=5),
        trial(2, "Succeeded", [0.9, 0.93], model_version=6),
    ]
    return status, seen


def test_with_refit_the_winners_parameters_train_again_before_the_job_succeeds():
    b = trials_body(refit=True)
    status, seen = ended_trials(b)
    plan = tick(b, status, seen)
    assert plan.create_refit == 1
    refitting = after(status, plan)
    assert refitting["phase"] == Phase.RUNNING
    assert refitting["refit"] == {"trial": 1, "job": "mnist-refit", "state": "Running", "epochs": 0}
    assert "model" not in refitting
    assert not plan.promote
    running = next(c for c in refitting["conditions"] if c["type"] == "Running")
    assert running["reason"] == Reason.REFITTING

    j = job(b)
    manifest = trials.refit_job(b, j, candidates(j)[1])
    assert manifest["metadata"]["name"] == "mnist-refit"
    assert manifest["metadata"]["labels"][trials.LABEL_TRIAL] == trials.REFIT
    assert manifest["metadata"]["ownerReferences"][0]["uid"] == "uid-1234"
    spec = manifest["spec"]
    assert spec["dataset"]["trainOnValidation"] is True
    assert spec["training"]["learningRate"] == RATES[1]
    assert "trials" not in spec and spec["promotion"]["enabled"] is False

    # Adopted on the next tick, not created again, until it ends.
    status = after(status, plan)
    plan = tick(b, status, [*seen, trial(trials.REFIT, "Running", [0.99])])
    assert plan.create_refit is None
    assert after(status, plan)["phase"] == Phase.RUNNING


def test_a_refit_that_succeeds_gives_the_job_its_model_and_test_metrics_not_its_validation():
    b = trials_body(refit=True)
    status, seen = ended_trials(b)
    status = after(status, tick(b, status, seen))
    refit = trial(trials.REFIT, "Succeeded", [0.995, 0.999], model_version=7)
    refit["status"]["testMetrics"] = {"test_accuracy": 0.98}
    plan = tick(b, status, [*seen, refit])
    assert plan.status["phase"] == Phase.SUCCEEDED
    assert plan.status["model"] == {"name": "mnist", "version": 7}
    assert plan.status["testMetrics"] == {"test_accuracy": 0.98}
    # What the promotion gate compares is the search's estimate, not the refit's own score.
    assert plan.status["bestCheckpoint"]["value"] == 0.97
    assert plan.status["bestMetrics"]["val_accuracy"] == 0.97
    assert plan.status["refit"]["state"] == "Succeeded"
    assert plan.promote
    succeeded = next(c for c in plan.status["conditions"] if c["type"] == "Succeeded")
    assert "its refit on training + validation is mnist version 7" in succeeded["message"]


def test_a_refit_that_fails_leaves_the_job_the_best_trials_model():
    b = trials_body(refit=True)
    status, seen = ended_trials(b)
    status = after(status, tick(b, status, seen))
    failed = trial(trials.REFIT, "Failed", [0.5], failure="mnist-refit-worker-0 OOMKilled")
    plan = tick(b, status, [*seen, failed])
    assert plan.status["phase"] == Phase.SUCCEEDED
    assert plan.status["model"] == {"name": "mnist", "version": 5}
    assert plan.status["refit"]["message"] == "mnist-refit-worker-0 OOMKilled"
    warnings = [m for t, r, m in plan.events if r == Reason.REFIT_FAILED]
    assert warnings == [
        "refit: mnist-refit-worker-0 OOMKilled; the job exports trial 1's own model"
    ]
    assert plan.promote


def test_a_refit_the_api_server_refuses_leaves_the_job_the_best_trials_model():
    b = trials_body(refit=True)
    status, seen = ended_trials(b)
    plan = tick(b, status, seen)
    trials.refuse_refit(plan, "exceeded quota: trainingjobs")
    status = after(status, plan)
    assert status["refit"]["state"] == "Failed"
    assert "refused its TrainingJob mnist-refit" in status["refit"]["message"]
    final = tick(b, status, seen)
    assert final.create_refit is None
    assert final.status["phase"] == Phase.SUCCEEDED
    assert final.status["model"] == {"name": "mnist", "version": 5}


def test_the_active_deadline_deletes_a_running_refit():
    b = trials_body(refit=True)
    b["spec"]["runPolicy"] = {"activeDeadlineSeconds": 60}
    status, seen = ended_trials(b)
    status = after(status, tick(b, status, seen))
    refit = trial(trials.REFIT, "Running", [0.99])
    plan = tick(b, status, [*seen, refit], now=NOW + timedelta(seconds=61))
    assert plan.status["phase"] == Phase.FAILED
    assert plan.delete_trials == ["mnist-refit"]

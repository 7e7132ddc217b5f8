"""Promotion: the gate against the served model, the rollout's fate, and every decision."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta

import pytest
from kubetrain.operator import promotion, serving
from kubetrain.operator.promotion import gate, rollout_state
from kubetrain.operator.serving import served_annotations, served_version
from kubetrain.operator.status import get_condition
from kubetrain.trainer.api.entrypoints import GRPC_PORT, SERVER_PORT
from kubetrain.trainer.api.spec import SpecError, TrainingJobSpec
from kubetrain.trainer.api.status import Phase, Reason
from trainingjobs import body, job, serving_deployment, strategic_merge

T0 = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)


def test_the_first_model_is_always_promoted():
    assert gate("val_accuracy", 0.9, {}, 0.0).promote


def test_a_better_model_is_promoted_and_a_worse_or_equal_one_is_not():
    served = served_annotations(3, "val_accuracy", 0.95, "uid-1")
    assert gate("val_accuracy", 0.96, served, 0.0).promote
    worse = gate("val_accuracy", 0.94, served, 0.0)
    assert (worse.promote, worse.reason) == (False, "NotBetter")
    assert not gate("val_accuracy", 0.95, served, 0.0).promote


def test_min_improvement_is_the_margin_to_beat():
    served = served_annotations(3, "val_accuracy", 0.95, "uid-1")
    assert not gate("val_accuracy", 0.955, served, 0.01).promote
    assert gate("val_accuracy", 0.965, served, 0.01).promote


def test_for_loss_the_gate_wants_lower():
    served = served_annotations(3, "val_loss", 0.20, "uid-1")
    assert gate("val_loss", 0.15, served, 0.0).promote
    assert not gate("val_loss", 0.25, served, 0.0).promote


def test_models_chosen_by_different_metrics_are_not_compared():
    served = served_annotations(3, "val_loss", 0.20, "uid-1")
    verdict = gate("val_accuracy", 0.99, served, 0.0)
    assert (verdict.promote, verdict.reason) == (False, "NotComparable")


def with_status(dep: dict, generation: int, **status) -> dict:
    dep = copy.deepcopy(dep)
    dep["metadata"]["generation"] = generation
    dep["status"] = status
    return dep


def test_a_rollout_is_complete_when_every_replica_is_updated_and_available():
    dep = serving_deployment(4)
    done = with_status(
        dep, 2, observedGeneration=2, replicas=2, updatedReplicas=2, availableReplicas=2
    )
    assert rollout_state(done, T0, T0, 300)[0] == "Complete"
    surge = with_status(
        dep, 2, observedGeneration=2, replicas=3, updatedReplicas=2, availableReplicas=2
    )
    assert rollout_state(surge, T0, T0, 300)[0] == "Progressing"
    unseen = with_status(
        dep, 3, observedGeneration=2, replicas=2, updatedReplicas=2, availableReplicas=2
    )
    assert rollout_state(unseen, T0, T0, 300)[0] == "Progressing"


def test_a_rollout_fails_on_the_controllers_deadline_but_not_on_an_older_rollouts():
    exceeded = {
        "type": "Progressing",
        "status": "False",
        "reason": "ProgressDeadlineExceeded",
        "message": 'ReplicaSet "mnist-serving-abc" has timed out progressing.',
    }
    dep = serving_deployment(4)
    failed = with_status(
        dep,
        2,
        observedGeneration=2,
        replicas=3,
        updatedReplicas=1,
        availableReplicas=2,
        conditions=[exceeded],
    )
    state, message = rollout_state(failed, T0, T0, 300)
    assert state == "Failed" and "timed out" in message
    stale = with_status(dep, 3, observedGeneration=2, conditions=[exceeded])
    assert rollout_state(stale, T0, T0, 300)[0] == "Progressing"


def test_the_operators_clock_fails_a_rollout_the_controller_never_reports():
    dep = with_status(serving_deployment(4), 2, observedGeneration=1)
    assert rollout_state(dep, T0, T0 + timedelta(seconds=300), 300)[0] == "Progressing"
    assert rollout_state(dep, T0, T0 + timedelta(seconds=340), 300)[0] == "Failed"


def test_the_operators_clock_counts_from_the_rollouts_last_progress():
    """Two slow pods, each ready within the deadline: progress, not a failure."""
    progressing = {
        "type": "Progressing",
        "status": "True",
        "reason": "ReplicaSetUpdated",
        "lastUpdateTime": "2025-01-01T12:04:00Z",
    }
    dep = with_status(
        serving_deployment(4),
        2,
        observedGeneration=2,
        replicas=3,
        updatedReplicas=1,
        availableReplicas=2,
        conditions=[progressing],
    )
    four_minutes_later = T0 + timedelta(seconds=240)
    assert rollout_state(dep, T0, four_minutes_later + timedelta(seconds=300), 300)[0] == (
        "Progressing"
    )
    state, message = rollout_state(dep, T0, four_minutes_later + timedelta(seconds=340), 300)
    assert state == "Failed" and "no progress for 300s" in message


# --- the planner: observe (Deployment, served metric, job status), decide, act ----------------

SPEC = job(body()).spec


def succeeded(version: int = 4, value: float | None = 0.98, **fields) -> dict:
    """The status of a job whose chief exported `version` with validation accuracy `value`."""
    return {
        "phase": Phase.SUCCEEDED,
        "bestCheckpoint": {"epoch": 3, "metric": "val_accuracy", "value": value},
        "model": {"name": "mnist", "version": version, "path": f"/models/mnist/{version}"},
        **fields,
    }


def promoting(version: int = 4, previous: int | None = 3) -> dict:
    return {
        "phase": Phase.PROMOTING,
        "promotionStartTime": "2025-01-01T12:00:00Z",
        "serving": {
            "deployment": "mnist-serving",
            "version": version,
            "previousVersion": previous,
            "metric": "val_accuracy",
            "value": 0.98,
        },
    }


def rolled_out(dep: dict) -> dict:
    replicas = dep["spec"]["replicas"]
    return with_status(
        dep,
        1,
        observedGeneration=1,
        replicas=replicas,
        updatedReplicas=replicas,
        availableReplicas=replicas,
    )


def promoted(step: promotion.PromotionPlan) -> dict:
    return get_condition(step.status["conditions"], "Promoted")


def model_check(phase: str = "Succeeded", message: str = "", created: str = "") -> dict:
    """The model-check pod as the handler summarizes it."""
    return {
        "name": "mnist-model-check",
        "phase": phase,
        "exitCode": {"Succeeded": 0, "Failed": 2}.get(phase),
        "message": message,
        "created": created or "2025-01-01T12:00:00Z",
    }


def decide(
    status: dict, dep: dict | None, now: datetime = T0, check: dict | None = None
) -> promotion.PromotionPlan:
    """One promotion tick; the model-check pod found the version complete unless `check`."""
    return promotion.plan(
        SPEC, "ml", "uid-new", status, dep, now, check=check or model_check("Succeeded")
    )


def test_a_result_without_a_model_is_not_promoted():
    step = decide({"phase": Phase.SUCCEEDED}, None)
    assert step.status["phase"] == Phase.SUCCEEDED
    assert promoted(step)["status"] == "False"
    assert promoted(step)["reason"] == Reason.NO_MODEL
    assert step.events[0][:2] == ("Warning", "NoModel")
    assert (step.create, step.patch, step.remove) == ([], None, False)


def test_a_deployment_someone_else_made_is_left_alone():
    theirs = serving_deployment(3)
    theirs["metadata"]["labels"]["app.kubernetes.io/managed-by"] = "helm"
    step = decide(succeeded(), theirs)
    assert promoted(step)["reason"] == Reason.DEPLOYMENT_NOT_MANAGED
    assert (step.create, step.patch, step.remove) == ([], None, False)


def test_the_first_model_creates_the_service_and_the_deployment_pinned_to_it():
    step = decide(succeeded(version=1), None)
    *_, dep = step.create
    assert [o["kind"] for o in step.create] == ["Service", "PodDisruptionBudget", "Deployment"]
    assert served_version(dep) == 1
    assert dep["metadata"]["annotations"]["kubetrain.io/promoted-by"] == "uid-new"
    assert step.status["phase"] == Phase.PROMOTING
    assert step.status["serving"]["previousVersion"] is None
    assert step.status["promotionStartTime"] == "2025-01-01T12:00:00Z"
    assert step.events == [("Normal", "Promoting", "rolling mnist-serving out to mnist version 1")]


def test_the_first_model_fences_its_pods_before_anything_can_reach_them():
    access = serving.Access([{"podSelector": {"matchLabels": {"app": "frontend"}}}], "monitoring")
    step = promotion.plan(
        SPEC, "ml", "uid-new", succeeded(version=1), None, T0, None, access, model_check()
    )
    policy, _, _, dep = step.create
    assert [o["kind"] for o in step.create] == [
        "NetworkPolicy",
        "Service",
        "PodDisruptionBudget",
        "Deployment",
    ]
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"] == pod_labels
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    port = [{"protocol": "TCP", "port": p} for p in (SERVER_PORT, GRPC_PORT)]  # REST, gRPC
    monitoring = {"kubernetes.io/metadata.name": "monitoring"}
    assert policy["spec"]["ingress"] == [
        {"from": [{"podSelector": {"matchLabels": {"app": "frontend"}}}], "ports": port},
        {"from": [{"namespaceSelector": {"matchLabels": monitoring}}], "ports": port},
    ]
    # Nobody named, no metrics namespace: nobody gets in.
    closed = serving.network_policy(SPEC, "ml", serving.Access([], None))
    assert closed["spec"]["ingress"] == []


def test_a_better_model_patches_the_served_version_and_remembers_the_previous_one():
    served = serving_deployment(3, value=0.97)
    step = decide(succeeded(version=4, value=0.98), served)
    assert step.create == [] and not step.remove
    patched = strategic_merge(served, step.patch)
    assert served_version(patched) == 4
    annotations = patched["metadata"]["annotations"]
    assert annotations["kubetrain.io/previous-version"] == "3"
    assert annotations["kubetrain.io/metric-value"] == "0.98"
    assert step.status["serving"]["previousVersion"] == 3
    assert step.status["phase"] == Phase.PROMOTING


def test_the_patch_applies_only_to_the_deployment_version_the_gate_read():
    """Two jobs promoting at once: the second patch is refused (409) and gated again."""
    served = serving_deployment(3, value=0.97)
    step = decide(succeeded(version=4, value=0.98), served)
    assert step.patch["metadata"]["resourceVersion"] == "41"


@pytest.mark.parametrize(
    "other",
    [{"storage": {"claimName": "other-models"}}, {"model": {"name": "other"}}],
    ids=["another claim", "another model"],
)
def test_a_deployment_serving_another_model_is_not_patched(other: dict):
    """Promotion changes only the version: on another model's Deployment it would go on
    serving that model while the job said Promoted."""
    spec = job(body(promotion={"deployment": "mnist-serving"}, **other)).spec
    theirs = serving.deployment(spec, "ml", 3, served_annotations(3, "val_accuracy", 0.5, "u"))
    step = decide(succeeded(version=4, value=0.98), theirs)
    assert promoted(step)["reason"] == Reason.SERVES_ANOTHER_MODEL
    assert "spec.promotion.deployment" in promoted(step)["message"]
    assert step.events[0][:2] == ("Warning", "ServesAnotherModel")
    assert (step.create, step.patch, step.remove) == ([], None, False)


def test_a_model_no_better_than_the_served_one_is_refused():
    step = decide(succeeded(version=4, value=0.96), serving_deployment(3, value=0.97))
    assert step.status["phase"] == Phase.SUCCEEDED
    assert promoted(step)["status"] == "False"
    assert promoted(step)["reason"] == Reason.NOT_BETTER
    assert step.events[0][:2] == ("Normal", "NotPromoted")
    assert (step.create, step.patch, step.remove) == ([], None, False)


def test_a_patch_whose_status_update_was_lost_is_recorded_not_repeated():
    served = serving_deployment(3, value=0.97)
    already = strategic_merge(served, decide(succeeded(version=4), served).patch)
    step = decide(succeeded(version=4), already)
    assert (step.create, step.patch) == ([], None)
    assert step.status["phase"] == Phase.PROMOTING
    assert step.status["serving"]["previousVersion"] == 3


def test_a_rollout_under_way_changes_nothing():
    step = decide(promoting(), with_status(serving_deployment(4), 2, observedGeneration=1))
    assert step == promotion.PromotionPlan()


def test_a_finished_rollout_promotes_the_job():
    now = T0 + timedelta(seconds=20)
    step = decide(promoting(version=4, previous=3), rolled_out(serving_deployment(4)), now)
    assert step.status["phase"] == Phase.PROMOTED
    assert promoted(step)["reason"] == Reason.ROLLED_OUT
    assert step.status["served"] == "mnist-serving:4"
    assert step.status["serving"]["promotedAt"] == "2025-01-01T12:00:20Z"
    assert step.events == [("Normal", "Promoted", "mnist-serving serves version 4 (was 3)")]


def test_a_deployment_deleted_during_the_rollout_ends_promotion():
    step = decide(promoting(), None)
    assert step.status["phase"] == Phase.SUCCEEDED
    assert promoted(step)["reason"] == Reason.DEPLOYMENT_DELETED


def test_another_rollout_that_replaced_ours_supersedes_it():
    step = decide(promoting(version=4), rolled_out(serving_deployment(5)))
    assert promoted(step)["reason"] == Reason.SUPERSEDED
    assert (step.patch, step.remove) == (None, False)


def test_a_failed_rollout_rolls_back_to_the_previous_version_and_its_metric():
    served = serving_deployment(3, value=0.97)
    ours = strategic_merge(served, decide(succeeded(version=4, value=0.98), served).patch)
    late = T0 + timedelta(seconds=400)  # past progressDeadlineSeconds and the slack
    step = decide(
        promoting(version=4, previous=3), with_status(ours, 2, observedGeneration=1), late
    )
    assert promoted(step)["reason"] == Reason.ROLLOUT_FAILED
    assert step.status["phase"] == Phase.SUCCEEDED
    restored = strategic_merge(ours, step.patch)
    assert served_version(restored) == 3
    annotations = restored["metadata"]["annotations"]
    assert annotations["kubetrain.io/metric-value"] == "0.97"
    assert "kubetrain.io/promoted-by" not in annotations
    assert "kubetrain.io/previous-version" not in annotations
    assert not step.remove
    assert "rolled back to version 3" in step.events[0][2]


def test_a_failed_first_rollout_removes_the_deployment():
    late = T0 + timedelta(seconds=400)
    broken = with_status(serving_deployment(1), 2, observedGeneration=1)
    step = decide(promoting(version=1, previous=None), broken, late)
    assert promoted(step)["reason"] == Reason.ROLLOUT_FAILED
    assert step.remove and step.patch is None
    assert "removed (it had no earlier version)" in step.events[0][2]


def test_a_refused_promotion_request_ends_promotion_with_the_api_servers_message():
    """A quota's 403 or an invalid object's 422: said on the job, never retried in silence."""
    message = 'services "mnist-serving" is forbidden: exceeded quota: services=1'
    step = promotion.api_refused(SPEC, succeeded(), 403, message, T0)
    assert step.status["phase"] == Phase.SUCCEEDED
    condition = promoted(step)
    assert (condition["status"], condition["reason"]) == ("False", Reason.PROMOTION_REFUSED)
    assert "403" in condition["message"] and "exceeded quota" in condition["message"]
    assert step.events[0][:2] == ("Warning", "PromotionRefused")
    during = promotion.api_refused(SPEC, promoting(), 422, "invalid", T0)
    assert during.status["phase"] == Phase.SUCCEEDED


@pytest.mark.parametrize("code", [409, 429, 503])
def test_a_conflict_or_a_server_fault_is_retried_and_says_so(code: int):
    step = promotion.api_refused(SPEC, succeeded(), code, "the object has been modified", T0)
    assert step.status == {}  # still Succeeded and undecided: the next tick gates again
    assert step.events[0][:2] == ("Warning", "PromotionRetrying")
    assert str(code) in step.events[0][2]


def test_a_served_metric_that_is_not_a_number_is_not_compared():
    verdict = gate(
        "val_accuracy",
        0.99,
        {"kubetrain.io/metric": "val_accuracy", "kubetrain.io/metric-value": "high"},
        0.0,
    )
    assert (verdict.promote, verdict.reason) == (False, "NotComparable")
    assert "'high'" in verdict.message


# --- the model-check pod: the version must be complete in storage before any rollout -------


def test_a_model_that_passed_the_gate_is_checked_in_storage_before_anything_is_touched():
    step = promotion.plan(SPEC, "ml", "uid-new", succeeded(version=4), serving_deployment(3), T0)
    assert step.check == 4
    assert (step.create, step.patch, step.remove, step.status) == ([], None, False, {})
    assert step.events == [
        ("Normal", "CheckingModel", "checking that mnist version 4 is complete in storage")
    ]


def test_a_model_the_gate_refuses_is_not_checked():
    step = promotion.plan(
        SPEC, "ml", "uid-new", succeeded(version=4, value=0.5), serving_deployment(3), T0
    )
    assert step.check is None
    assert promoted(step)["reason"] == Reason.NOT_BETTER


@pytest.mark.parametrize("phase", ["Pending", "Running"])
def test_a_check_under_way_changes_nothing(phase: str):
    step = decide(succeeded(version=4), serving_deployment(3), check=model_check(phase))
    assert step == promotion.PromotionPlan()


def test_a_version_missing_from_storage_is_never_rolled_out():
    missing = "error: version 4 not found in /models/mnist (available: [3])"
    step = decide(succeeded(version=4), serving_deployment(3), check=model_check("Failed", missing))
    assert step.status["phase"] == Phase.SUCCEEDED
    assert promoted(step)["status"] == "False"
    assert promoted(step)["reason"] == Reason.MODEL_NOT_FOUND
    assert promoted(step)["message"] == f"mnist version 4 cannot be served: {missing}"
    assert step.events[0][:2] == ("Warning", "ModelNotFound")
    assert (step.create, step.patch, step.remove, step.remove_check) == ([], None, False, True)


def test_a_check_that_never_runs_ends_promotion_after_the_progress_deadline():
    stuck = model_check("Pending", created="2025-01-01T12:00:00Z")
    deadline = SPEC.promotion.progress_deadline_seconds
    on_time = decide(succeeded(), serving_deployment(3), T0 + timedelta(seconds=deadline), stuck)
    assert on_time == promotion.PromotionPlan()
    late = decide(succeeded(), serving_deployment(3), T0 + timedelta(seconds=deadline + 1), stuck)
    assert promoted(late)["reason"] == Reason.MODEL_CHECK_TIMED_OUT
    assert "mnist-model-check: Pending" in promoted(late)["message"]
    assert late.remove_check and late.patch is None


def test_a_checked_model_is_rolled_out_and_its_check_pod_removed():
    step = decide(succeeded(version=4, value=0.98), serving_deployment(3, value=0.97))
    assert served_version(strategic_merge(serving_deployment(3), step.patch)) == 4
    assert step.remove_check and step.check is None


def test_the_check_pod_is_the_serving_pod_run_once_with_check_only():
    b = body(promotion={"deployment": "mnist-serving"})
    spec = job(b).spec
    pod = serving.model_check_pod(b, spec, 4)
    served = serving.deployment(spec, "ml", 4, {})["spec"]["template"]["spec"]
    (server,) = served["containers"]
    (checker,) = pod["spec"]["containers"]
    assert checker["command"] == [*server["command"], "--check-only"]
    assert (checker["image"], checker["env"]) == (server["image"], server["env"])
    assert checker["volumeMounts"] == server["volumeMounts"]
    assert pod["spec"]["volumes"] == served["volumes"]
    assert pod["spec"]["restartPolicy"] == "Never"
    assert "readinessProbe" not in checker and "ports" not in checker
    assert pod["metadata"]["name"] == "mnist-model-check"
    assert pod["metadata"]["labels"]["kubetrain.io/role"] == "model-check"
    assert pod["metadata"]["ownerReferences"][0]["uid"] == b["metadata"]["uid"]


# --- availability and autoscaling ------------------------------------------------------------


def test_a_drain_takes_one_serving_pod_at_a_time():
    step = decide(succeeded(version=1), None)
    budget = next(o for o in step.create if o["kind"] == "PodDisruptionBudget")
    dep = next(o for o in step.create if o["kind"] == "Deployment")
    assert budget["metadata"]["name"] == "mnist-serving"
    assert budget["spec"]["maxUnavailable"] == 1
    assert budget["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    assert not any(o["kind"] == "HorizontalPodAutoscaler" for o in step.create)


def autoscaled(**autoscaling) -> TrainingJobSpec:
    return job(body(promotion={"deployment": "mnist-serving", "autoscaling": autoscaling})).spec


def test_autoscaling_creates_an_autoscaler_for_the_deployment_starting_at_its_minimum():
    spec = autoscaled(minReplicas=2, maxReplicas=6, targetCpuUtilization=50)
    step = promotion.plan(
        spec, "ml", "uid-new", succeeded(version=1), None, T0, None, None, model_check()
    )
    dep = next(o for o in step.create if o["kind"] == "Deployment")
    hpa = next(o for o in step.create if o["kind"] == "HorizontalPodAutoscaler")
    assert dep["spec"]["replicas"] == 2
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "mnist-serving",
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)
    (cpu,) = hpa["spec"]["metrics"]
    assert cpu["resource"] == {
        "name": "cpu",
        "target": {"type": "Utilization", "averageUtilization": 50},
    }
    # Kubernetes' own wait before removing pods, unless the job says otherwise.
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 300
    quick = serving.autoscaler(autoscaled(maxReplicas=3, scaleDownStabilizationSeconds=15), "ml")
    assert quick["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 15


def test_a_requests_per_second_target_asks_for_the_servers_request_rate():
    hpa = serving.autoscaler(autoscaled(maxReplicas=4, targetRequestsPerSecond=200), "ml")
    (rate,) = hpa["spec"]["metrics"]
    assert rate["pods"]["metric"]["name"] == "kubetrain_serving_requests_per_second"
    assert rate["pods"]["target"] == {"type": "AverageValue", "averageValue": "200"}
    defaulted = serving.autoscaler(autoscaled(maxReplicas=4), "ml")
    assert defaulted["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] == 70


def test_a_rollout_never_touches_the_replicas_the_autoscaler_set():
    spec = autoscaled(minReplicas=1, maxReplicas=5)
    served = serving_deployment(1, 0.9, autoscaling={"minReplicas": 1, "maxReplicas": 5})
    served["spec"]["replicas"] = 4  # the autoscaler scaled out
    step = promotion.plan(
        spec, "ml", "uid-new", succeeded(version=2), served, T0, None, None, model_check()
    )
    assert step.patch is not None
    assert "replicas" not in step.patch.get("spec", {})
    assert strategic_merge(served, step.patch)["spec"]["replicas"] == 4


def test_autoscaling_bounds_must_make_sense():
    with pytest.raises(SpecError, match="maxReplicas must be at least minReplicas"):
        autoscaled(minReplicas=3, maxReplicas=2)

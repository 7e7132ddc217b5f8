"""Promotion: the serving Deployment, the gate against the served model, the rollout's fate."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta

from kubetrain.operator import promotion
from kubetrain.operator.promotion import gate, rollout_state, served_annotations, served_version
from trainingjobs import body, job

T0 = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)


def deployment(version: int, **promotion_spec) -> dict:
    spec = job(body(promotion={"deployment": "mnist-serving", **promotion_spec})).spec
    return promotion.deployment(
        spec, "ml", version, served_annotations(version, "val_accuracy", 0.97, "uid-1")
    )


def strategic_merge(target: dict, patch: dict) -> dict:
    """The part of strategic merge the version patch relies on: lists merged by `name`."""
    out = copy.deepcopy(target)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict):
            out[key] = strategic_merge(out.get(key, {}), value)
        elif isinstance(value, list) and value and "name" in value[0]:
            items = {item["name"]: item for item in out.get(key, [])}
            for item in value:
                items[item["name"]] = strategic_merge(items.get(item["name"], {}), item)
            out[key] = list(items.values())
        else:
            out[key] = value
    return out


def test_the_deployment_rolls_without_losing_capacity_and_probes_readiness():
    dep = deployment(3)
    strategy = dep["spec"]["strategy"]
    assert strategy == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": 8501}
    assert container["lifecycle"]["preStop"]["exec"]["command"][0] == "sleep"
    assert container["command"] == [
        "kubetrain",
        "serve",
        "--model-dir",
        "/var/lib/kubetrain/models/mnist",
        "--port",
        "8501",
    ]
    assert container["volumeMounts"][0]["readOnly"] is True
    assert dep["spec"]["progressDeadlineSeconds"] == 300
    assert served_version(dep) == 3
    assert dep["metadata"]["annotations"]["kubetrain.io/metric-value"] == "0.97"


def test_the_version_patch_changes_the_pod_template_only_in_the_version():
    v3, v4 = deployment(3), deployment(4)
    patched = strategic_merge(v3, promotion.version_patch(4, {"kubetrain.io/model-version": "4"}))
    assert patched["spec"]["template"] == v4["spec"]["template"]
    assert served_version(patched) == 4
    v3_env = v3["spec"]["template"]["spec"]["containers"][0]["env"]
    assert v3_env == [{"name": "MODEL_VERSION", "value": "3"}]


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
    dep = deployment(4)
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
    dep = deployment(4)
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
    dep = with_status(deployment(4), 2, observedGeneration=1)
    assert rollout_state(dep, T0, T0 + timedelta(seconds=300), 300)[0] == "Progressing"
    assert rollout_state(dep, T0, T0 + timedelta(seconds=340), 300)[0] == "Failed"

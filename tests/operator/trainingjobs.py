"""Builders for TrainingJob bodies, worker pod summaries and serving Deployments, as the API
server would hold them."""

from __future__ import annotations

import copy
from typing import Any

from kubetrain.operator import serving
from kubetrain.operator.defaults import JobDefaults
from kubetrain.trainer.api.spec import TrainingJob, parse_job

SPEC: dict[str, Any] = {
    "dataset": {"name": "mnist", "source": "data/mnist"},
    "model": {"architecture": "mnist-dense", "name": "mnist"},
    "training": {"epochs": 3},
    "workers": {"replicas": 2},
    "storage": {"claimName": "models"},
    "promotion": {"deployment": "mnist-serving"},
}


def body(name: str = "mnist", namespace: str = "ml", **spec_overrides: Any) -> dict[str, Any]:
    spec = copy.deepcopy(SPEC)
    for key, value in spec_overrides.items():
        spec[key] = {**spec.get(key, {}), **value}
    return {
        "apiVersion": "kubetrain.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name, "namespace": namespace, "uid": "uid-1234", "generation": 1},
        "spec": spec,
    }


def job(b: dict[str, Any], defaults: JobDefaults | None = None) -> TrainingJob:
    """The job as the operator's handler sees it: parsed, then given the operator's defaults."""
    parsed = parse_job(
        {k: b[k] for k in ("apiVersion", "kind", "spec")}
        | {"metadata": {"name": b["metadata"]["name"], "namespace": b["metadata"]["namespace"]}}
    )
    return (defaults or JobDefaults()).apply(parsed)


def pod(
    index: int,
    phase: str = "Running",
    attempt: int = 0,
    exit_code: int | None = None,
    message: str = "",
    reason: str | None = None,
    deleting: str | None = None,
    job_name: str = "mnist",
    owner: str = "uid-1234",
    node: str | None = None,
    ready: bool | None = None,
) -> dict[str, Any]:
    return {
        "name": f"{job_name}-worker-{index}",
        "owner": owner,
        "index": index,
        "attempt": attempt,
        "phase": phase,
        "exitCode": exit_code,
        "message": message,
        "reason": reason,
        "deletionTimestamp": deleting,
        "node": node,
        "ready": phase == "Running" if ready is None else ready,
    }


def serving_deployment(
    version: int, value: float = 0.97, job_uid: str = "uid-1", **promotion_spec: Any
) -> dict[str, Any]:
    """The serving Deployment as the operator creates it, serving `version` with `value`."""
    spec = job(body(promotion={"deployment": "mnist-serving", **promotion_spec})).spec
    annotations = serving.served_annotations(version, "val_accuracy", value, job_uid)
    dep = serving.deployment(spec, "ml", version, annotations)
    dep["metadata"]["resourceVersion"] = "41"  # as the API server returns it
    return dep


def strategic_merge(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
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

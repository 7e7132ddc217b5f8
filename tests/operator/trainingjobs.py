"""Builders for TrainingJob bodies and worker pod summaries, as the API server would hold them."""

from __future__ import annotations

import copy
from typing import Any

from kubetrain.trainer.spec import TrainingJob, parse_job

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


def job(b: dict[str, Any]) -> TrainingJob:
    return parse_job(
        {k: b[k] for k in ("apiVersion", "kind", "spec")}
        | {"metadata": {"name": b["metadata"]["name"], "namespace": b["metadata"]["namespace"]}}
    )


def pod(
    index: int,
    phase: str = "Running",
    attempt: int = 0,
    exit_code: int | None = None,
    message: str = "",
    reason: str | None = None,
    deleting: str | None = None,
    job_name: str = "mnist",
) -> dict[str, Any]:
    return {
        "name": f"{job_name}-worker-{index}",
        "index": index,
        "attempt": attempt,
        "phase": phase,
        "exitCode": exit_code,
        "message": message,
        "reason": reason,
        "deletionTimestamp": deleting,
    }

"""Promotion of a job's exported model to its serving Deployment: manifests, gate, rollout.

The serving Deployment outlives the jobs that promote to it, so it has no owner reference;
the metric of the version it serves is kept on it as annotations, which is what the gate of
the next job compares against. Pure functions; the handler does the API calls.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from kubetrain.operator.manifests import CONTAINER_SECURITY_CONTEXT, MANAGED_BY
from kubetrain.operator.status import better
from kubetrain.trainer.spec import TrainingJobSpec

SERVER_CONTAINER = "server"
SERVER_PORT = 8501
LABEL_SERVING = "kubetrain.io/serving"
ANN_VERSION = "kubetrain.io/model-version"
ANN_METRIC = "kubetrain.io/metric"
ANN_VALUE = "kubetrain.io/metric-value"
ANN_JOB = "kubetrain.io/promoted-by"
ANN_PREVIOUS_VERSION = "kubetrain.io/previous-version"
ANN_PREVIOUS_METRIC = "kubetrain.io/previous-metric"
ANN_PREVIOUS_VALUE = "kubetrain.io/previous-metric-value"
PRESTOP_SECONDS = 5
"""Endpoints drop a terminating pod a moment after it is told to stop; serve until then."""


def serving_labels(deployment: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "kubetrain-serving", LABEL_SERVING: deployment}


def model_dir(spec: TrainingJobSpec) -> str:
    return f"{spec.storage.mount_path.rstrip('/')}/models/{spec.model_name}"


def served_annotations(
    version: int,
    metric: str,
    value: float | None,
    job_uid: str,
    previous: dict[str, str] | None = None,
) -> dict[str, str | None]:
    """What the Deployment records about the version it serves and the one before it."""
    previous = previous or {}
    return {
        ANN_VERSION: str(version),
        ANN_METRIC: metric,
        ANN_VALUE: repr(value) if value is not None else None,
        ANN_JOB: job_uid,
        ANN_PREVIOUS_VERSION: previous.get(ANN_VERSION),
        ANN_PREVIOUS_METRIC: previous.get(ANN_METRIC),
        ANN_PREVIOUS_VALUE: previous.get(ANN_VALUE),
    }


def deployment(
    spec: TrainingJobSpec,
    namespace: str,
    version: int,
    annotations: dict[str, str | None],
    command: list[str] | None = None,
) -> dict[str, Any]:
    """The serving Deployment; only `MODEL_VERSION` differs between two promotions."""
    name = spec.serving_deployment
    labels = serving_labels(name)
    command = command or ["kubetrain", "serve"]
    probe = {
        "httpGet": {"path": "/readyz", "port": SERVER_PORT},
        "periodSeconds": 2,
        "failureThreshold": 2,
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {**labels, **MANAGED_BY},
            "annotations": {k: v for k, v in annotations.items() if v is not None},
        },
        "spec": {
            "replicas": spec.promotion.replicas,
            "selector": {"matchLabels": labels},
            "progressDeadlineSeconds": spec.promotion.progress_deadline_seconds,
            "revisionHistoryLimit": 5,
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
            },
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "containers": [
                        {
                            "name": SERVER_CONTAINER,
                            "image": spec.workers.image,
                            "imagePullPolicy": spec.workers.image_pull_policy,
                            "command": [
                                *command,
                                "--model-dir",
                                model_dir(spec),
                                "--port",
                                str(SERVER_PORT),
                            ],
                            "env": [{"name": "MODEL_VERSION", "value": str(version)}],
                            "ports": [{"name": "http", "containerPort": SERVER_PORT}],
                            "readinessProbe": probe,
                            "livenessProbe": {
                                "httpGet": {"path": "/healthz", "port": SERVER_PORT},
                                "periodSeconds": 10,
                                "failureThreshold": 3,
                                "initialDelaySeconds": 10,
                            },
                            "lifecycle": {
                                "preStop": {"exec": {"command": ["sleep", str(PRESTOP_SECONDS)]}}
                            },
                            "securityContext": copy.deepcopy(CONTAINER_SECURITY_CONTEXT),
                            "volumeMounts": [
                                {
                                    "name": "storage",
                                    "mountPath": spec.storage.mount_path,
                                    "readOnly": True,
                                }
                            ],
                        }
                    ],
                    "volumes": [
                        {
                            "name": "storage",
                            "persistentVolumeClaim": {
                                "claimName": spec.storage.claim_name,
                                "readOnly": True,
                            },
                        }
                    ],
                },
            },
        },
    }


def version_patch(version: int, annotations: dict[str, str | None]) -> dict[str, Any]:
    """Strategic merge patch that changes the served version and nothing else in the pods."""
    return {
        "metadata": {"annotations": annotations},
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": SERVER_CONTAINER,
                            "env": [{"name": "MODEL_VERSION", "value": str(version)}],
                        }
                    ]
                }
            }
        },
    }


def service(spec: TrainingJobSpec, namespace: str) -> dict[str, Any]:
    name = spec.serving_deployment
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {**serving_labels(name), **MANAGED_BY},
        },
        "spec": {
            "selector": serving_labels(name),
            "ports": [{"name": "http", "port": SERVER_PORT, "targetPort": SERVER_PORT}],
        },
    }


@dataclass
class Gate:
    promote: bool
    reason: str
    message: str


def gate(
    metric: str, value: float | None, annotations: dict[str, str], min_improvement: float
) -> Gate:
    """Promote only a model that beats the served one by more than `min_improvement`."""
    served_metric = annotations.get(ANN_METRIC)
    served_raw = annotations.get(ANN_VALUE)
    if served_raw is None:
        return Gate(True, "NothingServed", "no model with a recorded metric is being served")
    served = float(served_raw)
    if served_metric != metric:
        return Gate(
            False,
            "NotComparable",
            f"the served model was chosen by {served_metric}, this one by {metric}",
        )
    if value is None:
        return Gate(False, "NoMetric", f"the result has no {metric}")
    if better(metric, value, served, min_improvement):
        return Gate(
            True,
            "Better",
            f"{metric} {value:.4f} beats served {served:.4f}"
            + (f" by more than {min_improvement}" if min_improvement else ""),
        )
    return Gate(
        False,
        "NotBetter",
        f"{metric} {value:.4f} does not beat served {served:.4f}"
        + (f" by more than {min_improvement}" if min_improvement else ""),
    )


def served_version(dep: dict[str, Any]) -> int | None:
    """The version the Deployment's pod template pins."""
    for container in dep["spec"]["template"]["spec"]["containers"]:
        if container["name"] == SERVER_CONTAINER:
            for env in container.get("env") or []:
                if env["name"] == "MODEL_VERSION" and str(env.get("value", "")).isdigit():
                    return int(env["value"])
    return None


ROLLOUT_SLACK = timedelta(seconds=30)


def rollout_state(
    dep: dict[str, Any], started: datetime | None, now: datetime, deadline_seconds: int
) -> tuple[str, str]:
    """("Complete" | "Progressing" | "Failed", message) as the deployment controller reports.

    The controller's own ProgressDeadlineExceeded is the primary signal; the operator's clock
    is a fallback in case the controller never reports (e.g. it is down).
    """
    desired = dep["spec"].get("replicas", 1)
    st = dep.get("status") or {}
    # Until the controller has seen this generation, its conditions describe an older rollout.
    observed = st.get("observedGeneration", 0) >= dep["metadata"].get("generation", 0)
    for cond in st.get("conditions") or [] if observed else []:
        if (
            cond.get("type") == "Progressing"
            and cond.get("status") == "False"
            and cond.get("reason") == "ProgressDeadlineExceeded"
        ):
            return "Failed", cond.get("message") or "progress deadline exceeded"
    if (
        observed
        and st.get("updatedReplicas", 0) == desired
        and st.get("availableReplicas", 0) == desired
        and st.get("replicas", 0) == desired
    ):
        return "Complete", f"{desired} replica(s) updated and available"
    if started and now > started + timedelta(seconds=deadline_seconds) + ROLLOUT_SLACK:
        return "Failed", f"rollout not complete after {deadline_seconds}s"
    return "Progressing", (
        f"{st.get('updatedReplicas', 0)} of {desired} updated, "
        f"{st.get('availableReplicas', 0)} available"
    )

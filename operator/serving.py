"""The serving Deployment and Service a promotion creates, patches and reads back.

The serving Deployment outlives the jobs that promote to it, so it has no owner reference;
the metric of the version it serves is kept on it as annotations, which is what the gate of
the next job compares against. Pure functions; the handler does the API calls.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from kubetrain.operator.manifests import (
    CONTAINER_SECURITY_CONTEXT,
    LABEL_ROLE,
    MANAGED_BY,
    POD_SECURITY_CONTEXT,
    SCRATCH_MOUNT,
    SCRATCH_VOLUME,
    container_resources,
    owned_metadata,
)
from kubetrain.trainer.api.entrypoints import (
    CHECK_ONLY_FLAG,
    MODEL_DIR_FLAG,
    MODEL_VERSION_ENV,
    SERVE_COMMAND,
    SERVER_PORT,
    serve_arguments,
)
from kubetrain.trainer.api.layout import model_dir
from kubetrain.trainer.api.spec import TrainingJobSpec

SERVER_CONTAINER = "server"
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
PROBE_TIMEOUT_SECONDS = 3
"""The server answers probes off its busy paths; this covers a node short of CPU, where the
kubelet's default of 1 s would drop a loaded but healthy pod from its Service."""
ROLE_MODEL_CHECK = "model-check"
MODEL_CHECK_RESOURCES = {
    "requests": {"cpu": "50m", "memory": "64Mi"},
    "limits": {"memory": "256Mi"},
}
"""The check reads a directory listing, without TensorFlow: far less than a server needs."""


@dataclass(frozen=True)
class Access:
    """Who may reach serving pods: NetworkPolicy peers for the API, a namespace for metrics.

    The API and `/metrics` share one port, so the monitoring namespace reaches both.
    """

    allow_from: list[dict[str, Any]] = field(default_factory=lambda: [{"podSelector": {}}])
    """`from` peers of a NetworkPolicy rule; the default is every pod of the namespace."""
    metrics_namespace: str | None = None


def serving_labels(deployment: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "kubetrain-serving", LABEL_SERVING: deployment}


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


def _pod_spec(spec: TrainingJobSpec, version: int, command: list[str] | None) -> dict[str, Any]:
    """The model server's pod, pinned to `version`: what a serving Deployment runs."""
    probe = {
        "httpGet": {"path": "/readyz", "port": SERVER_PORT},
        "periodSeconds": 2,
        "timeoutSeconds": PROBE_TIMEOUT_SECONDS,
        "failureThreshold": 3,
    }
    server = {
        "name": SERVER_CONTAINER,
        "image": spec.workers.image,
        "imagePullPolicy": spec.workers.image_pull_policy,
        "command": [
            *(command or SERVE_COMMAND),
            *serve_arguments(model_dir(spec.storage.mount_path, spec.model_name)),
        ],
        "env": [{"name": MODEL_VERSION_ENV, "value": str(version)}],
        "ports": [{"name": "http", "containerPort": SERVER_PORT}],
        "readinessProbe": probe,
        # Loading TensorFlow and the model can take a minute on a busy node: liveness
        # starts once the server is up, not on a timer.
        "startupProbe": {
            "httpGet": {"path": "/healthz", "port": SERVER_PORT},
            "periodSeconds": 2,
            "timeoutSeconds": PROBE_TIMEOUT_SECONDS,
            "failureThreshold": 150,
        },
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": SERVER_PORT},
            "periodSeconds": 10,
            "timeoutSeconds": PROBE_TIMEOUT_SECONDS,
            "failureThreshold": 3,
        },
        "resources": container_resources(spec.promotion.resources),
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(PRESTOP_SECONDS)]}}},
        "securityContext": copy.deepcopy(CONTAINER_SECURITY_CONTEXT),
        "volumeMounts": [
            {"name": "storage", "mountPath": spec.storage.mount_path, "readOnly": True},
            dict(SCRATCH_MOUNT),
        ],
    }
    return {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": copy.deepcopy(POD_SECURITY_CONTEXT),
        "containers": [server],
        "volumes": [
            {
                "name": "storage",
                "persistentVolumeClaim": {"claimName": spec.storage.claim_name, "readOnly": True},
            },
            copy.deepcopy(SCRATCH_VOLUME),
        ],
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
                "spec": _pod_spec(spec, version, command),
            },
        },
    }


def model_check_pod_name(job: str) -> str:
    return f"{job}-{ROLE_MODEL_CHECK}"


def model_check_pod(
    body: dict[str, Any], spec: TrainingJobSpec, version: int, command: list[str] | None = None
) -> dict[str, Any]:
    """A pod that checks `version` is complete in storage before any serving pod is touched.

    The serving pod itself, with its image, command, volume and version, run once with
    `--check-only`: it sees exactly what the new serving pods would see. Owned by the job.
    """
    pod_spec = _pod_spec(spec, version, command)
    server = pod_spec["containers"][0]
    for key in ("ports", "readinessProbe", "startupProbe", "livenessProbe", "lifecycle"):
        del server[key]
    server["command"].append(CHECK_ONLY_FLAG)
    server["resources"] = copy.deepcopy(MODEL_CHECK_RESOURCES)
    # What it prints on failure is the pod's termination message, which the operator reports.
    server["terminationMessagePolicy"] = "FallbackToLogsOnError"
    pod_spec["restartPolicy"] = "Never"
    metadata = owned_metadata(body, model_check_pod_name(body["metadata"]["name"]))
    metadata["labels"][LABEL_ROLE] = ROLE_MODEL_CHECK
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": pod_spec}


def restored_annotations(served: dict[str, str]) -> dict[str, str | None]:
    """The annotations of a Deployment rolled back to the version it served before."""
    return {
        ANN_VERSION: served.get(ANN_PREVIOUS_VERSION),
        ANN_METRIC: served.get(ANN_PREVIOUS_METRIC),
        ANN_VALUE: served.get(ANN_PREVIOUS_VALUE),
        ANN_JOB: None,
        ANN_PREVIOUS_VERSION: None,
        ANN_PREVIOUS_METRIC: None,
        ANN_PREVIOUS_VALUE: None,
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
                            "env": [{"name": MODEL_VERSION_ENV, "value": str(version)}],
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


def network_policy(spec: TrainingJobSpec, namespace: str, access: Access) -> dict[str, Any]:
    """Only the peers `access` names reach the serving pods; nobody else does."""
    name = spec.serving_deployment
    port = [{"protocol": "TCP", "port": SERVER_PORT}]
    rules: list[dict[str, Any]] = []
    if access.allow_from:
        rules.append({"from": copy.deepcopy(access.allow_from), "ports": port})
    if access.metrics_namespace:
        monitoring = {"kubernetes.io/metadata.name": access.metrics_namespace}
        rules.append({"from": [{"namespaceSelector": {"matchLabels": monitoring}}], "ports": port})
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {**serving_labels(name), **MANAGED_BY},
        },
        "spec": {
            "podSelector": {"matchLabels": serving_labels(name)},
            "policyTypes": ["Ingress"],
            "ingress": rules,
        },
    }


def is_managed(dep: dict[str, Any]) -> bool:
    """Whether the operator created this Deployment (it never touches anyone else's)."""
    return all((dep["metadata"].get("labels") or {}).get(k) == v for k, v in MANAGED_BY.items())


def served_version(dep: dict[str, Any]) -> int | None:
    """The version the Deployment's pod template pins."""
    for container in dep["spec"]["template"]["spec"]["containers"]:
        if container["name"] == SERVER_CONTAINER:
            for env in container.get("env") or []:
                if env["name"] == MODEL_VERSION_ENV and str(env.get("value", "")).isdigit():
                    return int(env["value"])
    return None


def _server(dep: dict[str, Any]) -> dict[str, Any]:
    containers = dep["spec"]["template"]["spec"].get("containers") or []
    return next((c for c in containers if c.get("name") == SERVER_CONTAINER), {})


def model_source(dep: dict[str, Any]) -> tuple[str | None, str | None]:
    """(claim, model directory) the Deployment's server loads its versions from."""
    command = _server(dep).get("command") or []
    flag = MODEL_DIR_FLAG
    directory = command[command.index(flag) + 1] if flag in command[:-1] else None
    claims = [
        v["persistentVolumeClaim"].get("claimName")
        for v in dep["spec"]["template"]["spec"].get("volumes") or []
        if v.get("name") == "storage" and "persistentVolumeClaim" in v
    ]
    return (claims[0] if claims else None), directory


def other_model(spec: TrainingJobSpec, dep: dict[str, Any]) -> str | None:
    """Why the Deployment cannot serve this job's model, if it serves another one.

    Promotion changes only the version, so a Deployment reading another claim or model
    directory would go on serving that model under this job's version number.
    """
    claim, directory = model_source(dep)
    wanted = (spec.storage.claim_name, model_dir(spec.storage.mount_path, spec.model_name))
    if (claim, directory) == wanted:
        return None
    return (
        f"Deployment {spec.serving_deployment} serves {directory} from claim {claim}, "
        f"not this job's {wanted[1]} from claim {wanted[0]}; set spec.promotion.deployment "
        "to a Deployment of its own"
    )

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
    storage_root,
    store_access,
)
from kubetrain.trainer.api.entrypoints import (
    CHECK_ONLY_FLAG,
    GRPC_PORT,
    MODEL_DIR_FLAG,
    MODEL_VERSION_ENV,
    PULL_COMMAND,
    SERVE_COMMAND,
    SERVER_PORT,
    pull_arguments,
    serve_arguments,
)
from kubetrain.trainer.api.layout import model_dir
from kubetrain.trainer.api.spec import REQUESTS_PER_SECOND_METRIC, TrainingJobSpec

SERVER_CONTAINER = "server"
LABEL_SERVING = "kubetrain.io/serving"
ANN_VERSION = "kubetrain.io/model-version"
ANN_METRIC = "kubetrain.io/metric"
ANN_VALUE = "kubetrain.io/metric-value"
ANN_JOB = "kubetrain.io/promoted-by"
ANN_PREVIOUS_VERSION = "kubetrain.io/previous-version"
ANN_PREVIOUS_METRIC = "kubetrain.io/previous-metric"
ANN_PREVIOUS_VALUE = "kubetrain.io/previous-metric-value"
PRESTOP_SECONDS = 10
"""Endpoints drop a terminating pod a moment after it is told to stop; serve until then. Every
node's kube-proxy must have heard of it: 5 s was too short on three busy nodes (a rollout
under load saw refused connections)."""
PROBE_TIMEOUT_SECONDS = 3
"""The server answers probes off its busy paths; this covers a node short of CPU, where the
kubelet's default of 1 s would drop a loaded but healthy pod from its Service."""
ROLE_MODEL_CHECK = "model-check"
PULL_CONTAINER = "model"
MODELS_VOLUME = "models"
MODELS_MOUNT = "/models"
"""With an object store: where the pull init container puts the version the server loads."""
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


def _model_access(spec: TrainingJobSpec) -> tuple[str, list[dict[str, Any]], list[dict[str, Any]]]:
    """Where the server reads its model from: (model directory, volumes, mounts).

    The claim, mounted read-only; or, with an object store, an emptyDir the pull init
    container fills with the pinned version (`pull_container`).
    """
    if spec.storage.uri:
        volume = {"name": MODELS_VOLUME, "emptyDir": {}}
        mount = {"name": MODELS_VOLUME, "mountPath": MODELS_MOUNT, "readOnly": True}
        return f"{MODELS_MOUNT}/{spec.model_name}", [volume], [mount]
    claim = {"claimName": spec.storage.claim_name, "readOnly": True}
    volume = {"name": "storage", "persistentVolumeClaim": claim}
    mount = {"name": "storage", "mountPath": spec.storage.mount_path, "readOnly": True}
    return model_dir(spec.storage.mount_path, spec.model_name), [volume], [mount]


def _container(
    spec: TrainingJobSpec, name: str, command: list[str], version: int
) -> dict[str, Any]:
    """A container of the trainer image pinned to `version`, reaching the job's store."""
    access = store_access(spec)
    container: dict[str, Any] = {
        "name": name,
        "image": spec.workers.image,
        "imagePullPolicy": spec.workers.image_pull_policy,
        "command": command,
        "env": [{"name": MODEL_VERSION_ENV, "value": str(version)}, *access["env"]],
        "securityContext": copy.deepcopy(CONTAINER_SECURITY_CONTEXT),
    }
    if "envFrom" in access:
        container["envFrom"] = access["envFrom"]
    return container


def pull_container(spec: TrainingJobSpec, version: int) -> dict[str, Any]:
    """The init container that copies the pinned version out of the object store."""
    served_dir, _, _ = _model_access(spec)
    source = model_dir(storage_root(spec), spec.model_name)
    container = _container(
        spec, PULL_CONTAINER, [*PULL_COMMAND, *pull_arguments(source, served_dir)], version
    )
    container["resources"] = copy.deepcopy(MODEL_CHECK_RESOURCES)
    container["terminationMessagePolicy"] = "FallbackToLogsOnError"
    container["volumeMounts"] = [
        {"name": MODELS_VOLUME, "mountPath": MODELS_MOUNT},
        dict(SCRATCH_MOUNT),
    ]
    return container


def _pod_spec(spec: TrainingJobSpec, version: int, command: list[str] | None) -> dict[str, Any]:
    """The model server's pod, pinned to `version`: what a serving Deployment runs."""
    served_dir, volumes, mounts = _model_access(spec)
    probe = {
        "httpGet": {"path": "/readyz", "port": SERVER_PORT},
        "periodSeconds": 2,
        "timeoutSeconds": PROBE_TIMEOUT_SECONDS,
        "failureThreshold": 3,
    }
    server = _container(
        spec, SERVER_CONTAINER, [*(command or SERVE_COMMAND), *serve_arguments(served_dir)], version
    )
    server.update(
        {
            "ports": [
                {"name": "http", "containerPort": SERVER_PORT},
                {"name": "grpc", "containerPort": GRPC_PORT},
            ],
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
            "volumeMounts": [*mounts, dict(SCRATCH_MOUNT)],
        }
    )
    pod: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": copy.deepcopy(POD_SECURITY_CONTEXT),
        "containers": [server],
        "volumes": [*volumes, copy.deepcopy(SCRATCH_VOLUME)],
    }
    if spec.storage.uri:
        pod["initContainers"] = [pull_container(spec, version)]
    return pod


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
            "replicas": initial_replicas(spec),
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

    The model server of the serving pods (same image, command, storage and version), run
    once with `--check-only`: on a claim it sees the volume the new serving pods would see;
    with an object store it asks the store directly, as their pull would.
    """
    if spec.storage.uri:
        source, volumes, mounts = model_dir(spec.storage.uri, spec.model_name), [], []
    else:
        source, volumes, mounts = _model_access(spec)
    checker = _container(
        spec,
        SERVER_CONTAINER,
        [*(command or SERVE_COMMAND), *serve_arguments(source), CHECK_ONLY_FLAG],
        version,
    )
    checker["resources"] = copy.deepcopy(MODEL_CHECK_RESOURCES)
    # What it prints on failure is the pod's termination message, which the operator reports.
    checker["terminationMessagePolicy"] = "FallbackToLogsOnError"
    checker["volumeMounts"] = [*mounts, dict(SCRATCH_MOUNT)]
    metadata = owned_metadata(body, model_check_pod_name(body["metadata"]["name"]))
    metadata["labels"][LABEL_ROLE] = ROLE_MODEL_CHECK
    pod_spec = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": copy.deepcopy(POD_SECURITY_CONTEXT),
        "restartPolicy": "Never",
        "containers": [checker],
        "volumes": [*volumes, copy.deepcopy(SCRATCH_VOLUME)],
    }
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


def version_patch(
    spec: TrainingJobSpec, version: int, annotations: dict[str, str | None]
) -> dict[str, Any]:
    """Strategic merge patch that changes the served version and nothing else in the pods
    (in the server and, with an object store, in the init container that pulls it)."""
    pinned = [{"name": MODEL_VERSION_ENV, "value": str(version)}]
    template: dict[str, Any] = {"containers": [{"name": SERVER_CONTAINER, "env": pinned}]}
    if spec.storage.uri:
        template["initContainers"] = [{"name": PULL_CONTAINER, "env": copy.deepcopy(pinned)}]
    return {
        "metadata": {"annotations": annotations},
        "spec": {"template": {"spec": template}},
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
            "ports": [
                {"name": "http", "port": SERVER_PORT, "targetPort": SERVER_PORT},
                {"name": "grpc", "port": GRPC_PORT, "targetPort": GRPC_PORT},
            ],
        },
    }


def network_policy(spec: TrainingJobSpec, namespace: str, access: Access) -> dict[str, Any]:
    """Only the peers `access` names reach the serving pods; nobody else does."""
    name = spec.serving_deployment
    port = [{"protocol": "TCP", "port": p} for p in (SERVER_PORT, GRPC_PORT)]
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


DEFAULT_CPU_TARGET = 70
"""Percent of the CPU request, when an autoscaled job names no target."""


def initial_replicas(spec: TrainingJobSpec) -> int:
    """Replicas the Deployment is created with; an autoscaler owns the number from then on."""
    scaling = spec.promotion.autoscaling
    return scaling.min_replicas if scaling else spec.promotion.replicas


def _owned_by_serving(spec: TrainingJobSpec, namespace: str, kind: str, api: str) -> dict:
    name = spec.serving_deployment
    return {
        "apiVersion": api,
        "kind": kind,
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {**serving_labels(name), **MANAGED_BY},
        },
    }


def disruption_budget(spec: TrainingJobSpec, namespace: str) -> dict[str, Any]:
    """Voluntary disruptions (a node drain) take one serving pod at a time."""
    budget = _owned_by_serving(spec, namespace, "PodDisruptionBudget", "policy/v1")
    budget["spec"] = {
        "maxUnavailable": 1,
        "selector": {"matchLabels": serving_labels(spec.serving_deployment)},
    }
    return budget


def autoscaler(spec: TrainingJobSpec, namespace: str) -> dict[str, Any] | None:
    """The serving Deployment's HorizontalPodAutoscaler, or None without autoscaling."""
    scaling = spec.promotion.autoscaling
    if scaling is None:
        return None
    metrics: list[dict[str, Any]] = []
    cpu = scaling.target_cpu_utilization
    if cpu is None and scaling.target_requests_per_second is None:
        cpu = DEFAULT_CPU_TARGET
    if cpu is not None:
        metrics.append(
            {
                "type": "Resource",
                "resource": {
                    "name": "cpu",
                    "target": {"type": "Utilization", "averageUtilization": cpu},
                },
            }
        )
    if scaling.target_requests_per_second is not None:
        metrics.append(
            {
                "type": "Pods",
                "pods": {
                    "metric": {"name": REQUESTS_PER_SECOND_METRIC},
                    "target": {
                        "type": "AverageValue",
                        "averageValue": f"{scaling.target_requests_per_second:g}",
                    },
                },
            }
        )
    hpa = _owned_by_serving(spec, namespace, "HorizontalPodAutoscaler", "autoscaling/v2")
    hpa["spec"] = {
        "scaleTargetRef": {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": spec.serving_deployment,
        },
        "minReplicas": scaling.min_replicas,
        "maxReplicas": scaling.max_replicas,
        "metrics": metrics,
        "behavior": {
            "scaleDown": {"stabilizationWindowSeconds": scaling.scale_down_stabilization_seconds}
        },
    }
    return hpa


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
    """(claim, model directory) the Deployment's server loads its versions from; with an
    object store, (None, the store directory its init container pulls from)."""
    pod = dep["spec"]["template"]["spec"]
    flag = MODEL_DIR_FLAG
    reader = next(
        (c for c in pod.get("initContainers") or [] if c.get("name") == PULL_CONTAINER),
        _server(dep),
    )
    command = reader.get("command") or []
    directory = command[command.index(flag) + 1] if flag in command[:-1] else None
    claims = [
        v["persistentVolumeClaim"].get("claimName")
        for v in pod.get("volumes") or []
        if v.get("name") == "storage" and "persistentVolumeClaim" in v
    ]
    return (claims[0] if claims else None), directory


def other_model(spec: TrainingJobSpec, dep: dict[str, Any]) -> str | None:
    """Why the Deployment cannot serve this job's model, if it serves another one.

    Promotion changes only the version, so a Deployment reading another claim, store or
    model directory would go on serving that model under this job's version number.
    """
    claim, directory = model_source(dep)
    wanted = (spec.storage.claim_name, model_dir(storage_root(spec), spec.model_name))
    if (claim, directory) == wanted:
        return None

    def where(claim: str | None, directory: str | None) -> str:
        return f"{directory} from claim {claim}" if claim else str(directory)

    return (
        f"Deployment {spec.serving_deployment} serves {where(claim, directory)}, not this "
        f"job's {where(*wanted)}; set spec.promotion.deployment to a Deployment of its own"
    )

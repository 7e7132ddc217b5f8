"""A job's TensorBoard on the cluster: when it should exist, and its Deployment, Service and
NetworkPolicy.

They are owned by the job, so they go with it (no finalizer), and they stay after training
ends: curves are read afterwards. Created once when `spec.tensorboard.enabled` and recorded in
`status.tensorboard`, so a reconcile costs no request for them; removed when the job turns it
off. The pod runs `kubetrain tensorboard`, which reads a claim directly and follows an object
store into a local copy (TensorBoard here reads local files only), the way it does on a
laptop. Pure functions; the handler does the API calls.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

from kubetrain.operator.manifests import (
    CONTAINER_SECURITY_CONTEXT,
    LABEL_JOB,
    LABEL_ROLE,
    POD_SECURITY_CONTEXT,
    SCRATCH_MOUNT,
    SCRATCH_VOLUME,
    container_resources,
    owned_metadata,
    storage_paths,
    store_access,
)
from kubetrain.trainer.api.entrypoints import (
    TENSORBOARD_COMMAND,
    TENSORBOARD_PORT,
    tensorboard_arguments,
)
from kubetrain.trainer.api.layout import Layout
from kubetrain.trainer.api.spec import TENSORBOARD_SUFFIX, TrainingJob, TrainingJobSpec
from kubetrain.trainer.api.status import Reason

ROLE = "tensorboard"
CONTAINER = "tensorboard"
CREATE = "create"
DELETE = "delete"
Action = Literal["create", "delete"]
KINDS = ("Deployment", "Service", "NetworkPolicy")
"""What a job's TensorBoard is made of; each bears `name(job)`."""
Event = tuple[str, str, str]


def name(job: str) -> str:
    """The Deployment, Service and NetworkPolicy of job `job`'s TensorBoard."""
    return f"{job}{TENSORBOARD_SUFFIX}"


def endpoint(job: str) -> dict[str, Any]:
    """`status.tensorboard`: what `kubectl port-forward svc/<service> <port>` needs."""
    return {"service": name(job), "port": TENSORBOARD_PORT}


def has_storage(spec: TrainingJobSpec) -> bool:
    """Whether the chief's curves outlive its pod where another pod can read them."""
    return bool(spec.storage.claim_name or spec.storage.uri)


def action(spec: TrainingJobSpec, status: dict[str, Any]) -> Action | None:
    """Whether the job's TensorBoard must be created or deleted now (None: it is as asked).

    Status records it once created, whatever the job's phase: a finished job keeps it. A
    create that failed left no record, so it is tried again. Without shared storage there is
    nothing to draw, so nothing is created.
    """
    recorded = status.get("tensorboard") is not None
    if spec.tensorboard.enabled and not recorded and has_storage(spec):
        return CREATE
    if not spec.tensorboard.enabled and recorded:
        return DELETE
    return None


def no_storage_event(job: str) -> Event:
    """Why a job asking for TensorBoard has none (posted when its spec changes)."""
    return (
        "Warning",
        Reason.TENSORBOARD_FAILED,
        f"spec.tensorboard.enabled: job {job} has no storage.claimName or storage.uri (and the "
        "operator no default storage), so its curves stay in its pods; no TensorBoard",
    )


def done(job: str, act: Action) -> tuple[dict[str, Any], list[Event]]:
    """(status update, events) once `act` has been carried out."""
    if act == CREATE:
        where = endpoint(job)
        forward = f"kubectl port-forward svc/{where['service']} {where['port']}"
        return {"tensorboard": where}, [
            ("Normal", Reason.TENSORBOARD_CREATED, f"TensorBoard {name(job)}: {forward}")
        ]
    return {"tensorboard": None}, [
        ("Normal", Reason.TENSORBOARD_DELETED, f"TensorBoard {name(job)} removed")
    ]


def failed(job: str, act: Action, message: str) -> Event:
    """The Event of an API error while carrying out `act` (it is tried again)."""
    doing = "creating" if act == CREATE else "removing"
    return (
        "Warning",
        Reason.TENSORBOARD_FAILED,
        f"{doing} TensorBoard {name(job)}: {message}; trying again",
    )


def selector(job: str) -> dict[str, str]:
    return {LABEL_JOB: job, LABEL_ROLE: ROLE}


def log_dir(spec: TrainingJobSpec, job: str) -> str:
    """Where the chief writes the job's curves: on the claim's mount, or in the store."""
    workdir, models = storage_paths(spec, job)
    return Layout(workdir=workdir, model_root=models).tensorboard


def _metadata(body: dict[str, Any]) -> dict[str, Any]:
    metadata = owned_metadata(body, name(body["metadata"]["name"]))
    metadata["labels"].update({LABEL_ROLE: ROLE, "app.kubernetes.io/component": ROLE})
    return metadata


def _pod_spec(spec: TrainingJobSpec, job: str) -> dict[str, Any]:
    """TensorBoard's pod: the trainer image (which has it), locked down like every other pod.

    A claim is mounted read-only; with an object store there is no volume, and the scratch
    `/tmp` holds the copy `kubetrain tensorboard` keeps up to date.
    """
    volumes: list[dict[str, Any]] = [copy.deepcopy(SCRATCH_VOLUME)]
    mounts: list[dict[str, Any]] = [dict(SCRATCH_MOUNT)]
    if spec.storage.claim_name and not spec.storage.uri:
        claim = {"claimName": spec.storage.claim_name, "readOnly": True}
        volumes.insert(0, {"name": "storage", "persistentVolumeClaim": claim})
        mounts.insert(
            0, {"name": "storage", "mountPath": spec.storage.mount_path, "readOnly": True}
        )
    access = store_access(spec)
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": spec.workers.image,
        "imagePullPolicy": spec.workers.image_pull_policy,
        "command": [*TENSORBOARD_COMMAND, *tensorboard_arguments(log_dir(spec, job))],
        "env": [{"name": "PYTHONUNBUFFERED", "value": "1"}, *access["env"]],
        "ports": [{"name": "http", "containerPort": TENSORBOARD_PORT}],
        # TensorBoard imports TensorFlow before it listens: ready when it answers.
        "readinessProbe": {
            "httpGet": {"path": "/", "port": TENSORBOARD_PORT},
            "periodSeconds": 5,
            "timeoutSeconds": 3,
        },
        "resources": container_resources(spec.tensorboard.resources),
        "volumeMounts": mounts,
        "securityContext": copy.deepcopy(CONTAINER_SECURITY_CONTEXT),
    }
    if "envFrom" in access:
        container["envFrom"] = access["envFrom"]
    return {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": copy.deepcopy(POD_SECURITY_CONTEXT),
        "containers": [container],
        "volumes": volumes,
    }


def deployment(body: dict[str, Any], job: TrainingJob) -> dict[str, Any]:
    """One TensorBoard pod, replaced by the Deployment if it or its node goes."""
    name_ = job.metadata.name
    metadata = _metadata(body)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata,
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": selector(name_)},
            # One reader of curves is enough: the new pod need not overlap the old one.
            "strategy": {"type": "Recreate"},
            "template": {
                "metadata": {"labels": dict(metadata["labels"])},
                "spec": _pod_spec(job.spec, name_),
            },
        },
    }


def service(body: dict[str, Any]) -> dict[str, Any]:
    job = body["metadata"]["name"]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(body),
        "spec": {
            "selector": selector(job),
            "ports": [{"name": "http", "port": TENSORBOARD_PORT, "targetPort": TENSORBOARD_PORT}],
        },
    }


def network_policy(body: dict[str, Any], allow_from: list[dict[str, Any]]) -> dict[str, Any]:
    """Only `allow_from` (the peers the serving pods admit) reaches TensorBoard's port.

    Ingress only, as for serving: the pod reaches its store and DNS freely. `kubectl
    port-forward` is not subject to it (the kubelet connects inside the pod).
    """
    job = body["metadata"]["name"]
    port = [{"protocol": "TCP", "port": TENSORBOARD_PORT}]
    rules = [{"from": copy.deepcopy(allow_from), "ports": port}] if allow_from else []
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(body),
        "spec": {
            "podSelector": {"matchLabels": selector(job)},
            "policyTypes": ["Ingress"],
            "ingress": rules,
        },
    }


def objects(
    body: dict[str, Any], job: TrainingJob, allow_from: list[dict[str, Any]] | None
) -> list[dict[str, Any]]:
    """What to create, in order: the NetworkPolicy (None: policies are off) before any pod
    listens, the Service, the Deployment."""
    policy = [network_policy(body, allow_from)] if allow_from is not None else []
    return [*policy, service(body), deployment(body, job)]

"""The Kubernetes objects a TrainingJob owns: its headless Service, the NetworkPolicy that
keeps everyone else off its workers, and its worker pods.

Pure functions of the job; the handlers create what these return. Names are deterministic
(`<job>-worker-<i>`, `<job>-workers`) so that creating twice is a harmless 409, never a
duplicate.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any

from kubetrain.trainer.api import tfconfig
from kubetrain.trainer.api.entrypoints import (
    ATTEMPT_ENV,
    CPUS_ENV,
    DATA_CACHE_ENV,
    JOB_ENV,
    WORKER_COMMAND,
    s3_environment,
    worker_arguments,
)
from kubetrain.trainer.api.layout import job_workdir, model_root
from kubetrain.trainer.api.spec import ResourceRequirements, TrainingJob, TrainingJobSpec

LABEL_JOB = "kubetrain.io/job"
LABEL_ROLE = "kubetrain.io/role"
LABEL_INDEX = "kubetrain.io/worker-index"
LABEL_ATTEMPT = "kubetrain.io/attempt"
MANAGED_BY = {"app.kubernetes.io/managed-by": "kubetrain-operator"}

WORKER_PORT = 2222
WORKER_CONTAINER = "worker"
DATA_MOUNT = "/data"
# TensorFlow catches SIGTERM and trains on, so a short grace period is all SIGTERM buys.
WORKER_GRACE_SECONDS = 5
POD_SECURITY_CONTEXT: dict[str, Any] = {
    "runAsNonRoot": True,
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY_CONTEXT: dict[str, Any] = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}
"""With POD_SECURITY_CONTEXT, what every pod the operator creates (workers, model server)
needs to be admitted where Pod Security `restricted` is enforced."""
SCRATCH_VOLUME = {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}}
SCRATCH_MOUNT = {"name": "tmp", "mountPath": "/tmp"}
"""The one writable place besides the storage: the root filesystem is read-only."""


@dataclass(frozen=True)
class WorkerOptions:
    """Operator-wide choices about worker pods (not per job)."""

    command: list[str] = field(default_factory=lambda: list(WORKER_COMMAND))
    """Entrypoint before `--workdir/--model-root`; another image may need another one."""


def container_resources(resources: ResourceRequirements) -> dict[str, dict[str, str]]:
    """A container's `resources`, leaving out what the spec leaves empty."""
    return {k: v for k, v in resources.model_dump().items() if v}


def service_name(job: str) -> str:
    return f"{job}-workers"


def pod_name(job: str, index: int) -> str:
    return f"{job}-worker-{index}"


def worker_address(job: str, namespace: str, index: int) -> str:
    """The stable DNS name a worker is reached at: hostname + subdomain of a headless Service."""
    return f"{pod_name(job, index)}.{service_name(job)}.{namespace}.svc:{WORKER_PORT}"


def tf_config(job: str, namespace: str, replicas: int, index: int) -> str:
    """Worker `index`'s TF_CONFIG, naming its peers by their stable DNS names."""
    addresses = [worker_address(job, namespace, i) for i in range(replicas)]
    return tfconfig.tf_config(addresses, index)


def owner_reference(body: dict[str, Any]) -> dict[str, Any]:
    """Children are garbage-collected with their job; no finalizer needed for them."""
    return {
        "apiVersion": body["apiVersion"],
        "kind": body["kind"],
        "name": body["metadata"]["name"],
        "uid": body["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def job_labels(job: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "kubetrain", LABEL_JOB: job, **MANAGED_BY}


def job_document(job: TrainingJob) -> str:
    """The job as the worker reads it from `JOB_ENV`: name, namespace and full spec."""
    doc = job.model_dump(mode="json", by_alias=True, exclude_none=True, exclude={"status"})
    doc["metadata"] = {
        k: v for k, v in (("name", job.metadata.name), ("namespace", job.metadata.namespace)) if v
    }
    return json.dumps(doc, separators=(",", ":"), sort_keys=True)


def storage_root(spec: TrainingJobSpec) -> str:
    """Where pods find the job's storage: its object store, or the volume's mount."""
    return spec.storage.uri or spec.storage.mount_path


def storage_paths(spec: TrainingJobSpec, job: str) -> tuple[str, str]:
    """(workdir, model root) in the job's storage."""
    root = storage_root(spec)
    return job_workdir(root, job), model_root(root)


DATA_CACHE = "/tmp/kubetrain-data"
"""Where a worker caches a remote dataset: the scratch volume (the root is read-only)."""


def store_access(spec: TrainingJobSpec) -> dict[str, Any]:
    """Container fields that reach the job's object store: its S3 settings as the standard
    variables, and the Secret it names as environment (the operator never reads it). None
    without an object store."""
    if not spec.storage.uri:
        return {"env": []}
    env = [{"name": k, "value": v} for k, v in s3_environment(spec.storage.s3).items()]
    fields: dict[str, Any] = {"env": env}
    if spec.storage.secret_name:
        fields["envFrom"] = [{"secretRef": {"name": spec.storage.secret_name}}]
    return fields


def owned_metadata(body: dict[str, Any], name: str) -> dict[str, Any]:
    """Metadata of an object the job owns: in its namespace, labelled with it, collected with it."""
    return {
        "name": name,
        "namespace": body["metadata"]["namespace"],
        "labels": job_labels(body["metadata"]["name"]),
        "ownerReferences": [owner_reference(body)],
    }


def headless_service(body: dict[str, Any]) -> dict[str, Any]:
    job = body["metadata"]["name"]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": owned_metadata(body, service_name(job)),
        "spec": {
            "clusterIP": "None",
            # Workers look each other up before any of them is ready.
            "publishNotReadyAddresses": True,
            "selector": {LABEL_JOB: job, LABEL_ROLE: "worker"},
            "ports": [{"name": "tf", "port": WORKER_PORT, "targetPort": WORKER_PORT}],
        },
    }


def network_policy_name(job: str) -> str:
    return f"{job}-workers"


def worker_network_policy(body: dict[str, Any]) -> dict[str, Any]:
    """Only this job's own workers may reach its workers' TensorFlow port.

    The gRPC server behind it runs any op it is sent, inside the chief: whoever reaches it
    can read the worker's environment, write files, poison the exported model or crash the
    job. The workers listen on nothing else, so every other connection is refused.
    """
    job = body["metadata"]["name"]
    workers = {"matchLabels": {LABEL_JOB: job, LABEL_ROLE: "worker"}}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": owned_metadata(body, network_policy_name(job)),
        "spec": {
            "podSelector": workers,
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [{"podSelector": workers}],
                    "ports": [{"protocol": "TCP", "port": WORKER_PORT}],
                }
            ],
        },
    }


NODE_TOPOLOGY_KEY = "kubernetes.io/hostname"


def spread_constraint(job: str, attempt: int, spec: TrainingJobSpec) -> dict[str, Any]:
    """One worker per node where possible (or required): this attempt's workers only, so the
    pods of an attempt on their way out do not count."""
    return {
        "maxSkew": 1,
        "topologyKey": NODE_TOPOLOGY_KEY,
        "whenUnsatisfiable": "DoNotSchedule"
        if spec.workers.spread == "Required"
        else "ScheduleAnyway",
        "labelSelector": {
            "matchLabels": {LABEL_JOB: job, LABEL_ROLE: "worker", LABEL_ATTEMPT: str(attempt)}
        },
    }


def worker_pod(
    body: dict[str, Any],
    job: TrainingJob,
    index: int,
    attempt: int,
    options: WorkerOptions = WorkerOptions(),
) -> dict[str, Any]:
    spec = job.spec
    name = job.metadata.name
    namespace = body["metadata"]["namespace"]
    workdir, models = storage_paths(spec, name)
    volumes, mounts = [copy.deepcopy(SCRATCH_VOLUME)], [dict(SCRATCH_MOUNT)]
    if not spec.storage.uri:  # an object store needs no volume
        if spec.storage.claim_name:
            storage = {"persistentVolumeClaim": {"claimName": spec.storage.claim_name}}
        else:  # a quick trial: checkpoints do not outlive the pods
            storage = {"emptyDir": {}}
        volumes.insert(0, {"name": "storage", **storage})
        mounts.insert(0, {"name": "storage", "mountPath": spec.storage.mount_path})
    access = store_access(spec)
    if spec.storage.data_claim_name:
        volumes.append(
            {
                "name": "data",
                "persistentVolumeClaim": {
                    "claimName": spec.storage.data_claim_name,
                    "readOnly": True,
                },
            }
        )
        mounts.append({"name": "data", "mountPath": DATA_MOUNT, "readOnly": True})
    container: dict[str, Any] = {
        "name": WORKER_CONTAINER,
        "image": spec.workers.image,
        "imagePullPolicy": spec.workers.image_pull_policy,
        "command": [*options.command, *worker_arguments(workdir, models)],
        "env": [
            {
                "name": tfconfig.ENV,
                "value": tf_config(name, namespace, spec.workers.replicas, index),
            },
            {"name": JOB_ENV, "value": job_document(job)},
            {"name": ATTEMPT_ENV, "value": str(attempt)},
            # Its CPU limit in whole cores, rounded up (the node's cores when it has none).
            {
                "name": CPUS_ENV,
                "valueFrom": {
                    "resourceFieldRef": {
                        "containerName": WORKER_CONTAINER,
                        "resource": "limits.cpu",
                        "divisor": "1",
                    }
                },
            },
            {"name": "PYTHONUNBUFFERED", "value": "1"},
            {"name": DATA_CACHE_ENV, "value": DATA_CACHE},
            *access["env"],
        ],
        **({"envFrom": access["envFrom"]} if "envFrom" in access else {}),
        "ports": [{"name": "tf", "containerPort": WORKER_PORT}],
        "resources": container_resources(spec.workers.resources),
        "volumeMounts": mounts,
        "securityContext": copy.deepcopy(CONTAINER_SECURITY_CONTEXT),
        # A worker that dies without writing its message still leaves its last log lines.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    pod_spec: dict[str, Any] = {
        "hostname": pod_name(name, index),
        "subdomain": service_name(name),
        "restartPolicy": "Never",  # the operator restarts all workers together
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": copy.deepcopy(POD_SECURITY_CONTEXT),
        "terminationGracePeriodSeconds": WORKER_GRACE_SECONDS,
        "containers": [container],
        "volumes": volumes,
    }
    if spec.workers.spread != "None":
        pod_spec["topologySpreadConstraints"] = [spread_constraint(name, attempt, spec)]
    if spec.workers.node_selector:
        pod_spec["nodeSelector"] = dict(spec.workers.node_selector)
    if spec.workers.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in spec.workers.tolerations]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name(name, index),
            "namespace": namespace,
            "labels": {
                **job_labels(name),
                LABEL_ROLE: "worker",
                LABEL_INDEX: str(index),
                LABEL_ATTEMPT: str(attempt),
                "app.kubernetes.io/component": "worker",
            },
            "ownerReferences": [owner_reference(body)],
        },
        "spec": pod_spec,
    }


def summarize_pod(body: dict[str, Any], container: str = WORKER_CONTAINER) -> dict[str, Any]:
    """What the reconciler needs to know about a worker pod (or the pod running `container`),
    small enough to index."""
    meta = body.get("metadata", {})
    labels = meta.get("labels", {})
    status = body.get("status") or {}
    exit_code = message = reason = None
    for cs in status.get("containerStatuses") or []:
        if cs.get("name") == container:
            terminated = (cs.get("state") or {}).get("terminated")
            if terminated:
                exit_code = terminated.get("exitCode")
                message = terminated.get("message")
                reason = terminated.get("reason")
    owner = next(
        (ref.get("uid") for ref in meta.get("ownerReferences") or [] if ref.get("controller")),
        None,
    )
    ready = next(
        (c.get("status") for c in status.get("conditions") or [] if c.get("type") == "Ready"),
        None,
    )
    return {
        "name": meta.get("name"),
        "owner": owner,
        "index": int(labels.get(LABEL_INDEX, -1)),
        "attempt": int(labels.get(LABEL_ATTEMPT, 0)),
        "phase": status.get("phase", "Pending"),
        "exitCode": exit_code,
        "message": (message or status.get("message") or "").strip(),
        "reason": reason or status.get("reason"),
        "created": meta.get("creationTimestamp"),
        "deletionTimestamp": meta.get("deletionTimestamp"),
        "node": (body.get("spec") or {}).get("nodeName"),
        "ready": ready == "True",
    }

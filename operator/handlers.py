"""kopf handlers: observe, call the pure planners, carry out their actions.

    kopf run -m kubetrain.operator.handlers --all-namespaces

One timer per TrainingJob reconciles it level-triggered from its status and an in-memory
index of worker pods (one cluster-wide watch, no per-job list requests). All state lives in
`status`, so an operator restarted mid-job picks up where it stopped.
"""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime
from typing import Any

import kopf
from kubetrain.operator import promotion, reconcile, serving
from kubetrain.operator.kube import (
    COLLECTIONS,
    ApiError,
    Kube,
    deployments_path,
    in_cluster,
    network_policies_path,
    node_path,
    pods_path,
    pvc_path,
    services_path,
    trainingjob_path,
)
from kubetrain.operator.manifests import (
    LABEL_JOB,
    LABEL_ROLE,
    WORKER_CONTAINER,
    WorkerOptions,
    headless_service,
    pod_name,
    summarize_pod,
    worker_network_policy,
    worker_pod,
)
from kubetrain.operator.settings import SETTINGS
from kubetrain.operator.status import epoch_records, progress_update, replace_maps, result_update
from kubetrain.trainer.api.records import parse_result
from kubetrain.trainer.api.spec import (
    API_GROUP,
    API_VERSION,
    PLURAL,
    SpecError,
    TrainingJob,
    parse_job,
)
from kubetrain.trainer.api.status import Phase, Reason

_kube: Kube | None = None


def kube() -> Kube:
    """The client `configure` builds at startup; kopf runs no other handler before it."""
    if _kube is None:
        raise RuntimeError("the API client is built by the startup handler, not yet run")
    return _kube


class _QuietTimers(logging.Filter):
    """Drop kopf's "Timer ... succeeded." line: at one tick per job every 2 s it is noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith("Timer ") and message.endswith(" succeeded."))


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In a pod its service account; elsewhere the kubeconfig KUBECONFIG names right now.

    The same order as `Kube`. kopf's default login goes through the kubernetes client, which
    reads KUBECONFIG once at import time, so a KUBECONFIG set later (as a test session does)
    would go unseen.
    """
    info = kopf.login_with_service_account(**kwargs) if in_cluster() else None
    return info or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # Keep kopf's bookkeeping in annotations: the status schema is structural, and pruned.
    settings.persistence.finalizer = f"{API_GROUP}/operator"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=API_GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=API_GROUP, key="last-handled-configuration"
    )
    # Watches end and restart on the server's side before any proxy can silently drop them.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10
    settings.execution.max_workers = SETTINGS.threads
    # The tick that deletes a job (ttlSecondsAfterFinished) is still running when kopf sees the
    # deletion, so kopf keeps its finalizer until it polls the timer again: by default after
    # 60 s, which would leave the job Terminating that long.
    settings.background.cancellation_polling = 1.0
    settings.posting.level = logging.INFO
    objects = logging.getLogger("kopf.objects")
    if not any(isinstance(f, _QuietTimers) for f in objects.filters):
        objects.addFilter(_QuietTimers())
    global _kube
    _kube = Kube()  # fresh credentials for every start (also of an in-process operator)


@kopf.index("pods", labels={LABEL_ROLE: "worker", LABEL_JOB: kopf.PRESENT})
def worker_pods(
    body: kopf.Body, namespace: str, labels: kopf.Labels, **_: Any
) -> dict[tuple[str, str], dict[str, Any]]:
    return {(namespace, labels[LABEL_JOB]): summarize_pod(dict(body))}


def _list_pods(namespace: str, name: str) -> list[dict[str, Any]]:
    """Authoritative pods of a job, for when the index may lag behind the API server."""
    selector = f"{LABEL_JOB}={name},{LABEL_ROLE}=worker"
    items = kube().request("GET", pods_path(namespace), query={"labelSelector": selector})
    return [summarize_pod(item) for item in items["items"]]


def _lost_nodes(pods: list[dict[str, Any]]) -> frozenset[str]:
    """The nodes of the job's pods that are lost: asked about only when a pod is not Ready."""
    lost = set()
    for node in reconcile.node_suspects(pods):
        try:
            if reconcile.node_lost(kube().get(node_path(node))):
                lost.add(node)
        except ApiError as err:  # not allowed to read nodes: pods still fail on their own
            logging.getLogger(__name__).warning("cannot read node %s: %s", node, err)
    return frozenset(lost)


def _problem(job: TrainingJob, namespace: str) -> reconcile.Problem | None:
    """What the schema cannot check: the volumes the pods need must exist."""
    for field, claim in (
        ("spec.storage.claimName", job.spec.storage.claim_name),
        ("spec.storage.dataClaimName", job.spec.storage.data_claim_name),
    ):
        if claim and kube().get(pvc_path(namespace, claim)) is None:
            return reconcile.Problem(
                Reason.CLAIM_NOT_FOUND,
                f"{field}: PersistentVolumeClaim {claim!r} does not exist in {namespace}; "
                "waiting for it",
                permanent=False,
            )
    return None


def _create_workers(
    body: dict[str, Any], job: TrainingJob, indexes: list[int], attempt: int
) -> reconcile.Problem | None:
    namespace = body["metadata"]["namespace"]
    k = kube()
    try:
        if SETTINGS.network_policies:  # before any worker listens
            k.create(network_policies_path(namespace), worker_network_policy(body))
        k.create(services_path(namespace), headless_service(body))
        for index in indexes:
            pod = worker_pod(body, job, index, attempt, WorkerOptions(SETTINGS.worker_command))
            k.create(pods_path(namespace), pod)
    except ApiError as err:
        problem = reconcile.creation_problem(err.status, err.message)
        if problem is None:
            raise kopf.TemporaryError(f"creating worker pods: {err}", delay=5) from err
        return problem
    return None


def chief_log_query() -> dict[str, Any]:
    """A bounded tail of the chief's log: the last lines, and never more than a set size."""
    return {
        "container": WORKER_CONTAINER,
        "tailLines": SETTINGS.log_tail_lines,
        "limitBytes": SETTINGS.log_limit_bytes,
    }


def _progress(namespace: str, name: str, status: dict[str, Any], metric: str) -> dict[str, Any]:
    try:
        text = kube().request(
            "GET",
            pods_path(namespace, pod_name(name, 0)) + "/log",
            query=chief_log_query(),
            raw=True,
        )
    except ApiError:
        return {}  # the log is not there yet (container starting); next tick
    return progress_update(status, epoch_records(text), metric)


def _promote(
    body: dict[str, Any], job: TrainingJob, status: dict[str, Any], now: datetime
) -> tuple[dict[str, Any], list[tuple[str, str, str]]]:
    """Start or follow the rollout of the job's model; (status update, events)."""
    namespace = body["metadata"]["namespace"]
    name = job.spec.serving_deployment
    path = deployments_path(namespace, name)
    check_path = pods_path(namespace, serving.model_check_pod_name(body["metadata"]["name"]))
    k = kube()
    check = k.get(check_path) if status.get("phase") == Phase.SUCCEEDED else None
    step = promotion.plan(
        job.spec,
        namespace,
        body["metadata"]["uid"],
        status,
        k.get(path),
        now,
        SETTINGS.serving_command,
        SETTINGS.serving_access(),
        summarize_pod(check, serving.SERVER_CONTAINER) if check else None,
    )
    if step.check is not None:
        pod = serving.model_check_pod(body, job.spec, step.check, SETTINGS.serving_command)
        k.create(pods_path(namespace), pod)
    for obj in step.create:
        k.create(COLLECTIONS[obj["kind"]](namespace), obj)
    if step.patch is not None:
        k.strategic_patch(path, step.patch)
    if step.remove:  # every serving object bears the Deployment's name
        for collection in COLLECTIONS.values():
            k.delete(collection(namespace, name))
    if step.remove_check:  # once its answer has been acted on
        k.delete(check_path)
    return step.status, step.events


@kopf.timer(API_GROUP, API_VERSION, PLURAL, interval=SETTINGS.interval)
def reconcile_job(
    body: kopf.Body,
    name: str,
    namespace: str,
    patch: kopf.Patch,
    worker_pods: kopf.Index,
    logger: logging.Logger,
    **_: Any,
) -> None:
    """Level-triggered: every tick re-derives the next step from status and pods."""
    raw = dict(body)
    status = dict(body.status)
    now = datetime.now(UTC)
    try:
        job = parse_job(
            {
                "apiVersion": raw["apiVersion"],
                "kind": raw["kind"],
                "metadata": {"name": name, "namespace": namespace},
                "spec": dict(body.spec),
            }
        )
        job = SETTINGS.job_defaults.apply(job)
    except SpecError as err:
        update = reconcile.reject(status, Reason.INVALID_SPEC, str(err), now)
        if update.events:
            for type_, reason, message in update.events:
                kopf.event(body, type=type_, reason=reason, message=message)
        patch.status.update(update.status)
        return

    restarts = int(status.get("restarts") or 0)
    uid = raw["metadata"]["uid"]
    pods = reconcile.owned_pods(list(worker_pods.get((namespace, name), [])), uid)
    if status.get("launchedAttempt") == restarts and not reconcile.is_finished(job.spec, status):
        seen = {p["index"] for p in pods if p["attempt"] == restarts}
        if len(seen) < job.spec.workers.replicas:
            pods = reconcile.owned_pods(_list_pods(namespace, name), uid)
    problem = None
    if status.get("phase") in (None, Phase.PENDING) and status.get("launchedAttempt") is None:
        problem = _problem(job, namespace)
    generation = raw["metadata"].get("generation")
    lost = _lost_nodes(pods)
    plan = reconcile.plan(job.spec, name, status, pods, now, problem, generation, lost)

    if plan.create:
        problem = _create_workers(raw, job, plan.create, int(plan.status.get("restarts", restarts)))
        if problem is not None:
            plan = reconcile.plan(job.spec, name, status, pods, now, problem, generation, lost)
    succeeded_now = (
        plan.status.get("phase") == Phase.SUCCEEDED and status.get("phase") != Phase.SUCCEEDED
    )
    if plan.read_progress:
        merged = {**status, **plan.status}
        progress = _progress(namespace, name, merged, job.spec.training.metric)
        plan.status.update({k: v for k, v in progress.items() if merged.get(k) != v})
    if succeeded_now:
        chief = next((p for p in pods if p["index"] == 0 and p["phase"] == "Succeeded"), None)
        result = parse_result(chief["message"] if chief else None)
        if result is not None:
            plan.status.update(result_update(result))
    for pod, grace in plan.delete:
        kube().delete(pods_path(namespace, pod), grace_seconds=grace)
    if plan.promote:
        merged = {**status, **plan.status}
        try:
            update, events = _promote(raw, job, merged, now)
        except ApiError as err:  # a 409 among them: another promotion changed the Deployment
            refused = promotion.api_refused(job.spec, merged, err.status, err.message, now)
            update, events = refused.status, refused.events
        plan.status.update(update)
        plan.events.extend(events)
    if plan.delete_job:
        logger.info("ttlSecondsAfterFinished passed; deleting the TrainingJob")
        kube().delete(trainingjob_path(namespace, name))
    for type_, reason, message in plan.events:
        kopf.event(body, type=type_, reason=reason, message=message)
    if plan.status:
        patch.status.update(replace_maps(status, plan.status))


def main() -> None:
    """`python -m kubetrain.operator`: run over all namespaces (or only $WATCH_NAMESPACE)."""
    args = ["run", "--standalone", "-m", __name__]
    namespace = os.environ.get("WATCH_NAMESPACE")
    args += ["--namespace", namespace] if namespace else ["--all-namespaces"]
    if SETTINGS.liveness_port:
        args += ["--liveness", f"http://0.0.0.0:{SETTINGS.liveness_port}/healthz"]
    from kopf import cli

    cli.main(args=args, standalone_mode=True)

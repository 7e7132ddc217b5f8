"""kopf handlers: observe, call the pure planners, carry out their actions.

    kopf run -m kubetrain.operator.handlers --all-namespaces

Event-driven: a TrainingJob, or one of its pods, changing puts the job's key on a work queue,
and a pool of worker threads reconciles it level-triggered from its status (read fresh) and an
in-memory index of worker pods (one cluster-wide watch, no per-job list requests). Only where
time itself is the trigger (a deadline, a TTL, a running chief's progress, a rollout) does the
planner ask to look again, at that moment. kopf's own handlers are watchers and an index, which
need no finalizer: a job can be deleted while no operator runs. All state lives in `status`,
so an operator restarted mid-job picks up where it stopped.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import kopf
from kubetrain.operator import metrics, promotion, reconcile, serving, tensorboard, trials
from kubetrain.operator.kube import (
    COLLECTIONS,
    ApiError,
    Kube,
    deployments_path,
    events_path,
    in_cluster,
    network_policies_path,
    node_path,
    pods_path,
    pvc_path,
    services_path,
    trainingjob_path,
)
from kubetrain.operator.leader import LEASE_NAME, Elector, Timing
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
from kubetrain.operator.status import (
    epoch_records,
    now_iso,
    progress_update,
    replace_maps,
    result_update,
)
from kubetrain.operator.workqueue import WorkQueue
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

log = logging.getLogger("kubetrain.operator")

Key = tuple[str, str]
"""(namespace, name) of a TrainingJob: what the work queue holds."""


class _Runtime:
    """What one run of the operator builds at startup and tears down at cleanup."""

    def __init__(self, worker_pods: kopf.Index) -> None:
        self.kube = Kube()  # fresh credentials for every start (also of an in-process operator)
        self.queue = WorkQueue()
        self.worker_pods = worker_pods
        self.elector: Elector | None = None
        self.threads: list[threading.Thread] = []


_runtime: _Runtime | None = None


def runtime() -> _Runtime:
    """What `configure` builds at startup; kopf runs no other handler before it."""
    if _runtime is None:
        raise RuntimeError("the operator's runtime is built by the startup handler, not yet run")
    return _runtime


def kube() -> Kube:
    return runtime().kube


WATCHERS = ("job_changed", "pod_changed")


class _QuietWatchers(logging.Filter):
    """Drop kopf's "Handler 'job_changed' succeeded." lines: one per watch event is noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (
            message.endswith(" succeeded.") and any(f"'{name}'" in message for name in WATCHERS)
        )


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
def configure(settings: kopf.OperatorSettings, worker_pods: kopf.Index, **_: Any) -> None:
    """kopf's settings, the API client, the reconcile threads and the leader election.

    Returns at once, also on a standby: kopf serves /healthz only after startup handlers.
    """
    # The timer of earlier versions needed this finalizer. No handler needs one now, so kopf
    # removes it from every job it lists: jobs of an upgraded operator can be deleted freely.
    settings.persistence.finalizer = f"{API_GROUP}/operator"
    # Keep kopf's bookkeeping (if ever) in annotations: the status schema is structural.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=API_GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=API_GROUP, key="last-handled-configuration"
    )
    # Watches end and restart on the server's side before any proxy can silently drop them.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10
    settings.posting.level = logging.INFO
    objects = logging.getLogger("kopf.objects")
    if not any(isinstance(f, _QuietWatchers) for f in objects.filters):
        objects.addFilter(_QuietWatchers())
    global _runtime
    _runtime = rt = _Runtime(worker_pods)
    metrics.track(rt.queue.depth, lambda: rt.elector is None or rt.elector.is_leader())
    if SETTINGS.leader_election:
        identity = f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"
        timing = Timing.scaled(SETTINGS.lease_duration)
        rt.elector = Elector(rt.kube, SETTINGS.lease_namespace, identity, timing, _stop_acting)
        where = f"{SETTINGS.lease_namespace}/{LEASE_NAME}"
        log.info("waiting for the Lease %s as %s", where, identity)
        rt.elector.start()
    for i in range(SETTINGS.threads):
        thread = threading.Thread(target=_work, args=(rt,), name=f"reconcile-{i}", daemon=True)
        rt.threads.append(thread)
        thread.start()


@kopf.on.cleanup()
def stop(**_: Any) -> None:
    """Let in-flight reconciles finish, then hand the Lease over (a standby need not wait)."""
    rt = runtime()
    rt.queue.shut_down()
    for thread in rt.threads:
        thread.join(timeout=30)
    if rt.elector is not None:
        rt.elector.release()


@kopf.on.startup()
def serve_metrics(memo: kopf.Memo, **_: Any) -> None:
    """Prometheus metrics on every replica, the leader's and the standbys'.

    A port that is taken costs the metrics, not the reconciles: logged, and the operator runs.
    """
    if not SETTINGS.metrics_port:
        return
    try:
        memo.metrics_server = metrics.serve(SETTINGS.metrics_port)
    except OSError as err:
        log.error("no metrics: cannot listen on port %s: %s", SETTINGS.metrics_port, err)
        return
    log.info("metrics on :%d%s", memo.metrics_server.port, metrics.PATH)


@kopf.on.cleanup()
def stop_metrics(memo: kopf.Memo, **_: Any) -> None:
    """Free the port, so that an operator started again in this process can listen on it."""
    server = memo.get("metrics_server")
    if server is not None:
        server.close()
        memo.metrics_server = None


def _stop_acting() -> None:
    """The Lease is lost: another replica may lead by now. Exit at once, as client-go does."""
    runtime().queue.shut_down()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(1)


def _work(rt: _Runtime) -> None:
    """One worker thread: reconcile keys from the queue, only while leading (if electing)."""
    if rt.elector is not None:
        while not rt.elector.leading.wait(5.0):
            if rt.queue.closed:
                return
    while (key := rt.queue.get()) is not None:
        try:
            if rt.elector is not None and not rt.elector.is_leader():
                return  # the elector exits the process
            _reconcile_key(rt.queue, key)
        finally:
            rt.queue.done(key)


def _reconcile_key(queue: WorkQueue, key: Key) -> None:
    namespace, name = key
    try:
        with metrics.reconcile_timer():
            after = reconcile_job(namespace, name)
    except kopf.TemporaryError as err:
        delay = float(err.delay or 5)
        log.warning("[%s/%s] Reconcile failed temporarily: %s", namespace, name, err)
        queue.add_after(key, delay)
    except Exception:
        delay = queue.retry(key)
        log.exception(
            "[%s/%s] Reconcile failed with an exception; retrying in %.0fs", namespace, name, delay
        )
    else:
        queue.forget(key)
        if after is not None:
            queue.add_after(key, after)


@kopf.on.event(API_GROUP, API_VERSION, PLURAL)
async def job_changed(
    namespace: str, name: str, type: str | None, labels: kopf.Labels, **_: Any
) -> None:
    """A job was created or changed (its status too): reconcile it, and the job it is a
    trial of."""
    if type == "DELETED":
        runtime().queue.forget((namespace, name))
    else:
        runtime().queue.add((namespace, name))
    if parent := labels.get(trials.LABEL_TRIAL_OF):
        runtime().queue.add((namespace, parent))


@kopf.on.event("pods", labels={LABEL_JOB: kopf.PRESENT})
async def pod_changed(namespace: str, labels: kopf.Labels, **_: Any) -> None:
    """A pod of a job (a worker, the model check) changed: reconcile its job."""
    runtime().queue.add((namespace, labels[LABEL_JOB]))


@kopf.index("pods", labels={LABEL_ROLE: "worker", LABEL_JOB: kopf.PRESENT})
def worker_pods(
    body: kopf.Body, namespace: str, labels: kopf.Labels, **_: Any
) -> dict[tuple[str, str], dict[str, Any]]:
    return {(namespace, labels[LABEL_JOB]): summarize_pod(dict(body))}


def _indexed_pods(namespace: str, name: str) -> list[dict[str, Any]]:
    """The job's pods as the index holds them (kopf updates it from the event loop's thread)."""
    for _ in range(3):
        try:
            return list(runtime().worker_pods.get((namespace, name), []))
        except RuntimeError:  # changed while copied: copy again
            continue
    return _list_pods(namespace, name)


def _list_pods(namespace: str, name: str) -> list[dict[str, Any]]:
    """Authoritative pods of a job, for when the index may lag behind the API server."""
    selector = f"{LABEL_JOB}={name},{LABEL_ROLE}=worker"
    items = kube().request("GET", pods_path(namespace), query={"labelSelector": selector})
    return [summarize_pod(item) for item in items["items"]]


def _nodes_where(
    names: Iterable[str], test: Callable[[dict[str, Any] | None], bool]
) -> frozenset[str]:
    """Those of `names` whose Node (None when it is gone) passes `test`. A node the operator
    may not read passes none: without it, pods still fail and get placed on their own."""
    passed = set()
    for node in names:
        try:
            if test(kube().get(node_path(node))):
                passed.add(node)
        except ApiError as err:
            log.warning("cannot read node %s: %s", node, err)
    return frozenset(passed)


def _lost_nodes(pods: list[dict[str, Any]]) -> frozenset[str]:
    """The nodes of the job's pods that are lost: asked about only when a pod is not Ready."""
    return _nodes_where(reconcile.node_suspects(pods), reconcile.node_lost)


def _settling_nodes(status: dict[str, Any]) -> frozenset[str]:
    """Of the nodes the last attempt lost, those the scheduler may still place pods on: asked
    about only until the new attempt's workers have all been seen."""
    names = status.get("lostNodes") or []
    if not names or status.get("launchedAttempt") == int(status.get("restarts") or 0):
        return frozenset()
    return _nodes_where(names, lambda node: not reconcile.scheduler_keeps_off(node))


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


def _trials_plan(
    body: dict[str, Any], job: TrainingJob, status: dict[str, Any], now: datetime
) -> reconcile.Plan:
    """A job with spec.trials while it trains: its trials' jobs (and its refit's) observed,
    created, stopped.

    Trial jobs are created before the status that counts them is written: a lost status
    update leaves a job that the next tick adopts, never a trial counted and not running.
    """
    from kubetrain.trainer.trials import candidates  # scikit-learn loads only for trials

    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    selector = f"{trials.LABEL_TRIAL_OF}={name}"
    listed = kube().request("GET", trainingjob_path(namespace), query={"labelSelector": selector})[
        "items"
    ]
    seen = [t for t in map(trials.summarize, listed) if t["owner"] == meta["uid"]]
    drawn = candidates(job)
    plan = trials.plan(job, drawn, status, seen, now, meta.get("generation"))
    for index in plan.create_trials:
        refused = _create_child(namespace, trials.trial_job(body, drawn[index]))
        if refused is not None:
            trials.refuse(plan, index, refused)
    if plan.create_refit is not None:
        refused = _create_child(namespace, trials.refit_job(body, job, drawn[plan.create_refit]))
        if refused is not None:
            trials.refuse_refit(plan, refused)
    for trial in plan.delete_trials:
        kube().delete(trainingjob_path(namespace, trial))
    return plan


def _create_child(namespace: str, manifest: dict[str, Any]) -> str | None:
    """Create a trial's (or the refit's) TrainingJob; the API server's message if it refused
    it for good. A passing fault, or one that may clear (a quota), raises: retried."""
    try:
        kube().create(trainingjob_path(namespace), manifest)
    except ApiError as err:
        problem = reconcile.creation_problem(err.status, err.message)
        if problem is None or not problem.permanent:
            raise
        return err.message
    return None


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


def _tensorboard(
    body: dict[str, Any], job: TrainingJob, act: tensorboard.Action
) -> tuple[dict[str, Any], list[tuple[str, str, str]]]:
    """Create or delete the job's TensorBoard; (status update, events). A refusal leaves the
    status as it was, so the next reconcile tries again."""
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    k = kube()
    try:
        if act == tensorboard.CREATE:
            access = SETTINGS.serving_access()
            allow_from = access.allow_from if access is not None else None
            for obj in tensorboard.objects(body, job, allow_from):
                k.create(COLLECTIONS[obj["kind"]](namespace), obj)
        else:
            for kind in tensorboard.KINDS:
                k.delete(COLLECTIONS[kind](namespace, tensorboard.name(name)))
    except ApiError as err:
        return {}, [tensorboard.failed(name, act, err.message)]
    return tensorboard.done(name, act)


def _post_events(body: dict[str, Any], events: list[tuple[str, str, str]]) -> None:
    """Events on the job (core/v1, as `kubectl describe` shows them); never fails a reconcile."""
    meta = body["metadata"]
    stamp = now_iso()
    for type_, reason, message in events:
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": body["apiVersion"],
                "kind": body["kind"],
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": "kubetrain-operator"},
            "reportingComponent": "kubetrain-operator",
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        try:
            kube().create(events_path(meta["namespace"]), event)
        except ApiError as err:
            where = f"{meta['namespace']}/{meta['name']}"
            log.warning("[%s] cannot post event %s: %s", where, reason, err)


def _patch_status(path: str, status: dict[str, Any]) -> bool:
    """Through the status subresource; a job deleted meanwhile needs no status (False)."""
    try:
        kube().merge_patch(path + "/status", {"status": status})
    except ApiError as err:
        if err.status != 404:
            raise
        return False
    return True


def _workers(
    raw: dict[str, Any], job: TrainingJob, status: dict[str, Any]
) -> tuple[list[dict[str, Any]], frozenset[str], reconcile.Problem | None]:
    """The job's worker pods, the lost nodes among theirs, and what keeps it from starting."""
    meta = raw["metadata"]
    namespace, name, uid = meta["namespace"], meta["name"], meta["uid"]
    restarts = int(status.get("restarts") or 0)
    pods = reconcile.owned_pods(_indexed_pods(namespace, name), uid)
    if status.get("launchedAttempt") == restarts and not reconcile.is_finished(job.spec, status):
        seen = {p["index"] for p in pods if p["attempt"] == restarts}
        if len(seen) < job.spec.workers.replicas:
            pods = reconcile.owned_pods(_list_pods(namespace, name), uid)
    problem = None
    if status.get("phase") in (None, Phase.PENDING) and status.get("launchedAttempt") is None:
        problem = _problem(job, namespace)
    return pods, _lost_nodes(pods), problem


def reconcile_job(namespace: str, name: str) -> float | None:
    """Level-triggered: re-derive the next step from the job as the API server holds it now
    and its pods; carry it out. Returns when to look again (None: when something changes)."""
    path = trainingjob_path(namespace, name)
    raw = kube().get(path)
    if raw is None or raw["metadata"].get("deletionTimestamp"):
        return None  # deleted: owner references take its pods, Service and policy with it
    status = dict(raw.get("status") or {})
    now = datetime.now(UTC)
    try:
        job = parse_job(
            {
                "apiVersion": raw["apiVersion"],
                "kind": raw["kind"],
                "metadata": {"name": name, "namespace": namespace},
                "spec": dict(raw.get("spec") or {}),
            }
        )
        job = SETTINGS.job_defaults.apply(job)
    except SpecError as err:
        update = reconcile.reject(status, Reason.INVALID_SPEC, str(err), now)
        _post_events(raw, update.events)
        if update.status and _patch_status(path, update.status):
            metrics.record(namespace, status, {**status, **update.status})
        return None

    generation = raw["metadata"].get("generation")
    pods: list[dict[str, Any]] = []
    lost: frozenset[str] = frozenset()
    settling: frozenset[str] = frozenset()
    if job.spec.trials is not None and status.get("phase") not in reconcile.FINISHED_TRAINING:
        try:
            plan = _trials_plan(raw, job, status, now)
        except SpecError as err:
            plan = reconcile.reject(status, Reason.INVALID_SPEC, str(err), now)
    else:
        pods, lost, problem = _workers(raw, job, status)
        settling = _settling_nodes(status)
        plan = reconcile.plan(
            job.spec, name, status, pods, now, problem, generation, lost, settling
        )

    if plan.create:
        attempt = int(plan.status.get("restarts", status.get("restarts") or 0))
        problem = _create_workers(raw, job, plan.create, attempt)
        if problem is not None:
            plan = reconcile.plan(
                job.spec, name, status, pods, now, problem, generation, lost, settling
            )
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
    if plan.tensorboard is not None:
        update, events = _tensorboard(raw, job, plan.tensorboard)
        plan.status.update(update)
        plan.events.extend(events)
    _post_events(raw, plan.events)
    if plan.status and _patch_status(path, replace_maps(status, plan.status)):
        metrics.record(namespace, status, {**status, **plan.status})  # once: it was written
    if plan.delete_job:
        log.info("[%s/%s] ttlSecondsAfterFinished passed; deleting the job", namespace, name)
        kube().delete(path)
        return None
    return reconcile.requeue_after(
        job.spec,
        {**status, **plan.status},
        pods,
        now,
        lost,
        progress_every=SETTINGS.progress_interval,
        follow_every=SETTINGS.interval,
    )


def main() -> None:
    """`python -m kubetrain.operator`: run over all namespaces (or only $WATCH_NAMESPACE)."""
    args = ["run", "--standalone", "-m", __name__]
    namespace = os.environ.get("WATCH_NAMESPACE")
    args += ["--namespace", namespace] if namespace else ["--all-namespaces"]
    if SETTINGS.liveness_port:
        args += ["--liveness", f"http://0.0.0.0:{SETTINGS.liveness_port}/healthz"]
    from kopf import cli

    cli.main(args=args, standalone_mode=True)

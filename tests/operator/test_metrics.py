"""The operator's metrics: each job event counted once however often its reconcile runs, and
served over HTTP as Prometheus scrapes it. No cluster: the planners are pure, the API server
is a small fake, and the endpoint listens on loopback."""

from __future__ import annotations

import copy
import logging
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import kopf
import pytest
from kubetrain.operator import handlers, metrics, promotion, reconcile, serving
from kubetrain.operator.kube import ApiError, pvc_path, trainingjob_path
from kubetrain.operator.metrics import Outcome, Transitions, transitions
from kubetrain.operator.settings import SETTINGS, Settings
from kubetrain.operator.workqueue import WorkQueue
from kubetrain.trainer.api.records import EXIT_PERMANENT
from kubetrain.trainer.api.status import Phase, Reason
from prometheus_client.parser import text_string_to_metric_families
from trainingjobs import body, job, pod, serving_deployment, strategic_merge

T0 = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)
SPEC = job(body()).spec


def tick(status: dict[str, Any], pods: list[dict[str, Any]], seconds: int = 0) -> dict[str, Any]:
    """One reconcile's planned status, as the handler patches it."""
    step = reconcile.plan(SPEC, "mnist", status, pods, T0 + timedelta(seconds=seconds))
    return {**status, **step.status}


def count(name: str, **labels: str) -> float:
    """A sample's value in the operator's registry; 0 before its first count."""
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


# --- what counts: transitions, not reconciles ------------------------------------------------


def test_a_job_counts_created_restarted_and_succeeded_once_each_however_often_reconciled():
    lives = [
        ([], "created"),
        ([pod(0), pod(1)], None),  # Running
        ([pod(0), pod(1, "Failed", exit_code=1)], "restarted"),
        ([pod(0, deleting="2025-01-01T12:00:00Z")], None),  # the old attempt on its way out
        ([pod(0, attempt=1), pod(1, attempt=1)], None),  # Running again
        ([pod(0, "Succeeded", attempt=1), pod(1, "Succeeded", attempt=1)], "succeeded"),
    ]
    status: dict[str, Any] = {}
    for seconds, (pods, event) in enumerate(lives):
        new = tick(status, pods, seconds)
        first = transitions(status, new)
        again = transitions(new, tick(new, pods, seconds))  # the same reconcile, run again
        assert again == Transitions(), f"{event or new['phase']}: counted twice"
        assert first.created == (event == "created")
        assert first.restarts == (1 if event == "restarted" else 0)
        assert first.succeeded == (event == "succeeded")
        assert first.failed is None and first.promotion is None
        status = new
    assert status["phase"] == Phase.SUCCEEDED and status["restarts"] == 1


def test_a_failed_job_counts_once_with_the_reason_of_its_failed_condition():
    running = tick(tick({}, []), [pod(0), pod(1)])
    pods = [pod(0), pod(1, "Failed", exit_code=EXIT_PERMANENT)]
    failed = tick(running, pods)
    assert transitions(running, failed) == Transitions(failed=Reason.PERMANENT_ERROR)
    assert transitions(failed, tick(failed, pods)) == Transitions()


def test_a_job_whose_spec_never_parsed_is_created_and_failed_at_once():
    rejected = reconcile.reject({}, Reason.INVALID_SPEC, "spec.training: bad", T0)
    after = rejected.status
    assert transitions({}, after) == Transitions(created=True, failed=Reason.INVALID_SPEC)
    assert reconcile.reject(after, Reason.INVALID_SPEC, "spec.training: bad", T0).status == {}


# --- promotions: by outcome, from the Promoted condition the planner writes -------------------


def trained(value: float = 0.98) -> dict[str, Any]:
    """A job whose chief just succeeded, exporting version 4 at validation accuracy `value`."""
    return {
        "phase": Phase.SUCCEEDED,
        "bestCheckpoint": {"epoch": 3, "metric": "val_accuracy", "value": value},
        "model": {"name": "mnist", "version": 4, "path": "/models/mnist/4"},
    }


def decide(
    status: dict[str, Any], deployment: dict[str, Any] | None, seconds: int = 0
) -> promotion.PromotionPlan:
    """One promotion tick; the model-check pod found the version complete."""
    check = {"name": "mnist-model-check", "phase": "Succeeded", "exitCode": 0, "message": ""}
    now = T0 + timedelta(seconds=seconds)
    return promotion.plan(SPEC, "ml", "uid-new", status, deployment, now, check=check)


def promote(status: dict[str, Any], deployment: dict[str, Any] | None, seconds: int = 0) -> dict:
    return {**status, **decide(status, deployment, seconds).status}


def rollout(served: dict[str, Any], complete: bool) -> dict[str, Any]:
    """The served Deployment patched to version 4, as its controller then reports it: every
    replica updated and available, or none."""
    dep = strategic_merge(served, decide(trained(0.98), served).patch or {})
    dep["metadata"]["generation"] = 2
    replicas = dep["spec"]["replicas"]
    ready = replicas if complete else 0
    dep["status"] = {
        "observedGeneration": 2,
        "replicas": replicas,
        "updatedReplicas": ready,
        "availableReplicas": ready,
    }
    return dep


def test_a_better_model_rolled_out_counts_one_promotion_and_no_second_success():
    served = serving_deployment(3, value=0.97)
    promoting = promote(trained(0.98), served)
    assert promoting["phase"] == Phase.PROMOTING
    assert transitions(trained(0.98), promoting) == Transitions()
    done = promote(promoting, rollout(served, complete=True), 20)
    assert done["phase"] == Phase.PROMOTED
    assert transitions(promoting, done) == Transitions(
        promotion=(Outcome.PROMOTED, Reason.ROLLED_OUT)
    )
    assert transitions(done, done) == Transitions()


def test_a_model_the_gate_keeps_out_counts_as_rejected():
    status = trained(0.96)
    refused = promote(status, serving_deployment(3, value=0.97))
    assert transitions(status, refused) == Transitions(
        promotion=(Outcome.REJECTED, Reason.NOT_BETTER)
    )
    assert transitions(refused, refused) == Transitions()


def test_a_rollout_that_failed_and_was_rolled_back_counts_as_failed():
    served = serving_deployment(3, value=0.97)
    promoting = promote(trained(0.98), served)
    rolled_back = promote(promoting, rollout(served, complete=False), 400)  # past the deadline
    assert rolled_back["phase"] == Phase.SUCCEEDED
    assert transitions(promoting, rolled_back) == Transitions(
        promotion=(Outcome.FAILED, Reason.ROLLOUT_FAILED)
    )


def test_a_promotion_the_api_server_refuses_counts_as_failed_not_as_a_second_success():
    status = promote(trained(0.98), serving_deployment(3, value=0.97))
    refused = promotion.api_refused(SPEC, status, 403, "exceeded quota", T0)
    after = {**status, **refused.status}
    assert after["phase"] == Phase.SUCCEEDED  # back from Promoting
    assert transitions(status, after) == Transitions(
        promotion=(Outcome.FAILED, Reason.PROMOTION_REFUSED)
    )


@pytest.mark.parametrize(
    ("served", "value"),
    [
        ({"metric": "val_loss", "value": 0.1}, 0.98),  # chosen by another metric
        ({"metric": "val_accuracy", "value": 0.97}, None),  # this result has no value
        ({"metric": "val_accuracy", "value": 0.97}, 0.97),  # not better
    ],
)
def test_every_refusal_of_the_gate_is_a_rejection_and_no_fault(served: dict, value: float | None):
    annotations = serving.served_annotations(3, served["metric"], served["value"], "uid-1")
    verdict = promotion.gate("val_accuracy", value, annotations, 0.0)
    assert not verdict.promote
    assert metrics.outcome("False", verdict.reason) == Outcome.REJECTED


@pytest.mark.parametrize("reason", sorted(set(Reason) - promotion.GATE_REFUSALS))
def test_a_promotion_that_ended_for_any_other_reason_failed(reason: Reason):
    assert metrics.outcome("False", reason) == Outcome.FAILED


def test_a_trial_that_ends_counts_once_by_how_it_ended():
    def rows(*states: str) -> dict:
        return {"trials": [{"index": i, "state": s} for i, s in enumerate(states)]}

    running = rows("Running", "Running", "Pending")
    one_stopped = rows("Succeeded", "EarlyStopped", "Running")
    assert transitions(running, one_stopped).trials == (("EarlyStopped", 1), ("Succeeded", 1))
    assert transitions(one_stopped, one_stopped).trials == ()
    last_failed = rows("Succeeded", "EarlyStopped", "Failed")
    assert transitions(one_stopped, last_failed).trials == (("Failed", 1),)
    ns = "trials-recorded"
    metrics.record(ns, running, one_stopped)
    assert count(metrics.TRIALS_ENDED, job_namespace=ns, state="EarlyStopped") == 1


# --- the handler counts only what it wrote ---------------------------------------------------


def merged(target: Any, patch: Any) -> Any:
    """A JSON merge patch applied (RFC 7386), as the API server applies the status patch."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merged(out.get(key), value)
    return out


class FakeApi:
    """The API server as `reconcile_job` uses it: one TrainingJob and its claim."""

    def __init__(self, trainingjob: dict[str, Any]) -> None:
        meta = trainingjob["metadata"]
        self.path = trainingjob_path(meta["namespace"], meta["name"])
        self.objects = {self.path: trainingjob, pvc_path(meta["namespace"], "models"): {}}
        self.refuse_patches = 0

    def get(self, path: str, timeout: Any = None) -> dict[str, Any] | None:
        return copy.deepcopy(self.objects.get(path))

    def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return body

    def delete(self, path: str, grace_seconds: int | None = None) -> None:
        pass

    def request(self, method: str, path: str, *_: Any, **__: Any) -> Any:
        return "" if path.endswith("/log") else {"items": []}

    def merge_patch(self, path: str, patch: dict[str, Any]) -> dict[str, Any]:
        if self.refuse_patches:
            self.refuse_patches -= 1
            raise ApiError(500, "InternalError", "etcd is slow")
        job = self.objects[path.removesuffix("/status")]
        job["status"] = merged(job.get("status") or {}, patch["status"])
        return job


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeApi]:
    fake = FakeApi(body(namespace="counted-once"))
    runtime = SimpleNamespace(kube=fake, worker_pods={})
    monkeypatch.setattr(handlers, "_runtime", runtime)
    yield fake


def test_reconciling_a_job_again_and_again_counts_each_of_its_events_once(api: FakeApi):
    ns = "counted-once"
    created = count(metrics.JOBS_CREATED, job_namespace=ns)
    restarted = count(metrics.JOBS_RESTARTED, job_namespace=ns)
    for _ in range(3):
        handlers.reconcile_job(ns, "mnist")
    assert count(metrics.JOBS_CREATED, job_namespace=ns) == created + 1

    index = handlers.runtime().worker_pods
    index[(ns, "mnist")] = [pod(0), pod(1)]
    handlers.reconcile_job(ns, "mnist")
    index[(ns, "mnist")] = [pod(0), pod(1, "Failed", exit_code=1)]
    api.refuse_patches = 1  # the restart is planned, but its status is not written
    with pytest.raises(ApiError):
        handlers.reconcile_job(ns, "mnist")
    assert count(metrics.JOBS_RESTARTED, job_namespace=ns) == restarted
    for _ in range(3):  # the retry writes it, and the reconciles after it find it written
        handlers.reconcile_job(ns, "mnist")
    assert api.objects[api.path]["status"]["restarts"] == 1
    assert count(metrics.JOBS_RESTARTED, job_namespace=ns) == restarted + 1
    assert count(metrics.JOBS_CREATED, job_namespace=ns) == created + 1


def test_record_adds_to_the_counters_it_names():
    ns = "recorded"
    before = count(metrics.JOBS_FAILED, job_namespace=ns, reason=Reason.BACKOFF_LIMIT_EXCEEDED)
    running = {"phase": Phase.RUNNING, "restarts": 2}
    failed = {
        "phase": Phase.FAILED,
        "restarts": 2,
        "conditions": [
            {"type": "Failed", "status": "True", "reason": Reason.BACKOFF_LIMIT_EXCEEDED}
        ],
    }
    metrics.record(ns, running, failed)
    after = count(metrics.JOBS_FAILED, job_namespace=ns, reason=Reason.BACKOFF_LIMIT_EXCEEDED)
    assert after == before + 1
    assert count(metrics.JOBS_RESTARTED, job_namespace=ns) == 0
    assert count(metrics.JOBS_SUCCEEDED, job_namespace=ns) == 0


# --- reconcile time --------------------------------------------------------------------------


def reconciles(result: metrics.Result) -> float:
    return count(metrics.RECONCILE_SECONDS + "_count", result=result)


def test_every_reconcile_is_timed_and_one_that_raises_as_an_error(
    monkeypatch: pytest.MonkeyPatch,
):
    queue = WorkQueue()
    ok, errors = reconciles(metrics.Result.SUCCESS), reconciles(metrics.Result.ERROR)
    monkeypatch.setattr(handlers, "reconcile_job", lambda namespace, name: None)
    handlers._reconcile_key(queue, ("ml", "fine"))

    def broken(namespace: str, name: str) -> float | None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(handlers, "reconcile_job", broken)
    handlers._reconcile_key(queue, ("ml", "broken"))  # logged and retried, not raised
    assert reconciles(metrics.Result.SUCCESS) == ok + 1
    assert reconciles(metrics.Result.ERROR) == errors + 1
    assert len(queue) == 1  # the broken one, waiting for its retry


# --- the endpoint ----------------------------------------------------------------------------


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample /metrics serves, by (name, sorted labels)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{metrics.PATH}", timeout=10) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.fixture
def server() -> Iterator[metrics.Server]:
    started = metrics.serve(0, "127.0.0.1")  # any free port
    yield started
    started.close()


def test_the_endpoint_serves_the_counters_the_queue_and_the_leadership(server: metrics.Server):
    ns = "scraped"
    metrics.record(ns, {}, {"phase": Phase.PENDING, "restarts": 0})
    queue = WorkQueue()
    queue.add(("scraped", "a"))
    queue.add(("scraped", "b"))
    metrics.track(queue.depth, lambda: True)
    with metrics.reconcile_timer():
        pass
    samples = scrape(server.port)
    assert samples[(metrics.JOBS_CREATED, ((metrics.JOB_NAMESPACE, ns),))] == 1
    assert samples[(metrics.QUEUE_DEPTH, ())] == 2
    assert samples[(metrics.LEADER, ())] == 1
    ok = ((metrics.RESULT, metrics.Result.SUCCESS),)
    assert samples[(metrics.RECONCILE_SECONDS + "_count", ok)] >= 1
    assert (metrics.RECONCILE_SECONDS + "_bucket", (("le", "+Inf"), *ok)) in samples
    assert ("process_resident_memory_bytes", ()) in samples  # the process, as a Python exporter

    metrics.track(queue.depth, lambda: False)  # a standby
    assert queue.pop_ready() == ("scraped", "a")
    samples = scrape(server.port)
    assert samples[(metrics.QUEUE_DEPTH, ())] == 1
    assert samples[(metrics.LEADER, ())] == 0


def test_a_closed_endpoint_frees_its_port_for_the_next_start(server: metrics.Server):
    port = server.port
    server.close()
    with pytest.raises(urllib.error.URLError):
        scrape(port)
    again = metrics.serve(port, "127.0.0.1")
    try:
        assert (metrics.LEADER, ()) in scrape(again.port)
    finally:
        again.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_startup_handler_serves_on_the_configured_port_and_cleanup_stops_it(
    monkeypatch: pytest.MonkeyPatch,
):
    port = free_port()
    monkeypatch.setattr(SETTINGS, "metrics_port", port)
    memo = kopf.Memo()
    handlers.serve_metrics(memo=memo)
    try:
        assert (metrics.LEADER, ()) in scrape(port)
    finally:
        handlers.stop_metrics(memo=memo)
    with pytest.raises(urllib.error.URLError):
        scrape(port)


def test_a_taken_port_costs_the_metrics_but_not_the_operator(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        monkeypatch.setattr(SETTINGS, "metrics_port", taken.getsockname()[1])
        memo = kopf.Memo()
        with caplog.at_level(logging.ERROR, logger="kubetrain.operator"):
            handlers.serve_metrics(memo=memo)  # returns: kopf goes on starting the operator
    assert memo.get("metrics_server") is None
    assert "no metrics: cannot listen on port" in caplog.text
    handlers.stop_metrics(memo=memo)


def test_the_port_is_8080_unless_set_and_0_turns_the_endpoint_off(
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.delenv("KUBETRAIN_METRICS_PORT", raising=False)
    assert Settings().metrics_port == 8080
    monkeypatch.setenv("KUBETRAIN_METRICS_PORT", "9100")
    assert Settings().metrics_port == 9100
    monkeypatch.setenv("KUBETRAIN_METRICS_PORT", "0")
    assert Settings().metrics_port is None

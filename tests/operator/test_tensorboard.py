"""A job's TensorBoard on the cluster: when the planner asks for it, what it is made of, and
the handler carrying that out."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from kubetrain.operator import handlers, serving, tensorboard
from kubetrain.operator.defaults import JobDefaults
from kubetrain.operator.kube import ApiError
from kubetrain.operator.manifests import (
    CONTAINER_SECURITY_CONTEXT,
    POD_SECURITY_CONTEXT,
    SCRATCH_MOUNT,
    headless_service,
    worker_network_policy,
    worker_pod,
)
from kubetrain.operator.reconcile import plan, requeue_after
from kubetrain.trainer.api.entrypoints import TENSORBOARD_PORT
from kubetrain.trainer.api.spec import MAX_NAME_LENGTH, SpecError, Storage, parse_job
from kubetrain.trainer.cli import build_parser
from trainingjobs import body, job, pod

T0 = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)
ON = {"enabled": True}
IN_S3 = {
    "claimName": None,
    "uri": "s3://models/kubetrain",
    "secretName": "s3-credentials",
    "s3": {"endpoint": "http://s3.storage:7070", "region": "eu-west-1"},
}
RECORDED = {"tensorboard": {"service": "mnist-tensorboard", "port": TENSORBOARD_PORT}}


def spec(**overrides: Any):
    return job(body(**overrides)).spec


def container(dep: dict[str, Any]) -> dict[str, Any]:
    (only,) = dep["spec"]["template"]["spec"]["containers"]
    return only


# --- when it should exist ---------------------------------------------------------------------


def test_a_job_asking_for_tensorboard_gets_it_once_and_keeps_it_whatever_its_phase():
    on = spec(tensorboard=ON)
    first = plan(on, "mnist", {}, [], T0)
    assert first.tensorboard == "create"
    assert first.create == [0, 1]  # training starts meanwhile, as ever
    for phase in ("Running", "Succeeded", "Promoted", "Failed"):
        again = plan(on, "mnist", {"phase": phase, **RECORDED}, [], T0)
        assert again.tensorboard is None, phase
        assert "tensorboard" not in again.status  # the record stays as it is
    # Asked for once training has ended: curves are read afterwards.
    assert plan(on, "mnist", {"phase": "Promoted"}, [], T0).tensorboard == "create"


def test_by_default_there_is_none_and_turning_it_off_removes_it():
    assert spec().tensorboard.enabled is False
    assert plan(spec(), "mnist", {}, [], T0).tensorboard is None
    assert plan(spec(), "mnist", {"phase": "Running", **RECORDED}, [], T0).tensorboard == "delete"


def test_a_failed_create_is_tried_again_at_the_progress_interval():
    on = spec(tensorboard=ON)
    finished = {"phase": "Failed", "completionTime": "2025-01-01T11:00:00Z"}
    assert requeue_after(on, finished, [], T0, progress_every=10) == 10
    assert requeue_after(on, {**finished, **RECORDED}, [], T0, progress_every=10) is None
    assert requeue_after(spec(), {**finished, **RECORDED}, [], T0, progress_every=10) == 10


def test_without_shared_storage_there_is_nothing_to_draw_which_is_said_once_per_spec_change():
    b = body(tensorboard=ON, promotion={"enabled": False})
    b["spec"]["storage"] = {}
    alone = job(b).spec
    first = plan(alone, "mnist", {}, [], T0, generation=1)
    assert first.tensorboard is None
    (warning,) = [e for e in first.events if e[1] == "TensorBoardFailed"]
    assert warning[0] == "Warning" and "no storage.claimName or storage.uri" in warning[2]
    again = plan(alone, "mnist", first.status, [], T0, generation=1)
    assert not [e for e in again.events if e[1] == "TensorBoardFailed"]
    changed = plan(alone, "mnist", first.status, [], T0, generation=2)
    assert [e[1] for e in changed.events] == ["TensorBoardFailed"]
    # The operator's default storage counts: the job gets it like any other.
    defaults = JobDefaults(storage=Storage(claim_name="models"))
    assert tensorboard.has_storage(job(b, defaults).spec)


def test_its_service_name_must_be_a_dns_label_so_the_job_name_is_shorter():
    long = "a" * MAX_NAME_LENGTH
    document = {k: body(name=long, tensorboard=ON)[k] for k in ("apiVersion", "kind", "spec")}
    with pytest.raises(SpecError, match=r"at most 51 characters with spec\.tensorboard\.enabled"):
        parse_job({**document, "metadata": {"name": long}})
    assert len(tensorboard.name(long[:51])) == 63
    parse_job({**document, "metadata": {"name": long[:51]}})


# --- what it is made of -----------------------------------------------------------------------


def test_it_is_owned_by_the_job_and_found_through_its_service():
    b = body(tensorboard=ON)
    dep = tensorboard.deployment(b, job(b))
    svc = tensorboard.service(b)
    for obj in (dep, svc, tensorboard.network_policy(b, [{"podSelector": {}}])):
        assert obj["metadata"]["name"] == "mnist-tensorboard"
        owner = obj["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["uid"]) == ("TrainingJob", "uid-1234")
        assert owner["controller"] is True
    assert dep["spec"]["replicas"] == 1
    labels = dep["spec"]["template"]["metadata"]["labels"]
    for selector in (dep["spec"]["selector"]["matchLabels"], svc["spec"]["selector"]):
        assert all(labels[k] == v for k, v in selector.items())
    assert svc["spec"]["ports"] == [{"name": "http", "port": 6006, "targetPort": 6006}]
    assert container(dep)["ports"] == [{"name": "http", "containerPort": 6006}]
    assert tensorboard.endpoint("mnist") == RECORDED["tensorboard"]
    # The workers' Service and NetworkPolicy do not take it for a worker.
    worker_selectors = [
        headless_service(b)["spec"]["selector"],
        worker_network_policy(b)["spec"]["podSelector"]["matchLabels"],
    ]
    for selector in worker_selectors:
        assert not all(labels.get(k) == v for k, v in selector.items())


def test_with_a_claim_it_reads_the_jobs_curves_read_only_like_the_other_pods():
    b = body(tensorboard=ON, storage={"mountPath": "/ckpt"})
    dep = tensorboard.deployment(b, job(b))
    pod_spec = dep["spec"]["template"]["spec"]
    board = container(dep)
    assert board["command"] == [
        "kubetrain",
        "tensorboard",
        "/ckpt/jobs/mnist/tensorboard",
        "--port",
        "6006",
        "--bind-all",
    ]
    volumes = {v["name"]: v for v in pod_spec["volumes"]}
    assert volumes["storage"]["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}
    assert {"name": "storage", "mountPath": "/ckpt", "readOnly": True} in board["volumeMounts"]
    assert SCRATCH_MOUNT in board["volumeMounts"]
    # The same locks as the workers' and the model servers' pods.
    worker = worker_pod(b, job(b), 0, 0)["spec"]
    assert pod_spec["securityContext"] == POD_SECURITY_CONTEXT == worker["securityContext"]
    assert board["securityContext"] == CONTAINER_SECURITY_CONTEXT
    assert pod_spec["automountServiceAccountToken"] is False
    assert pod_spec["enableServiceLinks"] is False
    assert board["image"] == job(b).spec.workers.image
    assert board["resources"] == {
        "requests": {"cpu": "100m", "memory": "768Mi"},
        "limits": {"memory": "1536Mi"},
    }
    assert board["readinessProbe"]["httpGet"] == {"path": "/", "port": 6006}


def test_with_an_object_store_it_follows_the_store_as_the_serving_puller_reaches_it():
    b = body(tensorboard=ON, storage=IN_S3)
    j = job(b)
    board = container(tensorboard.deployment(b, j))
    assert board["command"][2] == "s3://models/kubetrain/jobs/mnist/tensorboard"
    assert [m["name"] for m in board["volumeMounts"]] == ["tmp"]  # its copy lives in /tmp
    puller = serving.pull_container(j.spec, 1)
    assert board["envFrom"] == puller["envFrom"] == [{"secretRef": {"name": "s3-credentials"}}]
    assert [e for e in puller["env"] if e["name"] != "MODEL_VERSION"] == [
        e for e in board["env"] if e["name"] != "PYTHONUNBUFFERED"
    ]


def test_the_pods_command_is_one_kubetrain_tensorboard_accepts():
    b = body(tensorboard=ON)
    command = container(tensorboard.deployment(b, job(b)))["command"]
    assert command[0] == "kubetrain"
    args = build_parser().parse_args(command[1:])
    assert (args.target, args.port, args.bind_all) == (
        "/var/lib/kubetrain/jobs/mnist/tensorboard",
        TENSORBOARD_PORT,
        True,
    )


def test_the_resources_follow_the_spec():
    resources = {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "3Gi"}}
    b = body(tensorboard={"enabled": True, "resources": resources})
    assert container(tensorboard.deployment(b, job(b)))["resources"] == resources


def test_only_the_peers_serving_admits_reach_its_port_and_egress_stays_open():
    b = body(tensorboard=ON)
    peers = [{"namespaceSelector": {"matchLabels": {"team": "ml"}}}]
    policy = tensorboard.network_policy(b, peers)
    board = {"kubetrain.io/job": "mnist", "kubetrain.io/role": "tensorboard"}
    assert policy["spec"] == {
        "podSelector": {"matchLabels": board},
        "policyTypes": ["Ingress"],
        "ingress": [{"from": peers, "ports": [{"protocol": "TCP", "port": 6006}]}],
    }
    assert tensorboard.network_policy(b, [])["spec"]["ingress"] == []
    kinds = [o["kind"] for o in tensorboard.objects(b, job(b), peers)]
    assert kinds == ["NetworkPolicy", "Service", "Deployment"]  # the policy before any pod
    assert [o["kind"] for o in tensorboard.objects(b, job(b), None)] == ["Service", "Deployment"]


# --- the handler carrying it out ---------------------------------------------------------------


class FakeKube:
    """Records what the handler asks of the API server; `refuse` makes creates fail."""

    def __init__(self, refuse: ApiError | None = None) -> None:
        self.refuse = refuse
        self.calls: list[tuple[str, str]] = []

    def create(self, path: str, obj: dict[str, Any]) -> dict[str, Any] | None:
        if self.refuse is not None:
            raise self.refuse
        self.calls.append(("create", f"{path}/{obj['metadata']['name']}"))
        return None  # as for a 409: it exists already, which is as good

    def delete(self, path: str, grace_seconds: int | None = None) -> None:
        self.calls.append(("delete", path))


def test_the_handler_creates_it_records_it_and_says_how_to_reach_it(monkeypatch):
    fake = FakeKube()
    monkeypatch.setattr(handlers, "kube", lambda: fake)
    b = body(tensorboard=ON)
    update, events = handlers._tensorboard(b, job(b), "create")
    assert update == RECORDED
    assert [e[:2] for e in events] == [("Normal", "TensorBoardCreated")]
    assert "kubectl port-forward svc/mnist-tensorboard 6006" in events[0][2]
    assert [path.rsplit("/", 2)[-2] for _, path in fake.calls][-2:] == ["services", "deployments"]


def test_the_handler_removes_all_of_it_when_turned_off(monkeypatch):
    fake = FakeKube()
    monkeypatch.setattr(handlers, "kube", lambda: fake)
    b = body()
    update, events = handlers._tensorboard(b, job(b), "delete")
    assert update == {"tensorboard": None}  # a merge patch's null: the record goes
    assert sorted(p.split("/")[-2] for _, p in fake.calls) == [
        "deployments",
        "networkpolicies",
        "services",
    ]
    assert all(p.endswith("/mnist-tensorboard") for _, p in fake.calls)
    assert [e[1] for e in events] == ["TensorBoardDeleted"]


def test_a_refused_create_leaves_no_record_and_a_warning(monkeypatch):
    fake = FakeKube(refuse=ApiError(403, "Forbidden", "exceeded quota: compute"))
    monkeypatch.setattr(handlers, "kube", lambda: fake)
    b = body(tensorboard=ON)
    update, events = handlers._tensorboard(b, job(b), "create")
    assert update == {}
    ((kind, reason, message),) = events
    assert (kind, reason) == ("Warning", "TensorBoardFailed")
    assert "exceeded quota" in message


def test_worker_pods_are_planned_as_before_alongside_it():
    on = spec(tensorboard=ON)
    status = {**plan(on, "mnist", {}, [], T0).status, **RECORDED}
    again = plan(on, "mnist", status, [pod(0), pod(1)], T0)
    assert again.tensorboard is None and again.status["phase"] == "Running"

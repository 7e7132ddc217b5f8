"""The NetworkPolicies the operator creates, enforced by the cluster's real enforcer.

The local cluster runs kube-router's network policy controller; these apply the operator's
own policy objects to stand-in pods and try to connect from inside and outside their fence.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest
from kubecluster import Kubectl, container, fresh_namespace, python_output, python_pod
from kubetrain.operator import serving
from kubetrain.operator.manifests import LABEL_JOB, LABEL_ROLE, WORKER_PORT, worker_network_policy
from kubetrain.trainer.api.entrypoints import SERVER_PORT
from kubetrain.trainer.api.spec import TrainingJobSpec

pytestmark = pytest.mark.cluster

WORKER_LABELS = {LABEL_JOB: "fenced", LABEL_ROLE: "worker"}
SPEC = TrainingJobSpec.model_validate(
    {
        "dataset": {"name": "mnist", "source": "data/mnist"},
        "model": {"architecture": "mnist-dense", "name": "mnist"},
        "storage": {"claimName": "models"},
    }
)


def job_body(name: str, namespace: str) -> dict:
    return {
        "apiVersion": "kubetrain.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name, "namespace": namespace, "uid": "uid-fenced"},
    }


def listener(name: str, port: int, labels: dict[str, str]) -> dict:
    """A pod that accepts TCP connections on `port`, as a worker or a model server would."""
    code = (
        "import socket\n"
        f"s = socket.create_server(('', {port}))\n"
        "while True:\n"
        "    c, _ = s.accept(); c.sendall(b'hello'); c.close()\n"
    )
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "containers": [
                container(
                    "listen",
                    ["python3", "-c", code],
                    readinessProbe={"tcpSocket": {"port": port}, "periodSeconds": 1},
                )
            ]
        },
    }


def dialer(name: str, address: str, port: int, labels: dict[str, str]) -> dict:
    """A pod that prints `open` once it reaches address:port within 20 s, else `blocked`."""
    code = (
        "import socket, time\n"
        "deadline = time.monotonic() + 20\n"
        "while time.monotonic() < deadline:\n"
        "    try:\n"
        f"        socket.create_connection(({address!r}, {port}), timeout=2).close()\n"
        "        print('open'); break\n"
        "    except OSError:\n"
        "        time.sleep(1)\n"
        "else:\n"
        "    print('blocked')\n"
    )
    pod = python_pod(name, code)
    pod["metadata"]["labels"] = {**labels, "app": name}
    return pod


def ready_ip(ns: Kubectl, name: str) -> str:
    pod = ns.wait_for(
        f"pod {name}",
        lambda p: any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in p.get("status", {}).get("conditions", [])
        ),
        timeout=180,
    )
    return pod["status"]["podIP"]


def without_owner(obj: dict) -> dict:
    """The object as the operator creates it, minus the owner reference to a real job (the
    garbage collector would delete it at once here)."""
    obj = copy.deepcopy(obj)
    obj["metadata"].pop("ownerReferences", None)
    obj["metadata"].pop("namespace", None)
    return obj


@pytest.fixture
def elsewhere(kubectl: Kubectl) -> Iterator[Kubectl]:
    """A second namespace, as another tenant's."""
    with fresh_namespace(kubectl, "kt-other") as ns:
        yield ns


def test_only_the_jobs_own_workers_reach_a_workers_tensorflow_port(
    namespace: Kubectl, elsewhere: Kubectl
):
    policy = worker_network_policy(job_body("fenced", namespace.namespace))
    namespace.apply(without_owner(policy), listener("worker-0", WORKER_PORT, WORKER_LABELS))
    address = ready_ip(namespace, "worker-0")
    namespace.apply(
        dialer("peer", address, WORKER_PORT, WORKER_LABELS),
        dialer("stranger", address, WORKER_PORT, {}),
        dialer("other-job", address, WORKER_PORT, {LABEL_JOB: "other", LABEL_ROLE: "worker"}),
    )
    # The same labels from another namespace do not count: the fence is per namespace.
    elsewhere.apply(dialer("lookalike", address, WORKER_PORT, WORKER_LABELS))
    assert python_output(namespace, "peer") == "open"
    assert python_output(namespace, "stranger") == "blocked"
    assert python_output(namespace, "other-job") == "blocked"
    assert python_output(elsewhere, "lookalike") == "blocked"


def test_serving_pods_take_calls_from_their_namespace_and_metrics_from_monitoring(
    namespace: Kubectl, elsewhere: Kubectl
):
    spec = SPEC
    labels = serving.serving_labels(spec.serving_deployment)
    access = serving.Access(metrics_namespace=elsewhere.namespace)
    namespace.apply(
        without_owner(serving.network_policy(spec, namespace.namespace, access)),
        listener("server", SERVER_PORT, labels),
    )
    address = ready_ip(namespace, "server")  # the kubelet's readiness probe got through
    namespace.apply(dialer("neighbour", address, SERVER_PORT, {}))
    elsewhere.apply(dialer("scraper", address, SERVER_PORT, {}))
    assert python_output(namespace, "neighbour") == "open"
    assert python_output(elsewhere, "scraper") == "open"

    closed = serving.Access(allow_from=[], metrics_namespace=None)
    namespace.apply(without_owner(serving.network_policy(spec, namespace.namespace, closed)))
    namespace.apply(dialer("shut-out", address, SERVER_PORT, {}))
    assert python_output(namespace, "shut-out") == "blocked"

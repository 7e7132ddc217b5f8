"""Real workloads on the cluster: Jobs, pod DNS, rollouts and volumes.

They run the locally built trainer image (`make images`); on another cluster,
point KUBETRAIN_TRAINER_IMAGE at an image with python3 that the cluster has.
"""

from __future__ import annotations

import time

import pytest
from kubecluster import Kubectl, container, pod_failure, python_output, python_pod

pytestmark = pytest.mark.cluster

SLEEP = ["python3", "-c", "import time; time.sleep(3600)"]


def test_job_runs_python_from_trainer_image(namespace: Kubectl) -> None:
    namespace.apply(
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": "print-one"},
            "spec": {
                "backoffLimit": 0,
                "template": {
                    "metadata": {"labels": {"app": "print-one"}},
                    "spec": {
                        "restartPolicy": "Never",
                        "containers": [container("python", ["python3", "-c", "print(1)"])],
                    },
                },
            },
        }
    )
    try:
        job = namespace.wait_for(
            "job print-one",
            lambda j: j.get("status", {}).get("succeeded") or j.get("status", {}).get("failed"),
            timeout=180,
        )
    except AssertionError as err:
        raise AssertionError(f"{err}\n{pod_failure(namespace, 'app=print-one')}") from None
    assert job["status"].get("succeeded") == 1, pod_failure(namespace, "app=print-one")
    assert namespace("logs", "job/print-one").stdout.strip() == "1"


def test_pod_resolves_pod_through_headless_service(namespace: Kubectl) -> None:
    ns = namespace.namespace
    namespace.apply(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "workers"},
            "spec": {
                "clusterIP": "None",
                "selector": {"app": "dns-target"},
                "ports": [{"name": "grpc", "port": 2222}],
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "worker-0", "labels": {"app": "dns-target"}},
            "spec": {
                "hostname": "worker-0",
                "subdomain": "workers",
                "containers": [container("sleep", SLEEP)],
            },
        },
    )
    target = namespace.wait_for(
        "pod worker-0", lambda p: p.get("status", {}).get("podIP") and _ready(p), timeout=120
    )
    fqdn = f"worker-0.workers.{ns}.svc.cluster.local"
    resolve = (
        "import socket, sys, time\n"
        "for _ in range(60):\n"
        "    try:\n"
        f"        print(socket.gethostbyname({fqdn!r})); sys.exit(0)\n"
        "    except OSError:\n"
        "        time.sleep(1)\n"
        "sys.exit(1)\n"
    )
    namespace.apply(python_pod("client", resolve))
    assert python_output(namespace, "client") == target["status"]["podIP"]


def _ready(pod: dict) -> bool:
    return any(
        c["type"] == "Ready" and c["status"] == "True"
        for c in pod.get("status", {}).get("conditions", [])
    )


def test_deployment_rolls_with_max_unavailable_zero(namespace: Kubectl) -> None:
    def deployment(revision: str) -> dict:
        return {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "web"}},
                "strategy": {
                    "type": "RollingUpdate",
                    "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
                },
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {
                        "terminationGracePeriodSeconds": 1,
                        "containers": [
                            container(
                                "web",
                                SLEEP,
                                env=[{"name": "REVISION", "value": revision}],
                                readinessProbe={"exec": {"command": ["true"]}, "periodSeconds": 1},
                            )
                        ],
                    },
                },
            },
        }

    def rolled_out(d: dict) -> bool:
        s = d.get("status", {})
        return (
            s.get("observedGeneration") == d["metadata"]["generation"]
            and s.get("updatedReplicas") == 2
            and s.get("availableReplicas") == 2
            and s.get("replicas") == 2
        )

    namespace.apply(deployment("one"))
    namespace.wait_for("deployment web", rolled_out, timeout=180)
    first = _replicasets(namespace)
    assert len(first) == 1

    namespace.apply(deployment("two"))
    # While the controller rolls, availability never drops below the 2 replicas.
    deadline = time.monotonic() + 180
    while True:
        d = namespace.json("get", "deployment", "web")
        if d["metadata"]["generation"] == d["status"].get("observedGeneration"):
            assert d["status"].get("availableReplicas", 0) >= 2, d["status"]
        if rolled_out(d) and d["metadata"]["generation"] == 2:
            break
        assert time.monotonic() < deadline, f"rollout did not finish: {d['status']}"
        time.sleep(0.5)

    sets = _replicasets(namespace)
    assert len(sets) == 2, sets
    by_revision = {
        rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"]: rs for rs in sets
    }
    old, new = by_revision["1"], by_revision["2"]
    assert old["metadata"]["name"] == first[0]["metadata"]["name"]
    assert old["spec"]["replicas"] == 0
    assert new["spec"]["replicas"] == 2 and new["status"].get("readyReplicas") == 2
    for rs in sets:
        owner = rs["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["name"]) == ("Deployment", "web")


def _replicasets(ns: Kubectl) -> list[dict]:
    return ns.json("get", "replicasets", "-l", "app=web")["items"]


def test_persistent_volume_claim_binds(namespace: Kubectl) -> None:
    namespace.apply(
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "checkpoints"},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "64Mi"}},
            },
        },
        python_pod(
            "writer",
            "open('/data/ckpt', 'w').write('saved'); print(open('/data/ckpt').read())",
            volumeMounts=[{"name": "data", "mountPath": "/data"}],
            volumes=[{"name": "data", "persistentVolumeClaim": {"claimName": "checkpoints"}}],
        ),
    )
    try:
        pvc = namespace.wait_for(
            "pvc checkpoints", lambda c: c.get("status", {}).get("phase") == "Bound", timeout=180
        )
    except AssertionError as err:
        raise AssertionError(f"{err}\n{pod_failure(namespace, 'app=writer')}") from None
    assert pvc["spec"]["volumeName"]
    assert python_output(namespace, "writer") == "saved"


def test_pod_reaches_api_server_with_its_service_account_token(namespace: Kubectl) -> None:
    # What an in-cluster client (the operator) does: the kubernetes Service's name
    # through cluster DNS, its ClusterIP through kube-proxy, TLS with the cluster
    # CA and a token the API server signed.
    call = (
        "import json, ssl, urllib.request\n"
        "sa = '/var/run/secrets/kubernetes.io/serviceaccount'\n"
        "ctx = ssl.create_default_context(cafile=sa + '/ca.crt')\n"
        "token = open(sa + '/token').read()\n"
        "req = urllib.request.Request('https://kubernetes.default.svc/version',\n"
        "                             headers={'Authorization': 'Bearer ' + token})\n"
        "print(json.load(urllib.request.urlopen(req, context=ctx, timeout=30))['gitVersion'])\n"
    )
    namespace.apply(python_pod("in-cluster", call))
    server = namespace.json("version")["serverVersion"]["gitVersion"]
    assert python_output(namespace, "in-cluster") == server

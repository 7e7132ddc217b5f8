"""The whole story on a real cluster, as a user meets it (issue 6).

    helm install -> operator Ready -> apply examples/mnist.yaml -> progress, Succeeded,
    Promoted -> the served model reads a 7 through the serving Service -> uninstall leaves
    nothing behind.

Real pods run the real images (`make images`: localhost/kubetrain-{operator,trainer}:dev).
The release watches only its own namespace, so operators of other tests sharing the
cluster never see its jobs. Wall times of each step go to runs/e2e/report.json.

It trains for minutes, so it runs when asked: KUBETRAIN_E2E=1 (after `make images`).
"""

from __future__ import annotations

import copy
import json
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import yaml
from charttools import CHART, REPO, Tools
from kubecluster import Kubectl

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("KUBETRAIN_E2E") != "1",
        reason="end-to-end run on a cluster: set KUBETRAIN_E2E=1 (needs `make images`)",
    ),
]

TRAINER_IMAGE = "localhost/kubetrain-trainer:dev"
REPORT = REPO / "runs" / "e2e" / "report.json"
# Two epochs: short, and long enough that progress shows while the job runs.
EPOCHS = 2
TRAIN_TIMEOUT = 1800  # 2 workers sharing 2 busy cores


@dataclass
class Release:
    name: str
    namespace: str
    kubectl: Kubectl
    tools: Tools
    kubeconfig: str
    times: dict[str, float] = field(default_factory=dict)

    def helm(self, *args: str) -> None:
        done = self.tools.helm_run(
            *args, "--kubeconfig", self.kubeconfig, "--namespace", self.namespace, timeout=600
        )
        assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture(scope="module")
def release(kubeconfig: str, tools: Tools) -> Iterator[Release]:
    suffix = uuid.uuid4().hex[:6]
    namespace = f"kt-e2e-{suffix}"
    kubectl = Kubectl(kubeconfig)
    kubectl("create", "namespace", namespace)
    rel = Release(
        f"kubetrain-{suffix}", namespace, Kubectl(kubeconfig, namespace), tools, kubeconfig
    )
    try:
        yield rel
    finally:
        REPORT.parent.mkdir(parents=True, exist_ok=True)
        REPORT.write_text(json.dumps(rel.times, indent=1) + "\n")
        # Whatever a failed test left: jobs first, while the operator can still remove
        # its finalizer from them.
        rel.kubectl("delete", "trainingjobs", "--all", "--timeout=120s", check=False)
        rel.tools.helm_run(
            "uninstall", rel.name, "--kubeconfig", kubeconfig, "--namespace", namespace
        )
        kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def timed(times: dict[str, float], step: str, since: float) -> None:
    times[step] = round(time.monotonic() - since, 1)


def test_1_install_makes_the_operator_ready(release: Release) -> None:
    start = time.monotonic()
    # No --wait: it would also wait for the models claim to bind, which a WaitForFirstConsumer
    # StorageClass (the local cluster's, most clouds') does only once a job's pod uses it.
    release.helm("install", release.name, str(CHART), "--set", "watch.allNamespaces=false")
    release.kubectl(
        "rollout", "status", f"deployment/{release.name}", "--timeout=300s", timeout=330
    )
    timed(release.times, "install_to_operator_ready_s", start)
    deployment = release.kubectl.json("get", "deployment", release.name)
    assert deployment["status"].get("readyReplicas") == 1
    # The models claim is there (it may bind only when the first pod uses it).
    release.kubectl("get", "pvc", "kubetrain-models")
    # kopf started with the rights it needs: no "forbidden" in its log.
    log = release.kubectl("logs", f"deployment/{release.name}").stdout
    assert "forbidden" not in log.lower(), log[-3000:]


def mnist_job() -> dict:
    job = yaml.safe_load((REPO / "examples" / "mnist.yaml").read_text())
    job = copy.deepcopy(job)
    job["spec"]["training"]["epochs"] = EPOCHS
    job["spec"]["promotion"]["replicas"] = 1
    return job


def test_2_mnist_trains_is_promoted_and_reads_a_seven(release: Release) -> None:
    kubectl = release.kubectl
    start = time.monotonic()
    kubectl.apply(mnist_job())
    seen_progress = None
    phases: list[str] = []
    deadline = start + TRAIN_TIMEOUT
    status: dict = {}
    while time.monotonic() < deadline:
        status = kubectl.json("get", "trainingjob", "mnist").get("status") or {}
        phase = status.get("phase")
        if phase and (not phases or phases[-1] != phase):
            phases.append(phase)
            timed(release.times, f"apply_to_{phase.lower()}_s", start)
        if phase == "Running" and status.get("epoch") and seen_progress is None:
            seen_progress = kubectl("get", "trainingjobs").stdout
        if phase in ("Promoted", "Failed") or (
            phase == "Succeeded"
            and any(
                c["type"] == "Promoted" and c["status"] == "False"
                for c in status.get("conditions") or []
            )
        ):
            break
        time.sleep(2)
    assert status.get("phase") == "Promoted", json.dumps(status, indent=1)[:4000]
    assert seen_progress, f"no epoch progress seen while Running; phases {phases}"
    assert f"1/{EPOCHS}" in seen_progress or f"{EPOCHS}/{EPOCHS}" in seen_progress
    table = kubectl("get", "trainingjobs").stdout
    assert "Promoted" in table and "mnist-serving:1" in table
    assert status["serving"]["version"] == 1
    assert status["bestCheckpoint"]["value"] > 0.9  # val accuracy of the dense net

    # A client pod in the namespace asks the serving Service, by its DNS name.
    start = time.monotonic()
    digit = (REPO / "examples" / "digit-7.json").read_text()
    client = (
        "import json, os, urllib.request\n"
        "req = urllib.request.Request('http://mnist-serving:8501/v1/models/mnist:predict',\n"
        "    data=os.environ['BODY'].encode(), headers={'Content-Type': 'application/json'})\n"
        "print(urllib.request.urlopen(req, timeout=30).read().decode())\n"
    )
    kubectl.apply(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "predict",
                "labels": {"app.kubernetes.io/part-of": "kubetrain-e2e"},
            },
            "spec": {
                "restartPolicy": "Never",
                "automountServiceAccountToken": False,
                "containers": [
                    {
                        "name": "client",
                        "image": TRAINER_IMAGE,
                        "imagePullPolicy": "IfNotPresent",
                        "command": ["python", "-c", client],
                        "env": [{"name": "BODY", "value": digit}],
                        "securityContext": {
                            "allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"]},
                        },
                    }
                ],
            },
        }
    )
    pod = kubectl.wait_for(
        "pod predict", lambda p: p["status"].get("phase") in ("Succeeded", "Failed"), timeout=180
    )
    answer = kubectl("logs", "predict").stdout
    assert pod["status"]["phase"] == "Succeeded", answer
    timed(release.times, "predict_s", start)
    (probabilities,) = json.loads(answer)["predictions"]
    assert max(range(10), key=lambda d: probabilities[d]) == 7, probabilities


def test_7_uninstall_leaves_no_pods_services_or_deployments(release: Release) -> None:
    kubectl = release.kubectl
    start = time.monotonic()
    kubectl("delete", "trainingjobs", "--all", "--timeout=120s")
    kubectl("delete", "pod", "predict", "--ignore-not-found", "--wait=false")
    # Serving Deployments outlive the jobs on purpose; they go by their label.
    kubectl(
        "delete",
        "deployment,service",
        "-l",
        "app.kubernetes.io/managed-by=kubetrain-operator",
        "--timeout=120s",
    )
    release.helm("uninstall", release.name, "--wait", "--timeout", "3m")
    timed(release.times, "uninstall_s", start)

    def nothing_left(listing: dict) -> bool:
        return not [i for i in listing["items"] if i["kind"] in ("Pod", "Service", "Deployment")]

    kubectl.wait_for("pods,services,deployments", nothing_left, timeout=120)
    roles = release.kubectl.json("get", "clusterroles,clusterrolebindings")["items"]
    assert not [
        r["metadata"]["name"] for r in roles if r["metadata"]["name"].startswith(release.name)
    ]
    # Only the models claim stays, on purpose (storage.keepOnUninstall).
    claims = kubectl.json("get", "pvc")["items"]
    assert [c["metadata"]["name"] for c in claims] == ["kubetrain-models"]

"""Jobs on a cluster of three nodes (the `several_nodes` fixture): real workers spread over
them, a node lost under a running job, and a node cut off from the control plane.

The operator in-process, stand-in workers (`standins.py`) keeping their state in the local
cluster's S3 store, since a volume of one node is out of reach from the others. A node is lost
with `hack/cluster/node.sh stop` (its kubelet, containerd and pods killed, as by a power cut),
or partitioned with `node.sh isolate` (the API server out of its reach, its pods running on).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubecluster import (
    CLUSTER_DIR,
    REPO,
    STATE,
    Kubectl,
    bucket_listing,
    bucket_text,
    cluster_s3,
    python_output,
    s3_secret,
)
from kubetrain.operator.manifests import WORKER_CONTAINER
from kubetrain.operator.settings import SETTINGS
from kubetrain.trainer.api.entrypoints import WORKER_COMMAND
from kubetrain.trainer.api.layout import FENCE_FILE
from standins import worker_command
from test_autoscaling import load_pod
from test_operator_cluster import events, operator, pods, trainingjob

pytestmark = pytest.mark.cluster

REPORT = REPO / "runs" / "node-loss" / "report.json"
EPOCH_SECONDS = 2.0


@pytest.fixture
def extra_nodes(several_nodes: list[str]) -> list[str]:
    """The nodes besides the first (which also runs the control plane): those can be lost."""
    return several_nodes[1:]


@pytest.fixture
def storage(ns: Kubectl) -> dict:
    s3 = cluster_s3()
    if s3 is None:
        pytest.skip("needs the local cluster's S3 server")
    ns.apply(s3_secret("s3-credentials", s3))
    return {
        "claimName": None,
        "uri": f"s3://{s3['KUBETRAIN_S3_BUCKET']}/{ns.namespace}",
        "secretName": "s3-credentials",
    }


def node_script(action: str, node: str) -> None:
    done = subprocess.run(
        [str(CLUSTER_DIR / "node.sh"), action, node],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, f"node.sh {action} {node}: {done.stderr[-3000:]}"


def undone_at_the_end(kubectl: Kubectl, action: str) -> Iterator[list[str]]:
    """The nodes a test lists get `node.sh action` at its end, whatever happened."""
    nodes: list[str] = []
    yield nodes
    for node in nodes:
        node_script(action, node)
        kubectl("wait", "--for=condition=Ready", f"node/{node}", "--timeout=180s")


@pytest.fixture
def lose(kubectl: Kubectl) -> Iterator[list[str]]:
    """Nodes the test stops are started again."""
    yield from undone_at_the_end(kubectl, "start")


@pytest.fixture
def isolate(kubectl: Kubectl) -> Iterator[list[str]]:
    """Nodes the test cuts off from the control plane are healed."""
    yield from undone_at_the_end(kubectl, "heal")


@pytest.fixture
def pool(kubectl: Kubectl, extra_nodes: list[str]) -> Iterator[dict[str, str]]:
    """A label on the nodes besides the first, as a nodeSelector for jobs that must run there
    (only those can be cut off); removed at the end."""
    label = "kubetrain.io/test-pool"
    kubectl("label", "--overwrite", "node", *extra_nodes, f"{label}=extra")
    yield {label: "extra"}
    kubectl("label", "node", *extra_nodes, f"{label}-")


def pod_log_file(node: str, namespace: str, pod: dict) -> Path:
    """A container's log as its node's kubelet writes it (podLogsDir), readable here even
    while that kubelet cannot reach the API server."""
    meta = pod["metadata"]
    folder = f"{namespace}_{meta['name']}_{meta['uid']}"
    return STATE / "nodes" / node / "pod-logs" / folder / WORKER_CONTAINER / "0.log"


def wait_for_text(path: Path, text: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    content = ""
    while time.monotonic() < deadline:
        content = path.read_text(errors="replace") if path.is_file() else ""
        if text in content:
            return content
        time.sleep(1)
    raise AssertionError(f"{text!r} not in {path} after {timeout}s:\n{content[-3000:]}")


def finished(ns: Kubectl, job: str) -> dict:
    return ns.wait_for(
        f"tj {job}",
        lambda tj: tj["status"].get("phase") in ("Succeeded", "Failed"),
        timeout=600,
    )


def attempt_pods(ns: Kubectl, job: str, attempt: int) -> list[dict]:
    return [
        p for p in pods(ns, job) if p["metadata"]["labels"]["kubetrain.io/attempt"] == str(attempt)
    ]


def test_a_lost_node_restarts_the_job_on_the_others_from_its_last_checkpoint(
    ns: Kubectl, extra_nodes: list[str], storage: dict, lose: list[str]
) -> None:
    epochs = 30
    with operator(ns, worker_command(epoch_seconds=EPOCH_SECONDS)):
        ns.apply(
            trainingjob(
                "sturdy", training={"epochs": epochs}, workers={"replicas": 3}, storage=storage
            )
        )
        running = ns.wait_for(
            "tj sturdy",
            lambda tj: (
                (tj.get("status") or {}).get("phase") == "Running"
                and (tj["status"].get("epoch") or 0) >= 2
            ),
            timeout=240,
        )
        placed = running["status"]["workers"]["nodes"]
        assert len(set(placed)) == 3, placed  # one worker per node while three are there
        victim = next(node for node in placed[1:] if node in extra_nodes)
        epoch_at_loss = running["status"]["epoch"]

        started = time.monotonic()
        lose.append(victim)
        node_script("stop", victim)
        restarted = ns.wait_for(
            "tj sturdy", lambda tj: (tj["status"].get("restarts") or 0) >= 1, timeout=240
        )
        noticed = time.monotonic() - started
        ns.wait_for(
            "tj sturdy",
            lambda tj: (
                tj["status"].get("launchedAttempt") == 1 and tj["status"].get("phase") == "Running"
            ),
            timeout=240,
        )
        running_again = time.monotonic() - started
        # Training resumed: the new attempt's chief reported an epoch of its own.
        ns.wait_for(
            "tj sturdy",
            lambda tj: (
                tj["status"].get("restarts") == 1
                and (tj["status"].get("epoch") or 0) > epoch_at_loss
            ),
            timeout=240,
        )
        resumed = time.monotonic() - started
        done = finished(ns, "sturdy")

    status = done["status"]
    assert status["phase"] == "Succeeded", json.dumps(status, indent=1)
    assert status["restarts"] == 1, json.dumps(status, indent=1)
    assert f"lost with its node {victim}" in restarted["status"]["lastFailure"]
    assert ("NodeLost", f"node {victim} is not Ready: its workers are lost") in events(ns, "sturdy")
    # The new attempt ran on the nodes that were left.
    assert victim not in status["workers"]["nodes"], status["workers"]
    log = ns("logs", "sturdy-worker-0").stdout
    from_epoch = int(log.split("from epoch", 1)[1].split()[0])
    # Epochs trained again: those after the last one reported before the restart that the
    # new attempt did not resume past. (A stand-in chief on a surviving node trains on alone
    # until it is stopped, so it may resume past that epoch; a real one waits for the lost
    # worker's all-reduce.)
    last_epoch = restarted["status"]["epoch"]
    lost_epochs = max(0, last_epoch + 1 - from_epoch)
    assert from_epoch > epoch_at_loss, (epoch_at_loss, from_epoch)
    assert lost_epochs <= 1, (last_epoch, from_epoch)

    # Back: the node rejoins, and nothing of the old attempt is left, in the API or on it.
    node_script("start", victim)
    lose.remove(victim)
    ns("wait", "--for=condition=Ready", f"node/{victim}", "--timeout=180s")
    assert attempt_pods(ns, "sturdy", 0) == []
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(
        json.dumps(
            {
                "node_lost_to_job_restarted_s": round(noticed, 1),
                "node_lost_to_workers_running_s": round(running_again, 1),
                "node_lost_to_training_resumed_s": round(resumed, 1),
                "epoch_seconds": EPOCH_SECONDS,
                "epochs_lost": lost_epochs,
            },
            indent=1,
        )
        + "\n"
    )


def test_three_real_workers_on_three_nodes_train_and_promote_with_no_shared_volume(
    ns: Kubectl, several_nodes: list[str], storage: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trainer itself (MultiWorkerMirroredStrategy) with one worker per node: its
    all-reduce crosses the nodes' network, its state is all in the bucket."""
    # The local cluster's policy enforcer (kube-router) programs a new or terminating pod's
    # rules a moment after kube-proxy routes to it: with a serving NetworkPolicy, a rollout
    # over several nodes refused a few connections (8 to 10 of 300 to 800). Without one, none.
    monkeypatch.setattr(SETTINGS, "network_policies", False)
    job = trainingjob(
        "spread",
        dataset={"name": "mnist", "source": "data/mnist", "limit": 6000},
        training={"epochs": 2, "batchSize": 256, "learningRate": 0.003},
        workers={"replicas": 3, "spread": "Required"},
        storage=storage,
        promotion={"enabled": True, "deployment": "spread-serving", "replicas": 1},
    )
    with operator(ns, list(WORKER_COMMAND)):
        ns.apply(job)
        running = ns.wait_for(
            "tj spread",
            # A worker not placed yet has node "": three names, none of them empty.
            lambda tj: (
                len(set((tj.get("status") or {}).get("workers", {}).get("nodes") or []) - {""}) == 3
            ),
            timeout=300,
        )
        done = ns.wait_for(
            "tj spread",
            lambda tj: (
                tj["status"].get("phase") in ("Promoted", "Failed")
                or any(c["type"] == "Promoted" for c in tj["status"].get("conditions") or [])
            ),
            timeout=900,
        )
    status = done["status"]
    assert status["phase"] == "Promoted", json.dumps(status, indent=1)
    assert sorted(running["status"]["workers"]["nodes"]) == several_nodes
    assert status["restarts"] == 0
    assert status["bestCheckpoint"]["value"] > 0.8  # validation accuracy after 2 epochs
    assert status["model"]["path"] == f"{storage['uri']}/models/digits/1"

    # A better model (a stand-in's) rolls out to the serving pods under load: every request
    # is answered while the pods change.
    ns.apply(load_pod(until_version=2, deployment="spread-serving"))
    with operator(ns, worker_command(epoch_seconds=0.5, val_accuracy=0.999, version=2)):
        ns.apply(
            trainingjob(
                "better",
                training={"epochs": 1},
                workers={"replicas": 1},
                storage=storage,
                promotion={"enabled": True, "deployment": "spread-serving", "replicas": 1},
            )
        )
        better = ns.wait_for(
            "tj better",
            lambda tj: tj.get("status", {}).get("served") == "spread-serving:2",
            timeout=300,
        )
    assert better["status"]["serving"]["previousVersion"] == 1, better["status"]
    answered = json.loads(python_output(ns, "load", timeout=300))
    assert answered["failed"] == 0 and answered["versions"] == [1, 2], answered
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    (REPORT.parent / "three-nodes.json").write_text(
        json.dumps(
            {
                "workers": 3,
                "nodes": 3,
                "cores_on_the_machine": os.cpu_count(),
                "examples_per_second": status.get("examplesPerSecond"),
            }
        )
        + "\n"
    )


def test_a_chief_cut_off_from_the_control_plane_is_fenced_and_publishes_nothing(
    ns: Kubectl,
    extra_nodes: list[str],
    pool: dict[str, str],
    storage: dict,
    isolate: list[str],
) -> None:
    """A partition: the chief's node loses the API server but not the storage. The cluster
    gives up on its pods and the job restarts elsewhere, while the old chief trains on,
    unseen. The new attempt's claim fences it: it stops at its next checkpoint and never
    publishes, so the one model version is the new attempt's."""
    s3 = cluster_s3()
    assert s3 is not None
    with operator(ns, worker_command(epoch_seconds=EPOCH_SECONDS)):
        ns.apply(
            trainingjob(
                "fenced",
                # Long enough that the old chief is still training when the new one starts.
                training={"epochs": 90},
                workers={"replicas": 2, "nodeSelector": pool},
                storage=storage,
            )
        )
        running = ns.wait_for(
            "tj fenced",
            lambda tj: (
                (tj.get("status") or {}).get("phase") == "Running"
                and (tj["status"].get("epoch") or 0) >= 2
            ),
            timeout=240,
        )
        chief_node = running["status"]["workers"]["nodes"][0]
        assert chief_node in extra_nodes, running["status"]["workers"]
        old_chief = ns.json("get", "pod", "fenced-worker-0")
        isolate.append(chief_node)
        node_script("isolate", chief_node)

        restarted = ns.wait_for(
            "tj fenced", lambda tj: (tj["status"].get("restarts") or 0) >= 1, timeout=240
        )
        assert f"lost with its node {chief_node}" in restarted["status"]["lastFailure"]
        # The old chief, still running on the isolated node, meets the new attempt's record.
        log = wait_for_text(
            pod_log_file(chief_node, ns.namespace, old_chief), "fenced:", timeout=120
        )
        done = finished(ns, "fenced")

    status = done["status"]
    assert status["phase"] == "Succeeded", json.dumps(status, indent=1)
    assert status["restarts"] == 1, json.dumps(status, indent=1)
    assert "attempt 1 of this job has started since attempt 0" in log
    assert chief_node not in status["workers"]["nodes"], status["workers"]
    # One model version, one fence record, both of attempt 1.
    prefix = storage["uri"].removeprefix("s3://")
    keys = bucket_listing(s3, prefix).split()
    versions = {k.split("/models/digits/", 1)[1].split("/")[0] for k in keys if "/models/" in k}
    assert versions == {"1"}, keys
    fence = next(k for k in keys if k.endswith("/" + FENCE_FILE))
    assert bucket_text(s3, fence).strip() == "1"

    # Healed: the kubelet learns its pods were deleted and stops them; nothing is left.
    node_script("heal", chief_node)
    isolate.remove(chief_node)
    ns("wait", "--for=condition=Ready", f"node/{chief_node}", "--timeout=180s")
    assert attempt_pods(ns, "fenced", 0) == []

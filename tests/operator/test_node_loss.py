"""Jobs on a cluster of three nodes (the `several_nodes` fixture): real workers spread over
them, and a node lost under a running job.

The operator in-process, stand-in workers (`standins.py`) keeping their state in the local
cluster's S3 store, since a volume of one node is out of reach from the others. A node is lost
with `hack/cluster/node.sh stop` (its kubelet, containerd and pods killed, as by a power cut).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator

import pytest
from kubecluster import CLUSTER_DIR, REPO, Kubectl, cluster_s3, s3_secret
from kubetrain.trainer.api.entrypoints import WORKER_COMMAND
from standins import worker_command
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


@pytest.fixture
def lose(kubectl: Kubectl) -> Iterator[list[str]]:
    """Nodes the test stops are started again at its end, whatever happened."""
    lost: list[str] = []
    yield lost
    for node in lost:
        node_script("start", node)
        kubectl("wait", "--for=condition=Ready", f"node/{node}", "--timeout=180s")


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
        done = ns.wait_for(
            "tj sturdy",
            lambda tj: tj["status"].get("phase") in ("Succeeded", "Failed"),
            timeout=600,
        )

    status = done["status"]
    assert status["phase"] == "Succeeded", json.dumps(status, indent=1)
    assert status["restarts"] == 1, status
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
    ns: Kubectl, several_nodes: list[str], storage: dict
) -> None:
    """The trainer itself (MultiWorkerMirroredStrategy) with one worker per node: its
    all-reduce crosses the nodes' network, its state is all in the bucket."""
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
            lambda tj: (
                len(set((tj.get("status") or {}).get("workers", {}).get("nodes") or [])) == 3
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

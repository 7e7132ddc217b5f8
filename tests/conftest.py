from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from datasets import write_mnist
from kubecluster import Cluster, Kubectl, start_local_cluster
from s3server import S3Server

pytest_plugins = ["kubecluster", "charttools"]

NODES = 3
"""Nodes of the cluster the tests of several nodes need (spreading, a lost node)."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests of several nodes run last: the session's cluster grows for them only after
    every single-node suite has run on one node."""
    items.sort(key=lambda item: "several_nodes" in getattr(item, "fixturenames", ()))


@pytest.fixture(scope="session")
def several_nodes(kube_cluster: Cluster, pytestconfig: pytest.Config) -> list[str]:
    """The cluster's node names, the first (control-plane) node first. The local cluster gains
    the nodes it lacks here (hack/cluster/up.sh with KUBETRAIN_CLUSTER_NODES); another cluster
    must have them."""
    if kube_cluster.local:
        os.environ["KUBETRAIN_CLUSTER_NODES"] = str(NODES)
        start_local_cluster(pytestconfig)
    nodes = Kubectl(kube_cluster.kubeconfig).json("get", "nodes")["items"]
    names = sorted(n["metadata"]["name"] for n in nodes)
    if len(names) < NODES:
        pytest.skip(f"needs a cluster of {NODES} nodes; this one has {len(names)}")
    return names


@pytest.fixture(scope="session")
def tiny_mnist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MNIST directory in the real IDX format, small enough to train on in seconds."""
    return write_mnist(tmp_path_factory.mktemp("mnist"))


@pytest.fixture
def job_document(tiny_mnist: Path) -> dict:
    """A TrainingJob as a user writes it, pointing at the tiny dataset."""
    return {
        "apiVersion": "kubetrain.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": "tiny"},
        "spec": {
            "dataset": {"name": "mnist", "source": str(tiny_mnist)},
            "model": {"architecture": "mnist-dense"},
            "training": {"epochs": 3, "batchSize": 64, "learningRate": 0.003},
            "workers": {"replicas": 2},
        },
    }


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real S3 server (versitygw) on loopback for the session; its data and log stay in
    pytest's temporary directory for a look after a failure."""
    with S3Server(tmp_path_factory.mktemp("s3")) as server:
        yield server

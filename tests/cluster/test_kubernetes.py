"""The cluster itself: a Ready node, a ready API server, and RBAC that holds."""

from __future__ import annotations

import subprocess

import pytest
from kubecluster import Cluster, Kubectl, mint_kubeconfig

pytestmark = pytest.mark.cluster


def test_node_is_ready(kubectl: Kubectl) -> None:
    nodes = kubectl.json("get", "nodes")["items"]
    assert nodes, "the cluster has no node"
    for node in nodes:
        ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"]
        assert ready == "True", f"node {node['metadata']['name']} is not Ready"


def test_api_server_readyz(kubectl: Kubectl) -> None:
    assert kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"


def test_server_reports_a_real_release(kubectl: Kubectl) -> None:
    version = kubectl.json("version")["serverVersion"]
    assert version["gitVersion"].startswith("v1."), version
    assert version["major"] == "1"


def test_default_storage_class(kubectl: Kubectl) -> None:
    classes = kubectl.json("get", "storageclass")["items"]
    defaults = [
        c["metadata"]["name"]
        for c in classes
        if c["metadata"].get("annotations", {}).get("storageclass.kubernetes.io/is-default-class")
        == "true"
    ]
    assert len(defaults) == 1, classes


def test_minted_kubeconfig_is_restricted(kube_cluster: Cluster, kubectl: Kubectl, tmp_path) -> None:
    path = tmp_path / "viewer.kubeconfig"
    path.write_text(mint_kubeconfig(kube_cluster, "kubetrain-test-viewer"))
    viewer = Kubectl(str(path))

    denied = viewer("get", "pods", "-n", "default", check=False)
    assert denied.returncode != 0 and "forbidden" in denied.stderr.lower(), denied.stderr

    # RBAC grants exactly what is bound, and nothing more.
    kubectl(
        "create",
        "clusterrolebinding",
        "kubetrain-test-viewer",
        "--clusterrole=view",
        "--user=kubetrain-test-viewer",
    )
    try:
        assert viewer("get", "pods", "-n", "default").returncode == 0
        assert viewer("auth", "can-i", "create", "pods", check=False).stdout.strip() == "no"
    finally:
        kubectl("delete", "clusterrolebinding", "kubetrain-test-viewer", check=False)


def test_pod_network_has_no_uplink(kube_cluster: Cluster) -> None:
    if not kube_cluster.local:
        pytest.skip("checks the local cluster's node")
    rules = subprocess.run(
        ["iptables", "-t", "mangle", "-S", "FORWARD"], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    # Checked before anything kube-proxy adds to the filter table's FORWARD.
    assert rules[1] == "-A FORWARD -j KUBETRAIN-ISOLATE", rules
    nat = subprocess.run(
        ["iptables-save", "-t", "nat"], capture_output=True, text=True, check=True
    ).stdout
    # No masquerading of pod traffic except kube-proxy's own, marked, service hairpin.
    assert "CNI-" not in nat, "the CNI bridge must not masquerade pod traffic"

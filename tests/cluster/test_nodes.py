"""A cluster of several nodes: `make cluster NODES=3`; in a test session the `several_nodes`
fixture grows the local cluster to three nodes once the single-node suites have run.

Each node past the first is a kubelet with its own containerd, kube-proxy and kube-router in a
network namespace of its own (hack/cluster/node.sh); pods on different nodes reach each other
only through routes between the nodes, as on separate machines. With one node these skip.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubecluster import CLUSTER_DIR, IMAGE, STATE, Cluster, Kubectl, fresh_namespace

pytestmark = pytest.mark.cluster

BUSYBOX = "localhost/kubetrain-busybox:1"
PORT = 8080
S3_HEALTH = "http://10.244.0.1:7070/healthz"  # the local cluster's S3 server (hack/cluster/up.sh)
POD_SECURITY = "pod-security.kubernetes.io/enforce"
LOCAL_KUBECONFIG = (STATE / "pki" / "admin.kubeconfig").resolve()


@pytest.fixture(scope="module")
def nodes(several_nodes: list[str]) -> list[str]:
    """The cluster's node names, the first node first (the session grows it to three)."""
    return several_nodes


@pytest.fixture
def restricted(kubectl: Kubectl) -> Iterator[Kubectl]:
    """A fresh namespace where the API server admits only pods of the restricted standard."""
    with fresh_namespace(kubectl, "kt-nodes") as ns:
        kubectl("label", "namespace", ns.namespace, f"{POD_SECURITY}=restricted")
        yield ns


def pod(name: str, node: str, image: str, command: list[str], **spec) -> dict:
    """A pod pinned to `node`, within the restricted Pod Security standard."""
    labels = spec.pop("labels", {})
    container = spec.pop("container", {})
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name, **labels}},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node},
            "restartPolicy": "Never",
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 65534,
                "runAsGroup": 65534,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": "main",
                    "image": image,
                    "imagePullPolicy": "Never",
                    "command": command,
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                    },
                    **container,
                }
            ],
            **spec,
        },
    }


def web_server(name: str, node: str, **spec) -> dict:
    """busybox httpd on PORT, answering `hello from NAME`; Ready once it listens."""
    script = (
        f"mkdir -p /tmp/www && echo 'hello from {name}' >/tmp/www/index.html"
        f" && exec httpd -f -p {PORT} -h /tmp/www"
    )
    return pod(
        name,
        node,
        BUSYBOX,
        ["sh", "-c", script],
        container={"readinessProbe": {"tcpSocket": {"port": PORT}, "periodSeconds": 1}},
        **spec,
    )


# Fetches each URL (retrying for up to 60 s: a new pod's DNS name and a Service's rules take
# a moment) and prints {name: "ok <body>" | "failed <error>"} as JSON. The API server is
# called as an in-cluster client does: its CA and the pod's service-account token.
FETCH = """
import json, ssl, sys, time, urllib.request
SA = "/var/run/secrets/kubernetes.io/serviceaccount"
api = ssl.create_default_context(cafile=SA + "/ca.crt")
results = {}
for name, url in json.loads(sys.argv[1]).items():
    request = urllib.request.Request(url)
    context = None
    if url.startswith("https://"):
        request.add_header("Authorization", "Bearer " + open(SA + "/token").read())
        context = api
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(request, timeout=3, context=context) as response:
                results[name] = "ok " + response.read(200).decode().strip()
            break
        except Exception as err:
            if time.monotonic() > deadline:
                results[name] = f"failed {err!r}"
                break
            time.sleep(1)
print(json.dumps(results))
"""

# Prints `open` once it connects to argv[1]:argv[2] within 20 s, else `blocked`.
DIAL = """
import socket, sys, time
deadline = time.monotonic() + 20
while time.monotonic() < deadline:
    try:
        socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2).close()
        print("open"); break
    except OSError:
        time.sleep(1)
else:
    print("blocked")
"""


def ready(ns: Kubectl, name: str) -> dict:
    return ns.wait_for(
        f"pod {name}",
        lambda p: any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in p.get("status", {}).get("conditions", [])
        ),
        timeout=180,
    )


def output(ns: Kubectl, name: str) -> str:
    """What a run-once pod printed; it must have succeeded."""
    pod_ = ns.wait_for(
        f"pod {name}",
        lambda p: p.get("status", {}).get("phase") in ("Succeeded", "Failed"),
        timeout=240,
    )
    logs = ns("logs", name, check=False)
    assert pod_["status"]["phase"] == "Succeeded", (
        logs.stdout + logs.stderr + ns("describe", "pod", name, check=False).stdout[-2500:]
    )
    return logs.stdout.strip()


def wait_ready(kubectl: Kubectl, node: str, ready_: bool, timeout: float) -> None:
    """Until the node's Ready condition is True (ready_) or anything else (not ready_)."""
    kubectl.wait_for(
        f"node {node}",
        lambda n: (
            ({c["type"]: c["status"] for c in n["status"]["conditions"]}["Ready"] == "True")
            == ready_
        ),
        timeout=timeout,
        interval=2,
    )


def node_script(*args: str) -> None:
    proc = subprocess.run(
        [str(CLUSTER_DIR / "node.sh"), *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, f"node.sh {' '.join(args)} failed:\n{proc.stderr[-3000:]}"


def test_every_node_is_ready_with_its_own_address_and_pod_range(
    kubectl: Kubectl, nodes: list[str]
) -> None:
    wanted = os.environ.get("KUBETRAIN_CLUSTER_NODES")
    if wanted:
        assert len(nodes) == int(wanted), nodes
    addresses = set()
    for node in kubectl.json("get", "nodes")["items"]:
        name = node["metadata"]["name"]
        ready_ = {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"]
        assert ready_ == "True", f"node {name} is not Ready"
        addresses |= {
            a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP"
        }
    assert len(addresses) == len(nodes), addresses


def test_pods_on_different_nodes_reach_each_other_dns_services_s3_and_the_api(
    restricted: Kubectl, nodes: list[str]
) -> None:
    """A web server on every node; from every node, a client calls the next node's server by
    pod IP, by Service ClusterIP and name, and by its DNS name under a headless Service (as
    TensorFlow's workers find each other), then the S3 server and the API server."""
    ns = restricted.namespace
    restricted.apply(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "workers"},
            "spec": {
                "clusterIP": "None",
                "selector": {"role": "server"},
                "ports": [{"name": "http", "port": PORT}],
            },
        },
        *(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": f"web-{i}"},
                "spec": {
                    "selector": {"app": f"server-{i}"},
                    "ports": [{"name": "http", "port": 80, "targetPort": PORT}],
                },
            }
            for i in range(len(nodes))
        ),
        *(
            web_server(
                f"server-{i}",
                node,
                labels={"role": "server"},
                hostname=f"server-{i}",
                subdomain="workers",
                restartPolicy="Always",
            )
            for i, node in enumerate(nodes)
        ),
    )
    servers = [ready(restricted, f"server-{i}") for i in range(len(nodes))]
    for i, (server, node) in enumerate(zip(servers, nodes, strict=True)):
        assert server["spec"]["nodeName"] == node, f"server-{i} runs on the wrong node"

    expected = {}
    for i, node in enumerate(nodes):
        j = (i + 1) % len(nodes)
        cluster_ip = restricted.json("get", "service", f"web-{j}")["spec"]["clusterIP"]
        targets = {
            "pod IP": f"http://{servers[j]['status']['podIP']}:{PORT}/",
            "Service ClusterIP": f"http://{cluster_ip}/",
            "Service name": f"http://web-{j}/",
            "headless DNS name": f"http://server-{j}.workers.{ns}.svc.cluster.local:{PORT}/",
            "S3 server": S3_HEALTH,
            "API server": "https://kubernetes.default.svc/api",
        }
        restricted.apply(
            pod(f"client-{i}", node, IMAGE, ["python3", "-c", FETCH, json.dumps(targets)])
        )
        expected[f"client-{i}"] = (node, nodes[j], f"server-{j}")

    for client, (node, other, server) in expected.items():
        results = json.loads(output(restricted, client).splitlines()[-1])
        failed = {k: v for k, v in results.items() if not v.startswith("ok")}
        assert not failed, f"from {node} to {other}: {failed}"
        for kind in ("pod IP", "Service ClusterIP", "Service name", "headless DNS name"):
            assert results[kind] == f"ok hello from {server}", (kind, results[kind])
        assert "APIVersions" in results["API server"], results["API server"]


def test_a_network_policy_fences_pods_from_other_nodes(
    restricted: Kubectl, nodes: list[str]
) -> None:
    """Enforced by the server node's kube-router, on sources from another node."""
    server_node, client_node = nodes[1], nodes[0]
    restricted.apply(
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "only-granted"},
            "spec": {
                "podSelector": {"matchLabels": {"role": "guarded"}},
                "policyTypes": ["Ingress"],
                "ingress": [
                    {
                        "from": [{"podSelector": {"matchLabels": {"access": "granted"}}}],
                        "ports": [{"port": PORT}],
                    }
                ],
            },
        },
        web_server("guarded", server_node, labels={"role": "guarded"}),
    )
    address = ready(restricted, "guarded")["status"]["podIP"]
    dial = ["python3", "-c", DIAL, address, str(PORT)]
    restricted.apply(
        pod("friend", client_node, IMAGE, dial, labels={"access": "granted"}),
        pod("stranger", client_node, IMAGE, dial),
    )
    assert output(restricted, "friend") == "open"
    assert output(restricted, "stranger") == "blocked"


def run_on(ns: Kubectl, name: str, node: str) -> None:
    """A pod pinned to `node` runs there to completion: the node works."""
    ns.apply(pod(name, node, BUSYBOX, ["echo", "ran"]))
    assert output(ns, name) == "ran"


@pytest.fixture
def further_node(kube_cluster: Cluster, nodes: list[str]) -> str:
    """The last node, one node.sh may stop: the local cluster's, started here or named by
    KUBECONFIG=/var/lib/kubetrain/pki/admin.kubeconfig."""
    local = kube_cluster.local or Path(kube_cluster.kubeconfig).resolve() == LOCAL_KUBECONFIG
    if not local:
        pytest.skip("hack/cluster/node.sh acts on the local cluster's nodes only")
    return nodes[-1]


def test_a_node_that_loses_power_goes_not_ready_and_comes_back(
    kubectl: Kubectl, restricted: Kubectl, further_node: str
) -> None:
    node = further_node
    node_script("stop", node)
    try:
        # The node controller's grace period (50 s) without a word from the kubelet.
        wait_ready(kubectl, node, False, timeout=150)
    finally:
        node_script("start", node)
    wait_ready(kubectl, node, True, timeout=120)
    run_on(restricted, "after-power", node)


def test_a_cut_off_node_goes_not_ready_and_comes_back_when_healed(
    kubectl: Kubectl, restricted: Kubectl, further_node: str
) -> None:
    node = further_node
    node_script("cut", node)
    try:
        wait_ready(kubectl, node, False, timeout=150)
    finally:
        node_script("heal", node)
    wait_ready(kubectl, node, True, timeout=120)
    run_on(restricted, "after-partition", node)

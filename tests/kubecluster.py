"""pytest plugin: a Kubernetes cluster for the tests that need one.

Load it with ``pytest_plugins = ["kubecluster"]``. The session fixture
``kubeconfig`` uses the cluster that ``KUBECONFIG`` names when it is set, so the
same tests run against kind, k3s or a cloud cluster. Otherwise it starts the
project's local cluster (hack/cluster), or reuses one that is already running,
and stops at the end of the session what it started itself.

Tests that need a cluster carry the ``cluster`` marker.

``KUBETRAIN_CLUSTER_NODES=3`` makes the local cluster it starts have three nodes (hack/cluster/up.sh
reads it, as ``make cluster NODES=3`` sets it); one it reuses gains the nodes it lacks. Unset, a
running cluster is used as it is and a new one has one node.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
CLUSTER_DIR = REPO / "hack" / "cluster"
IMAGES_SCRIPT = REPO / "hack" / "images" / "build.sh"
# Starting from cold builds Kubernetes from source; a warm start takes seconds.
START_TIMEOUT = float(os.environ.get("KUBETRAIN_CLUSTER_START_TIMEOUT", 3600))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "cluster: needs a Kubernetes cluster (the local one is started if KUBECONFIG is unset)",
    )


@dataclass(frozen=True)
class Cluster:
    """What the session's cluster is and who owns it."""

    kubeconfig: str
    local: bool  # the project's own hack/cluster, whose scripts we may run
    started_here: bool


def _run_script(name: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CLUSTER_DIR / name), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _shown(config: pytest.Config) -> contextlib.AbstractContextManager:
    """Lets a hack/ script's progress reach the terminal (a cold build takes a while)."""
    capture = config.pluginmanager.getplugin("capturemanager")
    return capture.global_and_fixture_disabled() if capture else contextlib.nullcontext()


def _run_shown(config: pytest.Config, script: Path, timeout: float) -> subprocess.CompletedProcess:
    """Runs a hack/ script with its progress on the terminal."""
    with _shown(config):
        return subprocess.run(
            [str(script)], stdout=subprocess.PIPE, text=True, timeout=timeout, check=False
        )


def start_local_cluster(config: pytest.Config) -> str:
    """Runs hack/cluster/up.sh and returns the KUBECONFIG it printed."""
    proc = _run_shown(config, CLUSTER_DIR / "up.sh", START_TIMEOUT)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines or not lines[-1].startswith("export KUBECONFIG="):
        pytest.fail(
            f"hack/cluster/up.sh failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}",
            pytrace=False,
        )
    return lines[-1].removeprefix("export KUBECONFIG=")


def build_side_by_side(config: pytest.Config, *scripts: Path) -> None:
    """Runs hack/ build scripts at the same time, their progress on the terminal.

    The cluster's Go build keeps both cores busy, but debootstrap and the image builds wait
    mostly on the network and the disk: side by side a cold start ends much sooner.
    """
    deadline = time.monotonic() + START_TIMEOUT
    with _shown(config):
        procs = {script: subprocess.Popen([str(script)]) for script in scripts}
        try:
            codes = {s: p.wait(max(deadline - time.monotonic(), 1)) for s, p in procs.items()}
        finally:
            for proc in procs.values():
                if proc.poll() is None:
                    proc.kill()
    failed = [f"{s.relative_to(REPO)} (exit {code})" for s, code in codes.items() if code]
    if failed:
        pytest.fail(f"{', '.join(failed)} failed: its output is above", pytrace=False)


def stop_local_cluster() -> None:
    proc = _run_script("down.sh", timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"hack/cluster/down.sh failed:\n{proc.stderr[-3000:]}")


def local_cluster_running() -> bool:
    return _run_script("status.sh", "--quiet", timeout=60).returncode == 0


OPERATOR_LABELS = "app.kubernetes.io/part-of=kubetrain,app.kubernetes.io/component=operator"


def refuse_installed_operators(kubeconfig: str) -> None:
    """Fails the session if a kubetrain release is installed (after `make demo`, say).

    Its operator would reconcile the tests' TrainingJobs too, and two operators acting on one
    job make failures no test could explain.
    """
    found = Kubectl(kubeconfig).json("get", "deployments", "-A", "-l", OPERATOR_LABELS)["items"]
    if found:
        uninstall = "; ".join(
            f"helm uninstall {d['metadata']['labels'].get('app.kubernetes.io/instance')}"
            f" -n {d['metadata']['namespace']}"
            for d in found
        )
        pytest.fail(
            "a kubetrain operator is installed on the test cluster and would act on the tests'"
            f" jobs too. Remove it first ({uninstall}), or run make cluster-down for a fresh"
            " local cluster.",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def kube_cluster(pytestconfig: pytest.Config) -> Iterator[Cluster]:
    """The session's cluster; see the module docstring."""
    named = os.environ.get("KUBECONFIG")
    if named:
        refuse_installed_operators(named)
        yield Cluster(kubeconfig=named, local=False, started_here=False)
        return
    if platform.system() != "Linux" or os.geteuid() != 0:
        pytest.skip("the local cluster needs Linux and root; set KUBECONFIG to use another cluster")
    running = local_cluster_running()
    # The images first, so that the cluster starts with them (a running one gets them from
    # hack/images/build.sh itself); the cluster's binaries build meanwhile.
    build_side_by_side(pytestconfig, CLUSTER_DIR / "build.sh", IMAGES_SCRIPT)
    path = start_local_cluster(pytestconfig)
    cluster = Cluster(kubeconfig=path, local=True, started_here=not running)
    os.environ["KUBECONFIG"] = path
    try:
        refuse_installed_operators(path)
        yield cluster
    finally:
        os.environ.pop("KUBECONFIG", None)
        if cluster.started_here:
            stop_local_cluster()


@pytest.fixture(scope="session")
def kubeconfig(kube_cluster: Cluster) -> str:
    """Path of a kubeconfig with cluster-admin rights on the session's cluster."""
    return kube_cluster.kubeconfig


def kubectl_binary() -> str:
    """The kubectl the local cluster built (same release), else kubectl from PATH."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    built = Path(os.environ.get("KUBETRAIN_CACHE", cache / "kubetrain")) / "bin/current/kubectl"
    if built.exists():
        return str(built)
    found = shutil.which("kubectl")
    if found:
        return found
    pytest.fail("kubectl not found on PATH and the local cluster has not built one")


class Kubectl:
    """Runs kubectl against one kubeconfig."""

    def __init__(self, kubeconfig: str, namespace: str | None = None) -> None:
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self.binary = kubectl_binary()

    def __call__(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        cmd = [self.binary, "--kubeconfig", self.kubeconfig]
        if self.namespace:
            cmd += ["--namespace", self.namespace]
        proc = subprocess.run(
            [*cmd, *args], input=input, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}"
            )
        return proc

    def json(self, *args: str) -> dict:
        return json.loads(self(*args, "-o", "json").stdout)

    def apply(self, *documents: dict) -> None:
        self(
            "apply",
            "-f",
            "-",
            input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(documents)}),
        )

    @contextlib.contextmanager
    def port_forward(self, target: str, port: int, timeout: float = 30) -> Iterator[int]:
        """`kubectl port-forward target :port`, as a user reaches a Service; yields the
        local port."""
        cmd = [self.binary, "--kubeconfig", self.kubeconfig, "port-forward", target, f":{port}"]
        if self.namespace:
            cmd[3:3] = ["--namespace", self.namespace]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + timeout
            line = ""
            while time.monotonic() < deadline and "Forwarding from 127.0.0.1:" not in line:
                line = proc.stdout.readline() if proc.stdout else ""
                if not line and proc.poll() is not None:
                    break
            if "Forwarding from 127.0.0.1:" not in line:
                raise AssertionError(f"kubectl port-forward {target}: {proc.stderr.read()}")
            yield int(line.split("127.0.0.1:")[1].split()[0])
        finally:
            proc.terminate()
            proc.wait(10)

    def wait_for(self, what: str, predicate, timeout: float = 120, interval: float = 1) -> dict:
        """Polls `kubectl get WHAT -o json` until predicate(obj) is truthy."""
        deadline = time.monotonic() + timeout
        obj: dict = {}
        while time.monotonic() < deadline:
            proc = self("get", *what.split(), "-o", "json", check=False)
            if proc.returncode == 0:
                obj = json.loads(proc.stdout)
                if predicate(obj):
                    return obj
            time.sleep(interval)
        raise AssertionError(
            f"timed out after {timeout}s waiting for {what}; last seen:\n"
            f"{json.dumps(obj.get('status', obj), indent=1)[:3000]}"
        )


@pytest.fixture(scope="session")
def kubectl(kubeconfig: str) -> Kubectl:
    """kubectl on the session's cluster, cluster-wide."""
    return Kubectl(kubeconfig)


@contextlib.contextmanager
def fresh_namespace(kubectl: Kubectl, prefix: str = "kt-test") -> Iterator[Kubectl]:
    """A new namespace, deleted afterwards; kubectl bound to it."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    kubectl("create", "namespace", name)
    # Pods need the namespace's default service account before they can be created.
    kubectl.wait_for(f"serviceaccount default -n {name}", lambda _: True, timeout=60)
    try:
        yield Kubectl(kubectl.kubeconfig, name)
    finally:
        kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def namespace(kubectl: Kubectl) -> Iterator[Kubectl]:
    """A fresh namespace for one test."""
    with fresh_namespace(kubectl) as ns:
        yield ns


def mint_kubeconfig(cluster: Cluster, user: str, *groups: str) -> str:
    """Returns a kubeconfig (YAML text) for USER in GROUPS; the local cluster only."""
    if not cluster.local:
        pytest.skip("minting client certificates needs the local cluster's CA")
    proc = subprocess.run(
        [str(CLUSTER_DIR / "kubeconfig.sh"), user, *groups],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return proc.stdout


# --- the local cluster's S3 server (hack/cluster/up.sh) ---------------------------------------

STATE = Path(os.environ.get("KUBETRAIN_STATE", "/var/lib/kubetrain"))
S3_CREDENTIALS = STATE / "s3" / "credentials.env"
S3_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_REGION")


def cluster_s3() -> dict[str, str] | None:
    """The endpoint, keys and bucket (KUBETRAIN_S3_BUCKET) of the local cluster's S3 server;
    None with a cluster that has none."""
    if not S3_CREDENTIALS.is_file():
        return None
    return dict(line.split("=", 1) for line in S3_CREDENTIALS.read_text().split())


def s3_secret(name: str, s3: dict[str, str], keys: tuple[str, ...] = S3_KEYS) -> dict[str, Any]:
    """A Secret a job's spec.storage.secretName can name: its keys become the pods' env."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name},
        "stringData": {k: s3[k] for k in keys},
    }


def _bucket(s3: dict[str, str]) -> Any:
    """The store as any S3 client on this machine sees it."""
    import s3fs

    return s3fs.S3FileSystem(
        key=s3["AWS_ACCESS_KEY_ID"],
        secret=s3["AWS_SECRET_ACCESS_KEY"],
        endpoint_url=s3["AWS_ENDPOINT_URL"],
        skip_instance_cache=True,
    )


def bucket_listing(s3: dict[str, str], prefix: str) -> str:
    """Every key under `prefix`, one a line."""
    return "\n".join(_bucket(s3).find(prefix))


def bucket_text(s3: dict[str, str], key: str) -> str:
    return _bucket(s3).cat_file(key).decode()


# --- several nodes ---------------------------------------------------------------------------

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


# --- pods running the trainer image ------------------------------------------------------------

IMAGE = os.environ.get("KUBETRAIN_TRAINER_IMAGE", "localhost/kubetrain-trainer:dev")
"""The locally built trainer image (`make images`); on another cluster, an image with python3
that the cluster has."""


def container(name: str, command: list[str], **extra) -> dict:
    return {
        "name": name,
        "image": IMAGE,
        "imagePullPolicy": "IfNotPresent",
        "command": command,
        "securityContext": {"allowPrivilegeEscalation": False, "runAsNonRoot": True},
        **extra,
    }


def python_pod(name: str, code: str, **container_extra) -> dict:
    """A pod running `python3 -c code` once; `volumes` go to the pod, the rest to its container."""
    volumes = container_extra.pop("volumes", [])
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "restartPolicy": "Never",
            "containers": [container(name, ["python3", "-c", code], **container_extra)],
            "volumes": volumes,
        },
    }


def python_output(ns: Kubectl, name: str, timeout: float = 180) -> str:
    """Waits for a python_pod to end; it must have succeeded. Returns what it printed."""
    pod = ns.wait_for(
        f"pod {name}",
        lambda p: p.get("status", {}).get("phase") in ("Succeeded", "Failed"),
        timeout=timeout,
    )
    logs = ns("logs", name, check=False)
    assert pod["status"]["phase"] == "Succeeded", (
        logs.stdout + logs.stderr + pod_failure(ns, f"app={name}")
    )
    return logs.stdout.strip()


def pod_failure(ns: Kubectl, selector: str) -> str:
    """Why pods matching selector are stuck, for assertion messages."""
    return ns("describe", "pods", "-l", selector, check=False).stdout[-2500:]

"""`make cluster-down` stops everything the local cluster started.

It then starts the cluster again, so the rest of the session still has one.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

import pytest
from kubecluster import REPO, Cluster, Kubectl

pytestmark = pytest.mark.cluster

STATE = Path(os.environ.get("KUBETRAIN_STATE", "/var/lib/kubetrain"))
CACHE = Path(
    os.environ.get("KUBETRAIN_CACHE")
    or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kubetrain"
)


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has stopped running


def cluster_processes() -> dict[int, str]:
    """Every live process that belongs to the local cluster, found from /proc."""
    found: dict[int, str] = {}
    # containerd's config and the shims' socket; clients name only pki/ files.
    owned = (str(STATE / "config"), str(STATE / "run"))
    bins = str(CACHE / "bin")
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or not alive(int(proc.name)):
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            exe = os.readlink(proc / "exe")
            cgroups = (proc / "cgroup").read_text()
        except OSError:
            continue
        if Path(cmdline.split(" ", 1)[0]).name == "kubectl":
            continue  # a client (perhaps another test's), not part of the cluster
        if exe.startswith(bins) or any(p in cmdline for p in owned) or "/kubepods" in cgroups:
            found[int(proc.name)] = cmdline.strip()[:120]
    return found


def make(*args: str) -> subprocess.CompletedProcess[str]:
    """`make ARGS` as a user runs it, output in the order the user sees it."""
    return subprocess.run(
        ["make", "--no-print-directory", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=900,
        check=False,
    )


def bring_back(cluster: Cluster, *makefile: str) -> None:
    """`make cluster` for the rest of the session: its last line is the contract, and the
    kubeconfig stays the same."""
    up = make(*makefile, "cluster")
    assert up.returncode == 0, up.stdout[-3000:]
    assert up.stdout.strip().splitlines()[-1] == f"export KUBECONFIG={cluster.kubeconfig}"


def test_cluster_down_leaves_no_process(kube_cluster: Cluster, kubectl: Kubectl) -> None:
    if not kube_cluster.local:
        pytest.skip("only the local cluster is stopped by make cluster-down")
    # A running pod, so there are containers and shims to clean up too.
    kubectl("delete", "pod", "bystander", "-n", "default", "--ignore-not-found", "--wait")
    kubectl(
        "run",
        "bystander",
        "-n",
        "default",
        "--image=localhost/kubetrain-busybox:1",
        "--image-pull-policy=Never",
        "--restart=Never",
        "--command",
        "--",
        "sleep",
        "3600",
    )
    kubectl("wait", "-n", "default", "--for=condition=Ready", "pod/bystander", "--timeout=120s")

    before = cluster_processes()
    recorded = {int(p.read_text()) for p in (STATE / "run").glob("*.pid")}
    assert recorded <= set(before), "a recorded component is not running"
    assert any("containerd-shim" in c for c in before.values()), before
    try:
        down = make("-f", "hack/cluster/cluster.mk", "cluster-down")
        assert down.returncode == 0, down.stdout[-3000:]
        survivors = {pid: before[pid] for pid in before if alive(pid)}
        assert not survivors, f"processes survived cluster-down: {survivors}"
        assert cluster_processes() == {}
        assert not list(Path("/sys/fs/cgroup").glob("*/kubepods")), "kubepods cgroups remain"
        assert subprocess.run(["ip", "link", "show", "kt0"], capture_output=True).returncode != 0
        rules = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
        assert "KUBE" not in rules, "iptables chains of the cluster remain"
        mounts = Path("/proc/self/mounts").read_text()
        assert str(STATE) not in mounts, "mounts of the cluster remain"
    finally:
        bring_back(kube_cluster, "-f", "hack/cluster/cluster.mk")  # the file works alone too


def test_images_and_cluster_recover_from_a_crashed_cluster(
    kube_cluster: Cluster, kubectl: Kubectl
) -> None:
    """A reboot or OOM kill leaves pid files and containerd's socket behind."""
    if not kube_cluster.local:
        pytest.skip("only the local cluster can be crashed here")
    crashed = cluster_processes()
    for pid in crashed:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert (STATE / "run" / "containerd" / "containerd.sock").is_socket()
    try:
        images = make("images")
        assert images.returncode == 0, images.stdout[-3000:]
        assert "cluster not running" in images.stdout
    finally:
        bring_back(kube_cluster)
    assert not {pid for pid in crashed if alive(pid)}
    kubectl("wait", "--for=condition=Ready", "node", "--all", "--timeout=120s")
    listed = subprocess.run(
        [
            "ctr",
            "--address",
            str(STATE / "run/containerd/containerd.sock"),
            "-n",
            "k8s.io",
            "images",
            "ls",
            "-q",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert "localhost/kubetrain-trainer:dev" in listed

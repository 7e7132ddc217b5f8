"""Workers across nodes: examples/second of three workers, one a node, against one worker, on
the local cluster of three nodes, the two alternating in one run; and the memory of the whole
cluster (control plane, every node's daemons, every pod) while the three train.

    make cluster NODES=3 images
    .venv/bin/python bench/multi_node.py [--rounds 2] [--limit 12000] [--epochs 2]

All three nodes share this machine's cores, so the ratio shows what spreading costs (the
all-reduce over the nodes' network, three TensorFlow runtimes on the same cores), not a
speed-up. The jobs keep their state in the cluster's S3 store (no volume spans nodes). The
operator runs as its own process, watching the bench's namespace only.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from kubetrain.operator.kube import Kube, trainingjob_path
from kubetrain.trainer.api.spec import API_GROUP, API_VERSION

ROOT = Path(__file__).resolve().parent.parent
CRD = ROOT / "crds" / "trainingjobs.kubetrain.io.yaml"
STATE = Path(os.environ.get("KUBETRAIN_STATE", "/var/lib/kubetrain"))
S3_CREDENTIALS = STATE / "s3" / "credentials.env"
IMAGE = os.environ.get("KUBETRAIN_TRAINER_IMAGE", "localhost/kubetrain-trainer:dev")
SECRET = "s3-credentials"


def job(name: str, replicas: int, bucket: str, namespace: str, args: argparse.Namespace) -> dict:
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": "TrainingJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "dataset": {"name": "mnist", "source": "data/mnist", "limit": args.limit},
            "model": {"architecture": "mnist-dense", "name": "digits"},
            "training": {"epochs": args.epochs, "batchSize": 256, "learningRate": 0.003},
            "workers": {"replicas": replicas, "image": IMAGE, "spread": "Required"},
            "storage": {"uri": f"s3://{bucket}/{namespace}/{name}", "secretName": SECRET},
            "promotion": {"enabled": False},
        },
    }


def pss_kib(pid: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass  # gone meanwhile
    return 0


def cluster_pids() -> set[str]:
    """The cluster's daemons (their pid files), containerd's shims, and every pod's processes
    (a memory cgroup under some node's kubepods)."""
    run = STATE / "run"  # the first node's pid files, then each further node's
    pids = {f.read_text().strip() for f in [*run.glob("*.pid"), *run.glob("*/*.pid")]}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            comm = (proc / "comm").read_text().strip()
            cgroups = (proc / "cgroup").read_text()
        except OSError:
            continue
        if comm.startswith("containerd-shim") or "/kubepods" in cgroups:
            pids.add(proc.name)
    return {p for p in pids if p.isdigit() and Path(f"/proc/{p}").exists()}


def cluster_memory_mib() -> float:
    """Proportional set size (shared pages split among their sharers) of every cluster process."""
    return sum(pss_kib(pid) for pid in cluster_pids()) / 1024


class Peak(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = 0.0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(2.0):
            self.peak = max(self.peak, cluster_memory_mib())


def run_job(kube: Kube, body: dict, timeout: float = 1200) -> dict:
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    kube.create(trainingjob_path(namespace, "").rstrip("/"), body)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = (kube.get(trainingjob_path(namespace, name)) or {}).get("status") or {}
        if status.get("phase") in ("Succeeded", "Failed"):
            if status["phase"] == "Failed":
                raise SystemExit(f"{name} failed: {status.get('message')}")
            return status
        time.sleep(2)
    raise SystemExit(f"{name} did not finish in {timeout} s")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--limit", type=int, default=12000, help="MNIST training examples")
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    if not S3_CREDENTIALS.is_file():
        raise SystemExit("needs the local cluster's S3 store: make cluster NODES=3 images")
    s3 = dict(line.split("=", 1) for line in S3_CREDENTIALS.read_text().split())
    kube = Kube()
    nodes = [n["metadata"]["name"] for n in kube.request("GET", "/api/v1/nodes")["items"]]
    if len(nodes) < 3:
        raise SystemExit(f"needs 3 nodes, the cluster has {len(nodes)}: make cluster NODES=3")
    subprocess.run(
        ["kubectl", "apply", "--server-side", "--force-conflicts", "-f", str(CRD)],
        check=True,
        capture_output=True,
    )
    namespace = f"kt-bench-{uuid.uuid4().hex[:6]}"
    kube.create("/api/v1/namespaces", {"metadata": {"name": namespace}})
    keys = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_REGION")
    secret = {"metadata": {"name": SECRET}, "stringData": {k: s3[k] for k in keys}}
    kube.create(f"/api/v1/namespaces/{namespace}/secrets", secret)
    log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - the operator writes it to the end
        "w", prefix="kubetrain-operator-", suffix=".log", delete=False
    )
    operator = subprocess.Popen(
        [sys.executable, "-m", "kubetrain.operator"],
        env={**os.environ, "WATCH_NAMESPACE": namespace},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    rates: dict[int, list[float]] = {1: [], 3: []}
    peak_3 = peak_1 = 0.0
    idle = cluster_memory_mib()
    try:
        for r in range(args.rounds):
            for replicas in (1, 3) if r % 2 == 0 else (3, 1):
                body = job(
                    f"w{replicas}-r{r}", replicas, s3["KUBETRAIN_S3_BUCKET"], namespace, args
                )
                sampler = Peak()
                sampler.start()
                status = run_job(kube, body)
                sampler.done.set()
                rate = float(status["examplesPerSecond"])
                rates[replicas].append(rate)
                if replicas == 3:
                    assert len(set(status["workers"]["nodes"])) == 3, status["workers"]
                    peak_3 = max(peak_3, sampler.peak)
                else:
                    peak_1 = max(peak_1, sampler.peak)
                print(f"round {r + 1}: {replicas} worker(s): {rate:,.0f} examples/s", flush=True)
    finally:
        operator.terminate()
        operator.wait(30)
        kube.delete(f"/api/v1/namespaces/{namespace}")
    one, three = statistics.median(rates[1]), statistics.median(rates[3])
    cores = os.cpu_count()
    print(f"\nMNIST dense, {args.limit} examples, batch 256, {args.epochs} epochs, medians:")
    print(f"  1 worker on 1 node:   {one:,.0f} examples/s ({cores} cores)")
    print(f"  3 workers on 3 nodes: {three:,.0f} examples/s (the same {cores} cores shared)")
    print(f"  ratio 3/1: {three / one:.2f}x")
    print(f"cluster memory (PSS) with 3 nodes: idle {idle:,.0f} MiB;")
    print(f"  peak with 1 worker training {peak_1:,.0f} MiB, with 3 workers {peak_3:,.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Operator benchmarks on a real cluster (KUBECONFIG, or `make cluster`).

    .venv/bin/python bench/operator_reconcile.py [--jobs 200] [--replicas 2]

1. Latency: apply one TrainingJob -> all its worker pods exist (median of 5). Baseline:
   creating the same Service and pods directly through the API from this process.
2. Scale: N TrainingJobs applied at once -> every job reconciled (its pods created and seen
   by the operator, status.launchedAttempt set). Baseline: creating the same N x (Service +
   pods) directly. Also the operator process's peak RSS (VmHWM).

The operator runs as its own process (`python -m kubetrain.operator`) so its memory is its
own. Worker pods get a nodeSelector no node has: they stay Pending, so this measures the
operator and the API server, not 400 containers starting on a small node.
Also the operator's CPU use while all N jobs sit reconciled (their timers keep ticking).
Targets: latency <= 2 s; 200 jobs <= 60 s; peak RSS <= 300 MB.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml
from kubetrain.operator.kube import Kube, pods_path, services_path
from kubetrain.operator.manifests import headless_service, worker_pod
from kubetrain.trainer.api.spec import parse_job

ROOT = Path(__file__).resolve().parent.parent
CRD = ROOT / "crds" / "trainingjobs.kubetrain.io.yaml"
TJ = "/apis/kubetrain.io/v1alpha1/namespaces/{ns}/trainingjobs"
CREATORS = 8  # client threads applying objects, for the operator runs and the baselines alike


def document(name: str, namespace: str, replicas: int) -> dict:
    return {
        "apiVersion": "kubetrain.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "dataset": {"name": "mnist", "source": "data/mnist"},
            "model": {"architecture": "mnist-dense"},
            "workers": {"replicas": replicas, "nodeSelector": {"kubetrain.io/bench": "none"}},
            "promotion": {"enabled": False},
        },
    }


def wait(predicate, timeout: float, interval: float = 0.05) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(interval)
    raise TimeoutError(f"not done after {timeout}s")


def pod_count(kube: Kube, namespace: str, selector: str) -> int:
    return len(
        kube.request("GET", pods_path(namespace), query={"labelSelector": selector})["items"]
    )


def direct_create(kube: Kube, namespace: str, name: str, replicas: int) -> None:
    """Baseline: what the operator creates for one job, created straight through the API."""
    doc = document(name, namespace, replicas)
    body = {**doc, "metadata": {**doc["metadata"], "uid": str(uuid.uuid4())}}
    job = parse_job(doc)
    service = headless_service(body)
    service["metadata"].pop("ownerReferences")
    kube.create(services_path(namespace), service)
    for i in range(replicas):
        pod = worker_pod(body, job, i, 0)
        pod["metadata"].pop("ownerReferences")
        pod["metadata"]["labels"]["kubetrain.io/bench-baseline"] = "true"
        kube.create(pods_path(namespace), pod)


def vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--replicas", type=int, default=2)
    args = parser.parse_args()
    kube = Kube()
    subprocess.run(
        ["kubectl", "apply", "--server-side", "--force-conflicts", "-f", str(CRD)],
        check=True,
        capture_output=True,
    )
    namespace = f"kt-bench-{uuid.uuid4().hex[:6]}"
    kube.request(
        "POST",
        "/api/v1/namespaces",
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
    )
    wait(lambda: kube.get(f"/api/v1/namespaces/{namespace}/serviceaccounts/default"), 60)
    log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - the operator writes it to the end
        "w", prefix="kubetrain-operator-", suffix=".log", delete=False
    )
    env = {**os.environ, "WATCH_NAMESPACE": namespace}
    operator = subprocess.Popen(
        [sys.executable, "-m", "kubetrain.operator"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    tj_path = TJ.format(ns=namespace)
    try:
        # The operator is up once it has handled a first job.
        kube.request("POST", tj_path, document("warmup", namespace, 1))
        wait(lambda: pod_count(kube, namespace, "kubetrain.io/job=warmup") == 1, 120)

        # 1. Latency, against direct creation.
        latencies, direct = [], []
        for i in range(5):
            name = f"latency-{i}"
            start = time.monotonic()
            kube.request("POST", tj_path, document(name, namespace, args.replicas))
            wait(
                lambda n=name: pod_count(kube, namespace, f"kubetrain.io/job={n}") == args.replicas,
                60,
            )
            latencies.append(time.monotonic() - start)
            start = time.monotonic()
            direct_create(kube, namespace, f"direct-{i}", args.replicas)
            direct.append(time.monotonic() - start)
        latency, baseline = statistics.median(latencies), statistics.median(direct)

        # 2. Scale: N jobs at once.
        names = [f"scale-{i:03d}" for i in range(args.jobs)]
        start = time.monotonic()
        with ThreadPoolExecutor(CREATORS) as pool:
            list(
                pool.map(
                    lambda n: kube.request("POST", tj_path, document(n, namespace, args.replicas)),
                    names,
                )
            )
        applied = time.monotonic() - start

        def all_reconciled() -> bool:
            items = kube.request("GET", tj_path)["items"]
            done = [
                t
                for t in items
                if t["metadata"]["name"].startswith("scale-")
                and (t.get("status") or {}).get("launchedAttempt") == 0
            ]
            return len(done) == args.jobs

        wait(all_reconciled, 600, interval=0.5)
        scale = time.monotonic() - start
        rss = vm_hwm_mb(operator.pid)
        # Steady state: every job's timer keeps ticking; how much CPU does that cost?
        cpu_before, steady_start = cpu_seconds(operator.pid), time.monotonic()
        time.sleep(10)
        steady_cpu = (cpu_seconds(operator.pid) - cpu_before) / (time.monotonic() - steady_start)

        start = time.monotonic()
        with ThreadPoolExecutor(CREATORS) as pool:
            list(pool.map(lambda n: direct_create(kube, namespace, f"d{n}", args.replicas), names))
        scale_baseline = time.monotonic() - start
    finally:
        # Deleting jobs needs the operator: its timers hold a finalizer until they stop.
        for item in kube.request("GET", tj_path)["items"]:
            kube.delete(f"{tj_path}/{item['metadata']['name']}")
        try:
            wait(lambda: not kube.request("GET", tj_path)["items"], 300, interval=1)
        finally:
            operator.terminate()
            operator.wait(60)
            kube.delete(f"/api/v1/namespaces/{namespace}")
    report = {
        "apply_to_pods_created_s": round(latency, 3),
        "direct_create_baseline_s": round(baseline, 3),
        "latency_ratio": round(latency / baseline, 2),
        "jobs": args.jobs,
        "replicas": args.replicas,
        "jobs_posted_s": round(applied, 2),
        "all_reconciled_s": round(scale, 2),
        "direct_create_all_baseline_s": round(scale_baseline, 2),
        "scale_ratio": round(scale / scale_baseline, 2),
        "operator_peak_rss_mb": round(rss, 1),
        "steady_state_cpu_cores": round(steady_cpu, 2),
        "targets": {"latency_s": 2, "all_reconciled_s": 60, "rss_mb": 300},
        "operator_log": log.name,
    }
    print(yaml.safe_dump(report, sort_keys=False), end="")
    ok = latency <= 2 and scale <= 60 and rss <= 300
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""Operator benchmarks on a real cluster (KUBECONFIG, or `make cluster`).

    .venv/bin/python bench/operator_reconcile.py [--sizes 200 1000 2000] [--replicas 1]

For each size N, in one namespace, with one operator process throughout:

1. Scale: N TrainingJobs applied at once -> every job reconciled (its pods created and seen
   by the operator, status.launchedAttempt set); per job, that time / N. Baseline, in the same
   run: creating the same N x (Service + pods) directly from this process.
2. Idle: the operator's CPU while the N jobs sit reconciled (their pods Pending), over 30 s,
   from 10 s after the last job was reconciled, before the baseline's objects exist.
3. Latency: apply one more TrainingJob -> all its worker pods exist, p50 and p95 of 20,
   while the N exist; the same measured before any job exists, and directly created pods as
   the baseline.
4. Memory: the operator process's peak RSS (VmHWM) once N jobs exist.

Then every job and baseline object is deleted before the next size. Worker pods get a
nodeSelector no node has: they stay Pending, so this measures the operator and the API
server, not thousands of containers starting on a small node. The operator runs as its own
process (`python -m kubetrain.operator`), so its CPU and memory are its own.
Goals: idle CPU at 1,000 jobs <= 0.05 cores; per-job reconcile time at the largest size
<= 1.5x that at the smallest; peak RSS at the largest <= 2x that at the smallest; latency
p95 with N jobs about that with none.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml
from kubetrain.operator.defaults import JobDefaults
from kubetrain.operator.kube import Kube, pods_path, services_path
from kubetrain.operator.manifests import headless_service, worker_pod
from kubetrain.trainer.api.spec import parse_job

ROOT = Path(__file__).resolve().parent.parent
CRD = ROOT / "crds" / "trainingjobs.kubetrain.io.yaml"
TJ = "/apis/kubetrain.io/v1alpha1/namespaces/{ns}/trainingjobs"
CREATORS = 8  # client threads applying objects, for the operator runs and the baselines alike
LATENCY_SAMPLES = 20
IDLE_SECONDS = 30
SETTLE_SECONDS = 10
BASELINE = "kubetrain.io/bench-baseline"


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


def wait(predicate: Callable[[], Any], timeout: float, interval: float = 0.05) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            if predicate():
                return time.monotonic() - start
        except Exception as err:  # an API server busy past the read timeout
            print(f"still waiting: {err}", file=sys.stderr)
        time.sleep(interval)
    raise TimeoutError(f"not done after {timeout}s")


def items(kube: Kube, path: str, selector: str | None = None) -> list[dict]:
    query = {"labelSelector": selector} if selector else None
    return kube.request("GET", path, query=query)["items"]


def pod_count(kube: Kube, namespace: str, selector: str) -> int:
    return len(items(kube, pods_path(namespace), selector))


def direct_create(kube: Kube, namespace: str, name: str, replicas: int) -> None:
    """Baseline: what the operator creates for one job, created straight through the API."""
    doc = document(name, namespace, replicas)
    body = {**doc, "metadata": {**doc["metadata"], "uid": str(uuid.uuid4())}}
    job = JobDefaults().apply(parse_job(doc))  # the image the operator gives jobs naming none
    service = headless_service(body)
    service["metadata"].pop("ownerReferences")
    service["metadata"]["labels"][BASELINE] = "true"
    kube.create(services_path(namespace), service)
    for i in range(replicas):
        pod = worker_pod(body, job, i, 0)
        pod["metadata"].pop("ownerReferences")
        pod["metadata"]["labels"][BASELINE] = "true"
        kube.create(pods_path(namespace), pod)


def vm_kb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def host_load() -> float:
    """The machine's 1-minute load average: the cluster is shared, so say how busy it was."""
    return float(Path("/proc/loadavg").read_text().split()[0])


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]


class Bench:
    def __init__(self, kube: Kube, namespace: str, replicas: int, operator_pid: int) -> None:
        self.kube, self.namespace, self.replicas = kube, namespace, replicas
        self.tj_path = TJ.format(ns=namespace)
        self.pid = operator_pid

    def parallel(self, fn: Callable[[str], Any], names: list[str]) -> float:
        start = time.monotonic()
        with ThreadPoolExecutor(CREATORS) as pool:
            list(pool.map(fn, names))
        return time.monotonic() - start

    def apply(self, name: str) -> None:
        self.kube.request("POST", self.tj_path, document(name, self.namespace, self.replicas))

    def latency(self, prefix: str) -> dict[str, float]:
        """apply -> all pods exist, LATENCY_SAMPLES times one after another; and direct."""
        operator, direct = [], []
        for i in range(LATENCY_SAMPLES):
            name = f"{prefix}-lat-{i}"
            start = time.monotonic()
            self.apply(name)
            wait(
                lambda n=name: (
                    pod_count(self.kube, self.namespace, f"kubetrain.io/job={n}") == self.replicas
                ),
                120,
            )
            operator.append(time.monotonic() - start)
            start = time.monotonic()
            direct_create(self.kube, self.namespace, f"{prefix}-dlat-{i}", self.replicas)
            direct.append(time.monotonic() - start)
        return {
            "apply_to_pods_p50_s": round(statistics.median(operator), 3),
            "apply_to_pods_p95_s": round(p95(operator), 3),
            "direct_p50_s": round(statistics.median(direct), 3),
            "direct_p95_s": round(p95(direct), 3),
        }

    def reconciled(self, prefix: str, count: int) -> bool:
        done = [
            t
            for t in items(self.kube, self.tj_path)
            if t["metadata"]["name"].startswith(prefix)
            and (t.get("status") or {}).get("launchedAttempt") == 0
        ]
        return len(done) == count

    def idle_cpu(self) -> float:
        before, start = cpu_seconds(self.pid), time.monotonic()
        time.sleep(IDLE_SECONDS)
        return (cpu_seconds(self.pid) - before) / (time.monotonic() - start)

    def size(self, n: int) -> dict[str, Any]:
        prefix = f"s{n}"
        names = [f"{prefix}-{i:04d}" for i in range(n)]
        load_before = host_load()
        start = time.monotonic()
        posted = self.parallel(self.apply, names)
        wait(lambda: self.reconciled(f"{prefix}-", n), 1800, interval=2)
        scale = time.monotonic() - start
        time.sleep(SETTLE_SECONDS)  # the last status patches' own events
        idle = self.idle_cpu()
        baseline = self.parallel(
            lambda name: direct_create(self.kube, self.namespace, f"d{name}", self.replicas),
            names,
        )
        latency = self.latency(prefix)
        result = {
            "jobs": n,
            "jobs_posted_s": round(posted, 1),
            "all_reconciled_s": round(scale, 1),
            "per_job_ms": round(1000 * scale / n, 1),
            "direct_create_all_s": round(baseline, 1),
            "direct_per_job_ms": round(1000 * baseline / n, 1),
            "ratio_to_direct": round(scale / baseline, 2),
            "idle_cpu_cores": round(idle, 3),
            **latency,
            "operator_peak_rss_mb": round(vm_kb(self.pid, "VmHWM"), 1),
            "operator_rss_mb": round(vm_kb(self.pid, "VmRSS"), 1),
            "host_load_1m": [load_before, host_load()],
        }
        print(yaml.safe_dump([result], sort_keys=False), end="", flush=True)
        return result

    def clear(self) -> None:
        """Delete every job (owner references take their children) and baseline object."""
        try:
            self.kube.request("DELETE", self.tj_path)  # the collection
        except Exception as err:  # it goes on server-side past a read timeout
            print(f"deleting TrainingJobs: {err}", file=sys.stderr)
        selector = f"{BASELINE}=true"
        self.kube.request("DELETE", pods_path(self.namespace), query={"labelSelector": selector})
        services = [s["metadata"]["name"] for s in items(self.kube, services_path(self.namespace))]
        self.parallel(lambda s: self.kube.delete(services_path(self.namespace, s)), services)
        wait(lambda: not items(self.kube, self.tj_path), 900, interval=2)
        wait(lambda: not items(self.kube, pods_path(self.namespace)), 1800, interval=5)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 1000, 2000])
    parser.add_argument("--replicas", type=int, default=1, help="worker pods per job")
    args = parser.parse_args()
    # Stopped early, it still stops its operator and deletes its namespace (`finally`).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
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
    bench = Bench(kube, namespace, args.replicas, operator.pid)
    results: list[dict[str, Any]] = []
    try:
        # The operator is up once it has handled a first job.
        bench.apply("warmup")
        wait(lambda: pod_count(kube, namespace, "kubetrain.io/job=warmup") == args.replicas, 120)
        empty = bench.latency("empty")
        print(yaml.safe_dump({"no_jobs": empty}, sort_keys=False), end="", flush=True)
        bench.clear()
        for i, n in enumerate(args.sizes):
            results.append(bench.size(n))
            if i < len(args.sizes) - 1:  # the namespace's deletion clears the last
                bench.clear()
    finally:
        operator.terminate()
        operator.wait(60)
        kube.delete(f"/api/v1/namespaces/{namespace}")
    first, last = results[0], results[-1]
    at_1000 = next((r for r in results if r["jobs"] == 1000), last)
    report = {
        "replicas": args.replicas,
        "no_jobs_latency": empty,
        "per_job_reconcile_growth": round(last["per_job_ms"] / first["per_job_ms"], 2),
        "peak_rss_growth": round(last["operator_peak_rss_mb"] / first["operator_peak_rss_mb"], 2),
        "latency_p95_growth": round(last["apply_to_pods_p95_s"] / empty["apply_to_pods_p95_s"], 2),
        "idle_cpu_at_1000": at_1000["idle_cpu_cores"],
        "goals": {
            "idle_cpu_at_1000_cores": 0.05,
            "per_job_reconcile_growth": 1.5,
            "peak_rss_growth": 2.0,
        },
        "operator_log": log.name,
    }
    print(yaml.safe_dump(report, sort_keys=False), end="")
    ok = (
        report["idle_cpu_at_1000"] <= 0.05
        and report["per_job_reconcile_growth"] <= 1.5
        and report["peak_rss_growth"] <= 2.0
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

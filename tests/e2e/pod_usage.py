"""Resource use of the end-to-end run, from the kubelet's Summary API.

The Summary API (`/api/v1/nodes/<node>/proxy/stats/summary`) is what metrics-server
itself reads, so this needs nothing installed in the cluster. A thread samples it every
few seconds and keeps, for each role of pod in the release's namespace, the peak memory
(working set) of one pod and the peak CPU of all its pods together; and the nodes' peaks.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field

from kubecluster import Kubectl

MIB = 1024 * 1024
WORKER = re.compile(r"-worker-\d+$")


@dataclass
class Peaks:
    pod_memory_mib: dict[str, float] = field(default_factory=dict)
    cpu_cores: dict[str, float] = field(default_factory=dict)
    node_memory_mib: float = 0.0
    node_cpu_cores: float = 0.0
    samples: int = 0


class ResourceSampler:
    """Samples the namespace's pods in the background between start() and stop()."""

    def __init__(
        self, kubectl: Kubectl, namespace: str, roles: dict[str, str], interval: float = 10
    ) -> None:
        self.kubectl = kubectl
        self.namespace = namespace
        self.roles = roles  # pod-name prefix -> role; worker pods are found by their name
        self.interval = interval
        self.peaks = Peaks()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="resource-sampler", daemon=True)

    def role(self, pod: str) -> str:
        if WORKER.search(pod):
            return "worker"
        return next((r for prefix, r in self.roles.items() if pod.startswith(prefix)), "client")

    def start(self) -> ResourceSampler:
        self._thread.start()
        return self

    def stop(self) -> dict[str, float | int]:
        self._stop.set()
        self._thread.join(timeout=30)
        return self.report()

    def report(self) -> dict[str, float | int]:
        peaks = self.peaks
        report: dict[str, float | int] = {"resource_samples": peaks.samples}
        for role, mib in sorted(peaks.pod_memory_mib.items()):
            report[f"peak_memory_one_{role}_pod_mib"] = round(mib)
        for role, cores in sorted(peaks.cpu_cores.items()):
            report[f"peak_cpu_all_{role}_pods_cores"] = round(cores, 2)
        report["peak_node_memory_mib"] = round(peaks.node_memory_mib)
        report["peak_node_cpu_cores"] = round(peaks.node_cpu_cores, 2)
        return report

    def _run(self) -> None:
        nodes = self.kubectl("get", "nodes", "-o", "name", check=False).stdout.split()
        paths = [f"/api/v1/nodes/{n.removeprefix('node/')}/proxy/stats/summary" for n in nodes]
        while not self._stop.wait(self.interval):
            answers = [self.kubectl("get", "--raw", path, check=False) for path in paths]
            self.add([json.loads(a.stdout) for a in answers if a.returncode == 0])

    def add(self, summaries: list[dict]) -> None:
        """Folds one sample (a Summary API answer per node) into the peaks."""
        if not summaries:
            return
        peaks = self.peaks
        nodes = [s.get("node", {}) for s in summaries]
        memory = sum(n.get("memory", {}).get("workingSetBytes") or 0 for n in nodes) / MIB
        cores = sum(n.get("cpu", {}).get("usageNanoCores") or 0 for n in nodes) / 1e9
        peaks.node_memory_mib = max(peaks.node_memory_mib, memory)
        peaks.node_cpu_cores = max(peaks.node_cpu_cores, cores)
        cpu: dict[str, float] = {}
        for pod in (p for s in summaries for p in s.get("pods", [])):
            ref = pod["podRef"]
            if ref["namespace"] != self.namespace:
                continue
            role = self.role(ref["name"])
            mib = (pod.get("memory", {}).get("workingSetBytes") or 0) / MIB
            peaks.pod_memory_mib[role] = max(peaks.pod_memory_mib.get(role, 0.0), mib)
            cpu[role] = cpu.get(role, 0.0) + (pod.get("cpu", {}).get("usageNanoCores") or 0) / 1e9
        for role, cores in cpu.items():
            peaks.cpu_cores[role] = max(peaks.cpu_cores.get(role, 0.0), cores)
        peaks.samples += 1

"""The operator's own lifecycle on a real cluster: absent, upgraded, uninstalled, replicated.

No finalizer holds a TrainingJob, so a job goes when deleted whether or not an operator runs;
the finalizer of the timer-driven operator is dropped by the event-driven one; and of two
operator processes only the Lease holder acts, the other taking over when the leader dies.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from charttools import CHART, Tools
from kubecluster import Kubectl
from standins import server_command, worker_command
from test_operator_cluster import events, operator, phase_in, pods, trainingjob

pytestmark = pytest.mark.cluster

OLD_FINALIZER = "kubetrain.io/operator"
CHILDREN = "pods,services,networkpolicies -l kubetrain.io/job={}"
LEASE_SECONDS = 6


def deleted_without_an_operator(ns: Kubectl, name: str) -> None:
    """`kubectl delete` returns at once and the owner references take the job's children."""
    started = time.monotonic()
    ns("delete", "tj", name, "--timeout=30s")
    assert time.monotonic() - started < 30
    ns.wait_for(CHILDREN.format(name), lambda lst: not lst["items"], timeout=120)


def test_a_job_is_deleted_while_no_operator_runs(ns: Kubectl):
    with operator(ns, worker_command(epoch_seconds=30)):
        ns.apply(trainingjob("mnist"))
        tj = ns.wait_for("tj mnist", phase_in("Running"), timeout=120)
    assert not tj["metadata"].get("finalizers"), tj["metadata"]
    assert len(pods(ns, "mnist")) == 2
    deleted_without_an_operator(ns, "mnist")


def test_the_finalizer_of_the_timer_driven_operator_is_removed(ns: Kubectl):
    old = trainingjob("upgraded")
    old["metadata"]["finalizers"] = [OLD_FINALIZER]
    ns.apply(old)
    with operator(ns, worker_command(epoch_seconds=30)):
        ns.wait_for(
            "tj upgraded",
            lambda tj: not tj["metadata"].get("finalizers") and phase_in("Running")(tj),
            timeout=120,
        )
    deleted_without_an_operator(ns, "upgraded")


# --- the chart -------------------------------------------------------------------------------


@contextlib.contextmanager
def chart_release(ns: Kubectl, tools: Tools, kubeconfig: str, tmp_path: Path) -> Iterator[str]:
    """The chart installed in `ns`, watching only `ns`, two replicas, stand-in workers."""
    name = f"kubetrain-{uuid.uuid4().hex[:6]}"  # names its Deployment, as the chart's own name
    values = tmp_path / "values.yaml"
    values.write_text(
        yaml.safe_dump(
            {
                "watch": {"allNamespaces": False},
                "storage": {"create": False},
                "networkPolicy": {"enabled": False},
                "replicas": 2,
                "workerCommand": worker_command(epoch_seconds=30),
                "servingCommand": server_command(),
            }
        )
    )
    scope = ("--kubeconfig", kubeconfig, "--namespace", ns.namespace)
    done = tools.helm_run("install", name, CHART, "-f", values, *scope, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    try:
        yield name
    finally:
        tools.helm_run("uninstall", name, *scope, "--ignore-not-found", timeout=300)


def test_helm_uninstall_before_deleting_the_jobs_leaves_nothing_terminating(
    ns: Kubectl, tools: Tools, kubeconfig: str, tmp_path: Path
):
    with chart_release(ns, tools, kubeconfig, tmp_path) as release:
        ns("rollout", "status", f"deployment/{release}", "--timeout=180s", timeout=200)
        ns.apply(trainingjob("mnist"))
        tj = ns.wait_for("tj mnist", phase_in("Running"), timeout=180)
        scope = ("--kubeconfig", kubeconfig, "--namespace", ns.namespace)
        done = tools.helm_run("uninstall", release, *scope, "--wait", timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
    # The operator pods stop (each hands the Lease over as it goes); the job stays Running.
    ns.wait_for(
        f"pods -l app.kubernetes.io/instance={release}", lambda lst: not lst["items"], timeout=120
    )
    assert not tj["metadata"].get("finalizers"), tj["metadata"]
    deleted_without_an_operator(ns, "mnist")
    assert not ns.json("get", "tj")["items"]


# --- two replicas ----------------------------------------------------------------------------


class OperatorProcess:
    """`python -m kubetrain.operator` electing a leader in `ns`, logging to a file."""

    def __init__(self, ns: Kubectl, kubeconfig: str, worker: list[str], log: Path) -> None:
        env = {
            **os.environ,
            "KUBECONFIG": kubeconfig,
            "WATCH_NAMESPACE": ns.namespace,
            "KUBETRAIN_LEADER_ELECTION": "true",
            "KUBETRAIN_LEASE_NAMESPACE": ns.namespace,
            "KUBETRAIN_LEASE_DURATION": str(LEASE_SECONDS),
            "KUBETRAIN_PROGRESS_INTERVAL": "2",
            "KUBETRAIN_WORKER_COMMAND": json.dumps(worker),
            "KUBETRAIN_SERVING_COMMAND": json.dumps(server_command()),
            "KUBETRAIN_METRICS_PORT": "0",  # two of them on one machine: no port to share
        }
        self.log = log
        with log.open("w") as out:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "kubetrain.operator"],
                env=env,
                cwd=log.parent,  # not the repository root, whose operator/ shadows the stdlib's
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def leads(self) -> bool:
        return "became the leader" in self.log.read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not {what} after {timeout}s"
        time.sleep(0.2)


def test_killing_the_leader_mid_job_hands_the_job_to_the_standby_which_finishes_it_once(
    ns: Kubectl, kubeconfig: str, tmp_path: Path
):
    worker = worker_command(epoch_seconds=3, val_accuracy=0.93)
    first = OperatorProcess(ns, kubeconfig, worker, tmp_path / "first.log")
    second = None
    try:
        wait_until(first.leads, 60, "leading")
        second = OperatorProcess(ns, kubeconfig, worker, tmp_path / "second.log")
        ns.apply(trainingjob("mnist", training={"epochs": 6}))
        running = ns.wait_for(
            "tj mnist",
            lambda tj: phase_in("Running")(tj) and (tj["status"].get("epoch") or 0) >= 1,
            timeout=120,
            interval=0.5,
        )
        assert not second.leads(), second.log.read_text()[-3000:]
        workers = {p["metadata"]["name"]: p["metadata"]["uid"] for p in pods(ns, "mnist")}

        first.proc.send_signal(signal.SIGKILL)  # no chance to hand the Lease over
        killed = time.monotonic()
        first.proc.wait(10)
        wait_until(second.leads, 4 * LEASE_SECONDS, "taken over")
        took_over = time.monotonic() - killed
        tj = ns.wait_for("tj mnist", phase_in("Succeeded", "Failed"), timeout=180)
    finally:
        first.stop()
        if second is not None:
            second.stop()
    logs = first.log.read_text() + (second.log.read_text() if second else "")
    status = tj["status"]
    assert status["phase"] == "Succeeded", json.dumps(status, indent=1) + logs[-5000:]
    # The standby waited out the Lease: it did not act while the leader could still act.
    assert took_over >= LEASE_SECONDS * 2 / 3, took_over
    # Exactly once: the same worker pods throughout, one attempt, each step recorded once.
    assert status["restarts"] == 0
    assert running["status"]["restarts"] == 0
    after = {p["metadata"]["name"]: p["metadata"]["uid"] for p in pods(ns, "mnist")}
    assert set(after.items()) <= set(workers.items()), (workers, after)
    reasons = [reason for reason, _ in events(ns, "mnist")]
    for reason in ("Started", "Running", "Succeeded"):
        assert reasons.count(reason) == 1, reasons
    assert status["bestMetrics"]["val_accuracy"] == pytest.approx(0.93)
    assert " failed with an exception" not in logs, logs[-5000:]

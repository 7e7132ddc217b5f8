"""A serving Deployment under its HorizontalPodAutoscaler on the local cluster, whose
metrics-server reports the pods' CPU: load scales it out, a rollout while scaled out answers
every request and leaves the replicas to the autoscaler, and no load scales it back in.

The operator in-process, with the stand-in worker and model server (`standins.py`): each
prediction costs the stand-in server some CPU, as a model's would.
"""

from __future__ import annotations

import json

import pytest
from kubecluster import Kubectl, python_output, python_pod
from kubetrain.operator.settings import SETTINGS
from standins import worker_command
from test_operator_cluster import operator, promotion_decided, trainingjob

pytestmark = pytest.mark.cluster

DEPLOYMENT = "digits-serving"
AUTOSCALING = {
    "minReplicas": 1,
    "maxReplicas": 3,
    "targetCpuUtilization": 50,
    "scaleDownStabilizationSeconds": 15,
}

LOAD = r"""
import json, socket, sys, threading, time, urllib.parse, urllib.request
URL, SECONDS, CLIENTS, UNTIL = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
# The Service's name is looked up once, as a client keeping its connections would: what counts
# is the Service's routing to pods while they change, not the local cluster's DNS (a lookup
# once failed for both clients at the moment the rollout replaced the pods).
HOST = urllib.parse.urlsplit(URL).hostname
URL = URL.replace(HOST, socket.gethostbyname(HOST), 1)
counts = {"ok": 0, "failed": 0}
timeline, versions = [], set()  # failures and each version's first answer, timed
lock = threading.Lock()
start = time.monotonic()
end = start + SECONDS

def client():
    global end
    while time.monotonic() < end:
        request = urllib.request.Request(URL, data=b'{"instances": [[0]]}', method="POST")
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                version = json.load(answer).get("version")
                ok = answer.status == 200
        except Exception as err:
            ok, version = False, None
            timeline.append(f"{time.monotonic() - start:.1f}s {err!r}")
        with lock:
            counts["ok" if ok else "failed"] += 1
            if version == UNTIL and UNTIL not in versions:
                end = min(end, time.monotonic() + 15)  # a little more of the new version
            if version not in versions:
                timeline.append(f"{time.monotonic() - start:.1f}s version {version}")
            versions.add(version)
        time.sleep(0.1)  # a steady load, not all the CPU the pods can get

threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
for t in threads:
    t.start()
for t in threads:
    t.join()
seen = sorted(v for v in versions if v)
shown = timeline if len(timeline) <= 12 else timeline[:8] + timeline[-4:]  # no entry twice
print(json.dumps({**counts, "versions": seen, "timeline": shown}))
"""


def load_pod(until_version: int, deployment: str = DEPLOYMENT, seconds: int = 900) -> dict:
    """A pod predicting through the serving Service (two clients, ten requests a second each)
    until 15 s after the first answer of `until_version`, or `seconds`; it prints what it
    counted."""
    url = f"http://{deployment}:8501/v1/models/digits:predict"
    pod = python_pod("load", LOAD)
    pod["spec"]["containers"][0]["args"] = [url, str(seconds), "2", str(until_version)]
    return pod


def promoted(ns: Kubectl, name: str, version: int, val_accuracy: float) -> dict:
    """Train (stand-in) and promote one model under autoscaling; the finished TrainingJob."""
    worker = worker_command(epoch_seconds=0.5, val_accuracy=val_accuracy, version=version)
    with operator(ns, worker):
        ns.apply(
            trainingjob(
                name,
                training={"epochs": 1},
                workers={"replicas": 1},
                promotion={"enabled": True, "deployment": DEPLOYMENT, "autoscaling": AUTOSCALING},
            )
        )
        return ns.wait_for(f"tj {name}", promotion_decided, timeout=600)


def replicas(ns: Kubectl) -> int:
    return ns.json("get", "deployment", DEPLOYMENT)["spec"]["replicas"]


def test_load_scales_serving_out_a_rollout_meanwhile_answers_all_and_idle_scales_it_in(
    ns: Kubectl, monkeypatch: pytest.MonkeyPatch
):
    # The local cluster's policy enforcer (kube-router) programs a new or terminating pod's
    # rules a moment after kube-proxy routes to it: with a serving NetworkPolicy, a rollout
    # over several nodes refused a few connections (8 to 10 of 300 to 800). Without one, none.
    monkeypatch.setattr(SETTINGS, "network_policies", False)
    first = promoted(ns, "first", version=1, val_accuracy=0.90)
    assert first["status"]["phase"] == "Promoted", json.dumps(first["status"], indent=1)
    assert replicas(ns) == 1  # the autoscaler's minimum, where the Deployment starts
    hpa = ns.json("get", "hpa", DEPLOYMENT)
    assert hpa["spec"]["scaleTargetRef"]["name"] == DEPLOYMENT

    # Load: the pods' CPU (from metrics-server) rises past the target, the autoscaler adds pods.
    ns.apply(load_pod(until_version=2))
    ns.wait_for(
        f"deployment {DEPLOYMENT}",
        lambda d: d["spec"]["replicas"] >= 2 and (d["status"].get("readyReplicas") or 0) >= 2,
        timeout=180,
        interval=3,
    )
    scaled = ns.json("get", "hpa", DEPLOYMENT)
    assert scaled["status"]["currentMetrics"][0]["resource"]["current"]["averageUtilization"] > 50

    # A better model rolls out under that load; the operator leaves the replicas alone.
    before = replicas(ns)
    second = promoted(ns, "second", version=2, val_accuracy=0.95)
    assert second["status"]["phase"] == "Promoted", json.dumps(second["status"], indent=1)
    assert replicas(ns) >= before
    ns("rollout", "status", f"deployment/{DEPLOYMENT}", "--timeout=180s")
    dep = ns.json("get", "deployment", DEPLOYMENT)
    assert dep["metadata"]["annotations"]["kubetrain.io/model-version"] == "2"

    answered = json.loads(python_output(ns, "load", timeout=300))
    assert answered["failed"] == 0, answered
    assert answered["versions"] == [1, 2] and answered["ok"] > 100, answered

    # No load: back to the minimum after the stabilization window.
    ns.wait_for(
        f"deployment {DEPLOYMENT}", lambda d: d["spec"]["replicas"] == 1, timeout=240, interval=5
    )

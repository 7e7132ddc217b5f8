"""The whole story on a real cluster, as a user meets it.

    1 helm install -> operator Ready
    2 apply examples/mnist.yaml -> progress, Succeeded, Promoted -> the served model reads a 7
    3 a better job rolls serving to version 2 under load with no failed request; a worse one
      is not promoted (NotBetter)
    4 a worker killed mid-training: all workers restart and resume from the last checkpoint;
      then the operator killed: its successor finishes the job, no duplicate workers. This
      job keeps its checkpoints and backup in the cluster's S3 store (when it has one, as
      the local cluster does): the restarted workers restore from the bucket
    5 a model whose server never becomes ready is rolled back; serving stays up
    6 uninstall leaves nothing behind

Real pods run the real images (`make images`: localhost/kubetrain-{operator,trainer}:dev).
The release watches only its own namespace, so operators of other tests sharing the
cluster never see its jobs. On a slow two-core machine most of a job's time is fixed cost
(starting TensorFlow in each pod, evaluating and exporting), so the module runs as few jobs
as its story needs, on parts of MNIST for a few epochs; the subsets grow from job to job
(2: 6,000 images, 3: 12,000, 5: 24,000), so each promoted model is better than the one it
replaces. Wall times of each step, the rollout's request counts and the peak CPU and memory
of each kind of pod (`pod_usage.py`) go to runs/e2e/report.json.
"""

from __future__ import annotations

import contextlib
import copy
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
import yaml
from charttools import CHART, REPO, Tools
from kubecluster import Kubectl, bucket_listing, cluster_s3, s3_secret
from kubetrain.operator.manifests import POD_SECURITY_CONTEXT
from pod_usage import ResourceSampler

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

TRAINER_IMAGE = "localhost/kubetrain-trainer:dev"
REPORT = REPO / "runs" / "e2e" / "report.json"
# Two epochs: short, and long enough that progress shows while the job runs.
EPOCHS = 2
# Training images of each promoted job: each is better than the model it replaces (validation
# accuracy as measured with these settings: 0.905, 0.931; the sabotaged job's is higher still).
FIRST_LIMIT, BETTER_LIMIT, BROKEN_LIMIT = 6000, 12000, 24000
TRAIN_TIMEOUT = 900  # 2 workers sharing 2 busy cores
SERVING = "mnist-serving"
SERVING_REPLICAS = 1
MODELS_CLAIM = "kubetrain-models"
MOUNT_PATH = "/var/lib/kubetrain"  # the spec's default storage.mountPath
PART_OF = {"app.kubernetes.io/part-of": "kubetrain-e2e"}
POD_SECURITY = "pod-security.kubernetes.io/enforce"
# The rollout's load: a steady stream of predictions, bounded in count and time. Twelve a
# second is what a client pod keeps up on a slow, busy two-core node (25 came out at 15.5).
LOAD_RATE = 12
LOAD_THREADS = 6
LOAD_MAX_SECONDS = 480
LOAD_MAX_REQUESTS = LOAD_RATE * LOAD_MAX_SECONDS


@dataclass
class Release:
    name: str
    namespace: str
    kubectl: Kubectl
    tools: Tools
    kubeconfig: str
    times: dict[str, float] = field(default_factory=dict)

    def helm(self, *args: str) -> None:
        done = self.tools.helm_run(
            *args, "--kubeconfig", self.kubeconfig, "--namespace", self.namespace, timeout=600
        )
        assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture(scope="module")
def release(kubeconfig: str, tools: Tools) -> Iterator[Release]:
    suffix = uuid.uuid4().hex[:6]
    namespace = f"kt-e2e-{suffix}"
    kubectl = Kubectl(kubeconfig)
    kubectl("create", "namespace", namespace)
    # The API server refuses any pod of the story that is not within the restricted standard.
    kubectl("label", "namespace", namespace, f"{POD_SECURITY}=restricted")
    rel = Release(
        f"kubetrain-{suffix}", namespace, Kubectl(kubeconfig, namespace), tools, kubeconfig
    )
    sampler = ResourceSampler(
        kubectl, namespace, {rel.name: "operator", SERVING: "serving"}
    ).start()
    try:
        yield rel
    finally:
        rel.times.update(sampler.stop())
        REPORT.parent.mkdir(parents=True, exist_ok=True)
        REPORT.write_text(json.dumps(rel.times, indent=1) + "\n")
        # Whatever a failed test left: jobs first (they carry no finalizer, so the order is
        # only tidiness), then the release.
        rel.kubectl("delete", "trainingjobs", "--all", "--timeout=120s", check=False)
        rel.tools.helm_run(
            "uninstall", rel.name, "--kubeconfig", kubeconfig, "--namespace", namespace
        )
        kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def timed(times: dict[str, float], step: str, since: float) -> None:
    times[step] = round(time.monotonic() - since, 1)


def mnist_job(
    name: str = "mnist",
    *,
    epochs: int = EPOCHS,
    limit: int | None = None,
    promotion: dict | None = None,
    **spec: dict,
) -> dict:
    """examples/mnist.yaml, shortened, renamed and adjusted."""
    job = copy.deepcopy(yaml.safe_load((REPO / "examples" / "mnist.yaml").read_text()))
    job["metadata"]["name"] = name
    # Small subsets learn in smaller steps than the example's full-data batches.
    job["spec"]["training"].update(epochs=epochs, batchSize=256, learningRate=0.003)
    if limit is not None:
        job["spec"]["dataset"]["limit"] = limit
    job["spec"]["promotion"].update(promotion or {})
    job["spec"].update(spec)
    return job


def condition(status: dict, kind: str) -> dict:
    return next((c for c in status.get("conditions") or [] if c["type"] == kind), {})


def promotion_decided(status: dict) -> bool:
    phase = status.get("phase")
    return phase in ("Promoted", "Failed") or (
        phase == "Succeeded" and condition(status, "Promoted").get("status") == "False"
    )


def training_done(status: dict) -> bool:
    return status.get("phase") in ("Succeeded", "Failed")


@dataclass
class Run:
    status: dict
    phases: list[str]


def follow(
    release: Release,
    name: str,
    done: Callable[[dict], bool],
    *,
    on_tick: Callable[[dict], None] | None = None,
    timeout: float = TRAIN_TIMEOUT,
    interval: float = 1,
) -> Run:
    """Polls the job's status until done(status); on_tick(status) runs on every poll."""
    start = time.monotonic()
    phases: list[str] = []
    status: dict = {}
    while time.monotonic() < start + timeout:
        status = release.kubectl.json("get", "trainingjob", name).get("status") or {}
        phase = status.get("phase")
        if phase and (not phases or phases[-1] != phase):
            phases.append(phase)
        if on_tick:
            on_tick(status)
        if done(status):
            return Run(status, phases)
        time.sleep(interval)
    raise AssertionError(
        f"job {name} not done after {timeout}s; phases {phases}\n"
        + json.dumps(status, indent=1)[:4000]
    )


def client_pod(name: str, script: str, env: dict[str, str], **spec: object) -> dict:
    """A pod in the namespace that runs a Python script in the trainer image."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": PART_OF},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "securityContext": POD_SECURITY_CONTEXT,
            "containers": [
                {
                    "name": "client",
                    "image": TRAINER_IMAGE,
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["python", "-c", script],
                    "env": [{"name": k, "value": v} for k, v in env.items()],
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                    },
                    **spec.pop("container", {}),
                }
            ],
            **spec,
        },
    }


def pod_finished(pod: dict) -> bool:
    return pod["status"].get("phase") in ("Succeeded", "Failed")


def log_records(kubectl: Kubectl, pod: str) -> list[dict]:
    """The JSON lines of a pod's log."""
    return json_lines(kubectl("logs", pod).stdout)


def json_lines(log: str) -> list[dict]:
    records = []
    for line in log.splitlines():
        if line.startswith("{"):
            with contextlib.suppress(json.JSONDecodeError):
                records.append(json.loads(line))
    return records


def wait_for_log_record(kubectl: Kubectl, pod: str, key: str, timeout: float = 180) -> dict:
    """Waits until the pod has logged a JSON record with `key`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        phase = kubectl.json("get", "pod", pod)["status"].get("phase")
        if phase in ("Running", "Succeeded", "Failed"):
            found = [r for r in log_records(kubectl, pod) if key in r]
            if found:
                return found[-1]
            assert phase == "Running", kubectl("logs", pod).stdout[-3000:]
        time.sleep(1)
    raise AssertionError(f"pod {pod} logged no {key!r} record in {timeout}s")


REACH_SERVING = (
    "import socket, time\n"
    "# A new pod is let through the namespace's NetworkPolicies a moment after it starts\n"
    "# (under a second measured with kube-router): wait for that, not for the model.\n"
    "deadline = time.monotonic() + 30\n"
    "while True:\n"
    "    try:\n"
    "        socket.create_connection(('mnist-serving', 8501), timeout=2).close(); break\n"
    "    except OSError:\n"
    "        if time.monotonic() > deadline: raise\n"
    "        time.sleep(0.2)\n"
)
"""Prepended to the scripts of client pods that call the serving Service."""

PREDICT = REACH_SERVING + (
    "import json, os, urllib.request\n"
    "req = urllib.request.Request('http://mnist-serving:8501/v1/models/mnist:predict',\n"
    "    data=os.environ['BODY'].encode(), headers={'Content-Type': 'application/json'})\n"
    "print(urllib.request.urlopen(req, timeout=30).read().decode())\n"
)


def predicted_digit(kubectl: Kubectl, pod: str) -> int:
    """A client pod in the namespace asks the serving Service, by its DNS name, for a 7."""
    digit = (REPO / "examples" / "digit-7.json").read_text()
    kubectl.apply(client_pod(pod, PREDICT, {"BODY": digit}))
    done = kubectl.wait_for(f"pod {pod}", pod_finished, timeout=180)
    answer = kubectl("logs", pod).stdout
    assert done["status"]["phase"] == "Succeeded", answer
    (probabilities,) = json.loads(answer)["predictions"]
    return max(range(10), key=lambda d: probabilities[d])


def serving_annotations(kubectl: Kubectl) -> dict[str, str]:
    return kubectl.json("get", "deployment", SERVING)["metadata"]["annotations"]


def test_1_install_makes_the_operator_ready(release: Release) -> None:
    start = time.monotonic()
    # No --wait: it would also wait for the models claim to bind, which a WaitForFirstConsumer
    # StorageClass (the local cluster's, most clouds') does only once a job's pod uses it.
    release.helm("install", release.name, str(CHART), "--set", "watch.allNamespaces=false")
    release.kubectl(
        "rollout", "status", f"deployment/{release.name}", "--timeout=300s", timeout=330
    )
    timed(release.times, "install_to_operator_ready_s", start)
    deployment = release.kubectl.json("get", "deployment", release.name)
    assert deployment["status"].get("readyReplicas") == 1
    # The models claim is there (it may bind only when the first pod uses it).
    release.kubectl("get", "pvc", MODELS_CLAIM)
    # kopf started with the rights it needs: no "forbidden" in its log.
    log = release.kubectl("logs", f"deployment/{release.name}").stdout
    assert "forbidden" not in log.lower(), log[-3000:]


def test_2_mnist_trains_is_promoted_and_reads_a_seven(release: Release) -> None:
    kubectl = release.kubectl
    start = time.monotonic()
    # One serving replica: a rollout starts the new pod and stops the old one only once the
    # new one is ready (maxUnavailable 0), so even one replica never leaves the Service empty.
    # Each server loads TensorFlow, a minute or two on a slow node.
    kubectl.apply(mnist_job(limit=FIRST_LIMIT, promotion={"replicas": SERVING_REPLICAS}))
    run = follow(release, "mnist", promotion_decided, interval=2)
    status = run.status
    timed(release.times, "train_and_promote_s", start)
    assert status.get("phase") == "Promoted", json.dumps(status, indent=1)[:4000]
    assert "Running" in run.phases, run.phases
    # The table reads at a glance: phase, epochs, accuracy, what serves it. (While Running
    # the epoch column moves with each progress read; this short job may end between two.)
    (row,) = kubectl("get", "trainingjobs", "--no-headers").stdout.splitlines()
    assert row.split()[:2] == ["mnist", "Promoted"], row
    assert f"{EPOCHS}/{EPOCHS}" in row and f"{SERVING}:1" in row, row
    assert f"{status['bestMetrics']['val_accuracy']:g}"[:4] in row, row
    assert status["serving"]["version"] == 1
    assert status["bestCheckpoint"]["value"] > 0.85  # val accuracy of the dense net
    # Trained and served behind the operator's NetworkPolicies, which the cluster enforces.
    policies = {p["metadata"]["name"]: p for p in kubectl.json("get", "networkpolicies")["items"]}
    assert {"mnist-workers", SERVING} <= set(policies)
    assert policies["mnist-workers"]["metadata"]["ownerReferences"][0]["name"] == "mnist"

    start = time.monotonic()
    assert predicted_digit(kubectl, "predict") == 7
    timed(release.times, "predict_s", start)


LOADGEN = (
    REACH_SERVING
    + """
import json, os, threading, time, urllib.error, urllib.request
# Looked up once, as a client keeping its connections would: the rollout is measured through
# the Service's routing, not through each request's lookup in the local cluster's DNS.
BASE = f"http://{socket.gethostbyname('mnist-serving')}:8501/v1/models/mnist"
BODY = os.environ["BODY"].encode()
RATE, THREADS = float(os.environ["RATE"]), int(os.environ["THREADS"])
MAX_SECONDS, MAX_REQUESTS = float(os.environ["MAX_SECONDS"]), int(os.environ["MAX_REQUESTS"])
STOP = "/tmp/stop"  # the test creates it once the rollout is over
lock = threading.Lock()
sent, failed, codes, versions = 0, 0, {}, {}
start = time.monotonic()


def served_version():
    try:
        with urllib.request.urlopen(BASE, timeout=10) as r:
            return str(json.loads(r.read())["model_version_status"][0]["version"])
    except Exception as e:
        return type(e).__name__


def client(i):
    global sent, failed
    interval = THREADS / RATE
    next_at = start + i * interval / THREADS
    n = 0
    while time.monotonic() - start < MAX_SECONDS and not os.path.exists(STOP):
        with lock:
            if sent >= MAX_REQUESTS:
                return
            sent += 1
        try:
            req = urllib.request.Request(
                BASE + ":predict", data=BODY, headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=10) as r:
                code = str(r.status)
                ok = len(json.loads(r.read())["predictions"]) == 1
        except urllib.error.HTTPError as e:
            code, ok = str(e.code), False
        except Exception as e:
            code, ok = type(e).__name__, False
        n += 1
        version = served_version() if n % 10 == 0 else None
        with lock:
            codes[code] = codes.get(code, 0) + 1
            failed += not ok
            if version:
                versions[version] = versions.get(version, 0) + 1
        next_at += interval
        time.sleep(max(0.0, next_at - time.monotonic()))


print(json.dumps({"started": True}), flush=True)
threads = [threading.Thread(target=client, args=(i,)) for i in range(THREADS)]
for t in threads:
    t.start()
for t in threads:
    t.join()
seconds = time.monotonic() - start
print(json.dumps({"sent": sent, "failed": failed, "codes": codes, "versions": versions,
                  "seconds": round(seconds, 1), "perSecond": round(sent / seconds, 1)}))
"""
)


def serving_pods_all_on(kubectl: Kubectl, version: int, replicas: int) -> Callable[[dict], bool]:
    """True once exactly `replicas` serving pods exist, all ready and pinned to `version`."""

    def check(pods: dict) -> bool:
        items = pods["items"]
        return len(items) == replicas and all(
            not p["metadata"].get("deletionTimestamp")
            and any(
                e["name"] == "MODEL_VERSION" and e.get("value") == str(version)
                for e in p["spec"]["containers"][0].get("env") or []
            )
            and any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in p["status"].get("conditions") or []
            )
            for p in items
        )

    return check


def test_3_a_better_model_rolls_out_under_load_without_a_failed_request(
    release: Release,
) -> None:
    kubectl = release.kubectl
    start = time.monotonic()
    digit = (REPO / "examples" / "digit-7.json").read_text()
    load = {
        "BODY": digit,
        "RATE": str(LOAD_RATE),
        "THREADS": str(LOAD_THREADS),
        "MAX_SECONDS": str(LOAD_MAX_SECONDS),
        "MAX_REQUESTS": str(LOAD_MAX_REQUESTS),
    }
    # The load starts before the job: a job of a few seconds' training could otherwise reach
    # its rollout between two looks at its status. Twelve small requests a second cost
    # training little.
    kubectl.apply(client_pod("load", LOADGEN, load))
    wait_for_log_record(kubectl, "load", "started")
    kubectl.apply(mnist_job("mnist-better", limit=BETTER_LIMIT))
    run = follow(release, "mnist-better", promotion_decided, interval=2)
    assert run.status["phase"] == "Promoted", json.dumps(run.status, indent=1)[:4000]
    serving = run.status["serving"]
    assert (serving["version"], serving["previousVersion"]) == (2, 1), serving
    # The old pods are gone only after their preStop; the load runs until then.
    kubectl.wait_for(
        "pods -l kubetrain.io/serving=" + SERVING,
        serving_pods_all_on(kubectl, 2, replicas=SERVING_REPLICAS),
        timeout=120,
    )
    kubectl("exec", "load", "--", "python", "-c", "open('/tmp/stop', 'w').close()")
    kubectl.wait_for("pod load", pod_finished, timeout=60)
    summary = log_records(kubectl, "load")[-1]
    timed(release.times, "better_job_rollout_under_load_s", start)
    release.times["rollout_requests"] = summary["sent"]
    release.times["rollout_failed_requests"] = summary["failed"]
    release.times["rollout_requests_per_s"] = summary["perSecond"]

    assert summary["failed"] == 0, summary
    # The load spanned the rollout: both versions answered it. Its rate is a figure for the
    # report, not a pass mark: on a busy two-core node it varies with everything else running.
    assert {"1", "2"} <= set(summary["versions"]), summary
    annotations = serving_annotations(kubectl)
    assert annotations["kubetrain.io/model-version"] == "2"
    assert annotations["kubetrain.io/previous-version"] == "1"

    # A worse model (a tenth of the images, one epoch) is not promoted.
    start = time.monotonic()
    generation = kubectl.json("get", "deployment", SERVING)["metadata"]["generation"]
    kubectl.apply(mnist_job("mnist-worse", epochs=1, limit=1000))
    worse = follow(release, "mnist-worse", promotion_decided, interval=2).status
    timed(release.times, "worse_job_not_promoted_s", start)
    assert worse["phase"] == "Succeeded", worse
    promoted = condition(worse, "Promoted")
    assert (promoted["status"], promoted["reason"]) == ("False", "NotBetter"), promoted
    dep = kubectl.json("get", "deployment", SERVING)
    assert dep["metadata"]["generation"] == generation
    assert dep["metadata"]["annotations"]["kubetrain.io/model-version"] == "2"


def worker_pods(kubectl: Kubectl, job: str) -> list[dict]:
    return kubectl.json("get", "pods", "-l", f"kubetrain.io/job={job}")["items"]


def training_job(name: str, storage: dict) -> dict:
    """Long enough to be interrupted mid-training; its model is not promoted."""
    return mnist_job(
        name,
        epochs=8,  # room for both faults between epochs on a fast machine
        limit=FIRST_LIMIT,
        model={"architecture": "mnist-dense", "name": "mnist-scratch"},
        promotion={"enabled": False},
        runPolicy={"cleanPodPolicy": "None"},
        storage=storage,
    )


def object_store(release: Release) -> tuple[dict, dict[str, str] | None]:
    """(spec.storage, the store's keys): a prefix of the cluster's S3 bucket with the Secret
    the examples name, or the models claim on a cluster without an S3 server."""
    s3 = cluster_s3()
    if s3 is None:
        return {"claimName": MODELS_CLAIM}, None
    release.kubectl.apply(s3_secret("s3-credentials", s3))
    uri = f"s3://{s3['KUBETRAIN_S3_BUCKET']}/{release.namespace}"
    return {"uri": uri, "secretName": "s3-credentials"}, s3


def running_workers(pods: list[dict], attempt: int) -> int:
    return sum(
        p["metadata"]["labels"]["kubetrain.io/attempt"] == str(attempt)
        and p.get("status", {}).get("phase") == "Running"
        for p in pods
    )


def finished_training(epoch: dict | None) -> bool:
    """The chief logged its last epoch. (The job still reads Running while it evaluates
    and exports.)"""
    return epoch is not None and epoch["epoch"] >= epoch["totalEpochs"]


def last_epoch_record(kubectl: Kubectl, pod: str) -> dict | None:
    """The newest epoch record in a worker's log, if it has one yet."""
    proc = kubectl("logs", pod, check=False)  # not started yet: no log
    epochs = [r for r in json_lines(proc.stdout) if r.get("type") == "epoch"]
    return epochs[-1] if proc.returncode == 0 and epochs else None


def assert_interrupted_then_succeeded(run: Run, killed: list[dict]) -> None:
    assert killed, f"training ended before it could be interrupted: {run.phases}"
    assert run.status["phase"] == "Succeeded", json.dumps(run.status, indent=1)[:4000]


def test_4_a_killed_worker_restarts_the_workers_and_a_killed_operator_is_replaced(
    release: Release,
) -> None:
    """One job meets both faults: its workers resume after one is killed, then the operator
    is killed and its successor adopts the running workers and finishes the job."""
    kubectl = release.kubectl
    start = time.monotonic()
    operator = f"app.kubernetes.io/instance={release.name},app.kubernetes.io/component=operator"
    (old_operator,) = kubectl.json("get", "pods", "-l", operator)["items"]
    storage, s3 = object_store(release)
    kubectl.apply(training_job("resilient", storage))
    killed_worker: list[dict] = []
    killed_operator: list[dict] = []
    workers_at_operator_kill: set[str] = set()
    per_attempt_max: dict[str, int] = {}

    def kill_a_worker_then_the_operator(status: dict) -> None:
        pods = worker_pods(kubectl, "resilient")
        attempts = [p["metadata"]["labels"]["kubetrain.io/attempt"] for p in pods]
        for attempt in set(attempts):
            per_attempt_max[attempt] = max(per_attempt_max.get(attempt, 0), attempts.count(attempt))
        epoch = last_epoch_record(kubectl, "resilient-worker-0") if not killed_worker else None
        # The second epoch or a later one: the chief reports an epoch once the one before it
        # is in the store (a checkpoint still uploading is lost with its worker), so the job
        # has an epoch to resume from. The chief's own log says so sooner than the status.
        if epoch and 2 <= epoch["epoch"] < epoch["totalEpochs"]:
            killed_worker.append(epoch)
            kubectl("delete", "pod", "resilient-worker-1", "--grace-period=0", "--force")
        elif (
            killed_worker
            and not killed_operator
            and status.get("phase") == "Running"
            and status.get("restarts", 0) >= 1
            and running_workers(pods, status["restarts"]) == 2
            and not finished_training(last_epoch_record(kubectl, "resilient-worker-0"))
        ):
            # The resumed attempt's workers run (loading TensorFlow, then training): its
            # epochs pass in seconds on a fast machine, so waiting for one of them would
            # often see the job end first.
            killed_operator.append(dict(status))
            workers_at_operator_kill.update(
                p["metadata"]["uid"]
                for p in pods
                if p["metadata"]["labels"]["kubetrain.io/attempt"] == str(status["restarts"])
            )
            kubectl("delete", "pod", "-l", operator, "--grace-period=0", "--force")

    run = follow(
        release, "resilient", training_done, on_tick=kill_a_worker_then_the_operator, interval=1
    )
    timed(release.times, "worker_and_operator_killed_job_succeeds_s", start)
    assert_interrupted_then_succeeded(run, killed_worker)
    assert_interrupted_then_succeeded(run, killed_operator)
    status = run.status

    # The killed worker restarted the job once; the new chief resumed from a checkpoint of
    # an epoch it had finished.
    assert status["restarts"] == 1, status
    assert "Restarting" in run.phases, run.phases
    assert "resilient-worker-1" in json.dumps(status.get("lastFailure")), status
    resumed = [r for r in log_records(kubectl, "resilient-worker-0") if r.get("type") == "resumed"]
    assert resumed, kubectl("logs", "resilient-worker-0").stdout[-3000:]
    assert resumed[0]["fromEpoch"] >= 2, resumed

    # Only an operator writes the status, and the old one was gone before the job ended.
    (new_operator,) = kubectl.json("get", "pods", "-l", operator)["items"]
    assert new_operator["metadata"]["uid"] != old_operator["metadata"]["uid"]
    # The successor adopted the running workers: no second restart, never more than two
    # workers of an attempt, the same worker pods at the end.
    assert per_attempt_max == {"0": 2, "1": 2}, per_attempt_max
    assert {p["metadata"]["uid"] for p in worker_pods(kubectl, "resilient")} == (
        workers_at_operator_kill
    )
    if s3 is not None:  # what the chief published is in the bucket, as any S3 client sees it
        listing = bucket_listing(s3, f"{s3['KUBETRAIN_S3_BUCKET']}/{release.namespace}")
        job_root = f"{release.namespace}/jobs/resilient"
        assert f"{job_root}/result.json" in listing, listing
        assert f"{job_root}/checkpoints/epoch-0006/metrics.json" in listing, listing
        assert f"{release.namespace}/models/mnist-scratch/1/metadata.json" in listing, listing


SABOTEUR = """
import json, os, time
root = os.environ["MODEL_DIR"]
before = set(os.listdir(root))
print(json.dumps({"watching": sorted(before)}), flush=True)
deadline = time.monotonic() + float(os.environ["MAX_SECONDS"])
while time.monotonic() < deadline:
    new = sorted(d for d in os.listdir(root) if d.isdigit() and d not in before)
    if new:
        with open(os.path.join(root, new[0], "saved_model.pb"), "wb") as f:
            f.write(b"not a SavedModel")
        print(json.dumps({"corrupted": new[0]}), flush=True)
        break
    time.sleep(0.1)
"""


def test_5_a_model_whose_server_never_becomes_ready_is_rolled_back(release: Release) -> None:
    kubectl = release.kubectl
    start = time.monotonic()
    # The next export of the served model is corrupted on the volume as soon as it appears,
    # before the operator promotes it: its server can never load it.
    kubectl.apply(
        client_pod(
            "saboteur",
            SABOTEUR,
            {"MODEL_DIR": f"{MOUNT_PATH}/models/mnist", "MAX_SECONDS": str(TRAIN_TIMEOUT)},
            container={"volumeMounts": [{"name": "storage", "mountPath": MOUNT_PATH}]},
            volumes=[{"name": "storage", "persistentVolumeClaim": {"claimName": MODELS_CLAIM}}],
        )
    )
    watching = wait_for_log_record(kubectl, "saboteur", "watching")
    assert "2" in watching["watching"], watching
    # More images: better than the served model, so the gate lets it through.
    kubectl.apply(
        mnist_job("mnist-broken", limit=BROKEN_LIMIT, promotion={"progressDeadlineSeconds": 15})
    )
    run = follow(release, "mnist-broken", promotion_decided, interval=2)
    timed(release.times, "broken_model_rolled_back_s", start)
    corrupted = wait_for_log_record(kubectl, "saboteur", "corrupted", timeout=30)
    status = run.status
    assert corrupted["corrupted"] == str(status["model"]["version"]), (corrupted, status)
    assert status["phase"] == "Succeeded", json.dumps(status, indent=1)[:4000]
    promoted = condition(status, "Promoted")
    assert (promoted["status"], promoted["reason"]) == ("False", "RolloutFailed"), promoted
    assert "rolled back to version 2" in promoted["message"], promoted
    assert serving_annotations(kubectl)["kubetrain.io/model-version"] == "2"
    kubectl("rollout", "status", f"deployment/{SERVING}", "--timeout=180s", timeout=200)
    # Serving stayed up on version 2 and still reads a 7.
    assert predicted_digit(kubectl, "predict-after-rollback") == 7


def test_6_uninstall_leaves_no_pods_services_deployments_or_policies(release: Release) -> None:
    kubectl = release.kubectl
    start = time.monotonic()
    kubectl("delete", "trainingjobs", "--all", "--timeout=120s")
    kubectl("delete", "pods", "-l", "app.kubernetes.io/part-of=kubetrain-e2e", "--wait=false")
    # Serving Deployments outlive the jobs on purpose; they go by their label.
    kubectl(
        "delete",
        "deployment,service,networkpolicy",
        "-l",
        "app.kubernetes.io/managed-by=kubetrain-operator",
        "--timeout=120s",
    )
    release.helm("uninstall", release.name, "--wait", "--timeout", "3m")
    timed(release.times, "uninstall_s", start)

    def nothing_left(listing: dict) -> bool:
        kinds = ("Pod", "Service", "Deployment", "NetworkPolicy")
        return not [i for i in listing["items"] if i["kind"] in kinds]

    kubectl.wait_for("pods,services,deployments,networkpolicies", nothing_left, timeout=120)
    roles = release.kubectl.json("get", "clusterroles,clusterrolebindings")["items"]
    assert not [
        r["metadata"]["name"] for r in roles if r["metadata"]["name"].startswith(release.name)
    ]
    # Only the models claim stays, on purpose (storage.keepOnUninstall).
    claims = kubectl.json("get", "pvc")["items"]
    assert [c["metadata"]["name"] for c in claims] == ["kubetrain-models"]

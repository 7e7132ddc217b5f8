"""The operator in-process (kopf's KopfRunner) against a real API server, scheduler, kubelet.

Worker pods run the stand-in programs of `standins.py` from the trainer image: they speak the
trainer's contract (`kubetrain.trainer.api`: TF_CONFIG, JSON records, exit codes, termination
message, exported model directory) without TensorFlow, because what is under test here is the
operator. On another cluster, point KUBETRAIN_TRAINER_IMAGE at a trainer image it has.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import CLAIM
from kopf.testing import KopfRunner
from kubecluster import Kubectl, bucket_listing, cluster_s3, s3_secret
from kubetrain.operator.settings import SETTINGS
from kubetrain.trainer.api.records import EXIT_PERMANENT
from standins import server_command, worker_command

pytestmark = pytest.mark.cluster

IMAGE = os.environ.get("KUBETRAIN_TRAINER_IMAGE", "localhost/kubetrain-trainer:dev")
# kopf's log line for a handler that raised anything but kopf.TemporaryError (a planned retry),
# and the operator's own for a reconcile that did.
HANDLER_FAILURE = re.compile(r"^.* failed (?:with an exception|permanently)\b.*$", re.MULTILINE)
PROGRESS_INTERVAL = 2.0


@contextlib.contextmanager
def operator(ns: Kubectl, worker: list[str] | None = None) -> Iterator[KopfRunner]:
    """The operator watching `ns`, with the stand-in worker and model server.

    Stand-in epochs last seconds, so the chief's progress is read every PROGRESS_INTERVAL
    rather than the default 10 s.
    """
    saved = SETTINGS.worker_command, SETTINGS.serving_command, SETTINGS.progress_interval
    SETTINGS.worker_command = worker or worker_command()
    SETTINGS.serving_command = server_command()
    SETTINGS.progress_interval = PROGRESS_INTERVAL
    args = ["run", "--standalone", "--namespace", ns.namespace, "-m", "kubetrain.operator.handlers"]
    try:
        with KopfRunner(args, timeout=60) as runner:  # reraises what the operator raised
            yield runner
    finally:
        SETTINGS.worker_command, SETTINGS.serving_command, SETTINGS.progress_interval = saved
    # A handler that raised is only logged by kopf (and retried), never reraised.
    failures = HANDLER_FAILURE.findall(runner.output)
    assert not failures, "\n".join(failures)


def trainingjob(name: str, **spec: Any) -> dict[str, Any]:
    body = {
        "dataset": {"name": "mnist", "source": "data/mnist"},
        "model": {"architecture": "mnist-dense", "name": "digits"},
        "training": {"epochs": 3},
        "workers": {"replicas": 2, "image": IMAGE},
        "storage": {"claimName": CLAIM},
        "promotion": {"enabled": False},
    }
    for key, value in spec.items():
        merged = {**body.get(key, {}), **value}
        body[key] = {k: v for k, v in merged.items() if v is not None}  # None: leave it out
    return {
        "apiVersion": "kubetrain.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": body,
    }


def phase_in(*phases: str):
    return lambda tj: tj.get("status", {}).get("phase") in phases


def condition(tj: dict, type_: str) -> dict:
    return next(c for c in tj["status"]["conditions"] if c["type"] == type_)


def pods(ns: Kubectl, job: str) -> list[dict]:
    return ns.json("get", "pods", "-l", f"kubetrain.io/job={job}")["items"]


def events(ns: Kubectl, name: str) -> list[tuple[str, str]]:
    items = ns.json(
        "get",
        "events",
        "--field-selector",
        f"involvedObject.kind=TrainingJob,involvedObject.name={name}",
    )["items"]
    return [(e["reason"], e["message"]) for e in items]


def test_apply_creates_the_headless_service_and_workers_that_can_find_each_other(ns: Kubectl):
    with operator(ns, worker_command(epoch_seconds=30)):
        started = time.monotonic()
        ns.apply(trainingjob("mnist", workers={"replicas": 3}))
        ns.wait_for(
            "pods -l kubetrain.io/job=mnist",
            lambda p: len(p["items"]) == 3,
            timeout=30,
            interval=0.2,
        )
        created_in = time.monotonic() - started
        tj = ns.wait_for("tj mnist", phase_in("Running"), timeout=120)
    assert created_in < 10, created_in
    service = ns.json("get", "service", "mnist-workers")
    assert service["spec"]["clusterIP"] == "None"
    for pod in pods(ns, "mnist"):
        index = int(pod["metadata"]["labels"]["kubetrain.io/worker-index"])
        env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
        config = json.loads(env["TF_CONFIG"])
        assert config["task"] == {"type": "worker", "index": index}
        assert config["cluster"]["worker"] == [
            f"mnist-worker-{i}.mnist-workers.{ns.namespace}.svc:2222" for i in range(3)
        ]
        assert pod["metadata"]["ownerReferences"][0]["uid"] == tj["metadata"]["uid"]
    # Each worker's stable name resolves, through the headless Service, to that pod.
    lookup = ns(
        "exec",
        "mnist-worker-0",
        "--",
        "python3",
        "-c",
        "import socket; print(socket.gethostbyname("
        f"'mnist-worker-2.mnist-workers.{ns.namespace}.svc'))",
    ).stdout.strip()
    assert lookup == ns.json("get", "pod", "mnist-worker-2")["status"]["podIP"]
    assert tj["status"]["workersReady"] == "3/3"
    assert condition(tj, "Running")["status"] == "True"


def test_progress_reaches_the_status_while_training_and_the_result_when_done(ns: Kubectl):
    with operator(ns, worker_command(epoch_seconds=4, val_accuracy=0.93, version=1)):
        ns.apply(trainingjob("mnist", training={"epochs": 3}))
        tj = ns.wait_for(
            "tj mnist",
            lambda t: phase_in("Running")(t) and t["status"].get("epoch", 0) >= 1,
            timeout=120,
            interval=0.5,
        )
        assert tj["status"]["epochProgress"] in ("1/3", "2/3")
        assert tj["status"]["metrics"]["val_accuracy"] > 0
        tj = ns.wait_for("tj mnist", phase_in("Succeeded", "Failed"), timeout=120)
    status = tj["status"]
    assert status["phase"] == "Succeeded", status
    assert status["bestCheckpoint"]["epoch"] == 3
    assert status["bestMetrics"]["val_accuracy"] == pytest.approx(0.93)
    assert status["testMetrics"]["test_accuracy"] == pytest.approx(0.925)
    assert status["model"]["version"] == 1
    assert status["completionTime"] >= status["startTime"]
    columns = ns("get", "tj", "mnist").stdout
    assert "Succeeded" in columns and "3/3" in columns and "0.93" in columns


def test_a_killed_worker_restarts_all_workers_which_resume(ns: Kubectl):
    kill = {"index": 1, "epoch": 2, "code": 137, "attempts": [0]}
    # The stand-in chief does not notice a dead peer (TensorFlow's would, within ~2 s), so
    # epochs are long enough for the operator to restart the job before the chief finishes.
    with operator(ns, worker_command(epoch_seconds=4, stop=kill)):
        ns.apply(trainingjob("mnist", training={"epochs": 4}))
        tj = ns.wait_for("tj mnist", phase_in("Succeeded", "Failed"), timeout=180)
    assert tj["status"]["phase"] == "Succeeded", tj["status"]
    assert tj["status"]["restarts"] == 1
    assert "mnist-worker-1 exited with code 137" in tj["status"]["lastFailure"]
    assert any(reason == "Restarting" for reason, _ in events(ns, "mnist"))
    # The second attempt's chief resumed after the last finished epoch, not from epoch 1.
    log = ns("logs", "mnist-worker-0").stdout
    resumed = re.search(r"attempt 1 from epoch (\d+)", log)
    assert resumed and int(resumed.group(1)) > 1, log


def test_exhausting_the_backoff_limit_fails_the_job(ns: Kubectl):
    crash = {"index": 0, "epoch": 1, "code": 1}  # every attempt
    with operator(ns, worker_command(epoch_seconds=1, stop=crash)):
        ns.apply(trainingjob("mnist", runPolicy={"backoffLimit": 1}))
        tj = ns.wait_for("tj mnist", phase_in("Succeeded", "Failed"), timeout=180)
    assert tj["status"]["phase"] == "Failed"
    assert tj["status"]["restarts"] == 1
    assert condition(tj, "Failed")["reason"] == "BackoffLimitExceeded"


def test_a_permanent_error_fails_at_once_with_the_workers_message(ns: Kubectl):
    bad = {
        "index": 0,
        "epoch": 1,
        "code": EXIT_PERMANENT,
        "message": "data/mnist: train-images-idx3-ubyte: wrong magic number 2049",
    }
    with operator(ns, worker_command(epoch_seconds=1, stop=bad)):
        ns.apply(trainingjob("mnist"))
        tj = ns.wait_for("tj mnist", phase_in("Succeeded", "Failed"), timeout=120)
    assert tj["status"]["phase"] == "Failed"
    assert tj["status"]["restarts"] == 0
    failed = condition(tj, "Failed")
    assert failed["reason"] == "PermanentError"
    assert failed["message"].endswith("wrong magic number 2049")


def test_a_succeeded_worker_deleted_by_someone_is_not_recreated(ns: Kubectl):
    done_early = {"index": 1, "epoch": 1, "code": 0}
    with operator(ns, worker_command(epoch_seconds=6, stop=done_early)):
        ns.apply(trainingjob("mnist", training={"epochs": 3}))
        ns.wait_for(
            "tj mnist",
            lambda t: t.get("status", {}).get("workers", {}).get("completedIndexes") == [1],
            timeout=120,
        )
        ns("delete", "pod", "mnist-worker-1")
        time.sleep(5)  # the pod's deletion has been reconciled
        assert [p["metadata"]["name"] for p in pods(ns, "mnist")] == ["mnist-worker-0"]
        tj = ns.wait_for("tj mnist", phase_in("Succeeded", "Failed"), timeout=120)
    assert tj["status"]["phase"] == "Succeeded", tj["status"]
    assert tj["status"]["restarts"] == 0


def test_clean_pod_policy_all_deletes_every_pod_when_the_job_ends(ns: Kubectl):
    with operator(ns, worker_command(epoch_seconds=0.5)):
        ns.apply(trainingjob("mnist", training={"epochs": 1}, runPolicy={"cleanPodPolicy": "All"}))
        ns.wait_for("tj mnist", phase_in("Succeeded"), timeout=120)
        ns.wait_for("pods -l kubetrain.io/job=mnist", lambda p: not p["items"], timeout=60)
    # Only pods go; the headless Service stays until the job itself is deleted.
    assert ns.json("get", "service", "mnist-workers")["spec"]["clusterIP"] == "None"


def test_the_active_deadline_fails_the_job_and_stops_its_workers(ns: Kubectl):
    with operator(ns, worker_command(epoch_seconds=60)):
        ns.apply(
            trainingjob("mnist", runPolicy={"activeDeadlineSeconds": 8, "cleanPodPolicy": "None"})
        )
        tj = ns.wait_for("tj mnist", phase_in("Failed"), timeout=60)
        ns.wait_for("pods -l kubetrain.io/job=mnist", lambda p: not p["items"], timeout=60)
    assert condition(tj, "Failed")["reason"] == "DeadlineExceeded"


def test_a_finished_job_is_deleted_after_its_ttl(ns: Kubectl):
    with operator(ns, worker_command(epoch_seconds=0.5)):
        ns.apply(
            trainingjob("mnist", training={"epochs": 1}, runPolicy={"ttlSecondsAfterFinished": 3})
        )
        ns.wait_for("tj mnist", phase_in("Succeeded"), timeout=120)
        # Gone within seconds: not after kopf's default 60 s re-check of the deleting timer.
        ns.wait_for("tj", lambda lst: not lst["items"], timeout=30)
        # Owner references take the Service and pods with it.
        ns.wait_for(
            "pods,services -l kubetrain.io/job=mnist", lambda lst: not lst["items"], timeout=60
        )


def test_a_jobs_tensorboard_is_owned_by_it_outlives_training_and_goes_when_turned_off(
    ns: Kubectl,
):
    board = "deployments,services,networkpolicies -l kubetrain.io/role=tensorboard"
    with operator(ns, worker_command(epoch_seconds=0.5)):
        ns.apply(trainingjob("curves", training={"epochs": 1}, tensorboard={"enabled": True}))
        tj = ns.wait_for(
            "tj curves",
            lambda t: phase_in("Succeeded")(t) and "tensorboard" in t["status"],
            timeout=120,
        )
        assert tj["status"]["tensorboard"] == {"service": "curves-tensorboard", "port": 6006}
        made = ns.json("get", *board.split())["items"]
        assert sorted(o["kind"] for o in made) == ["Deployment", "NetworkPolicy", "Service"]
        for obj in made:
            assert obj["metadata"]["ownerReferences"][0]["uid"] == tj["metadata"]["uid"]
        # It answers where the job's status says, reading the job's curves directory.
        ns("rollout", "status", "deployment/curves-tensorboard", "--timeout=300s", timeout=320)
        with ns.port_forward("svc/curves-tensorboard", 6006) as port:
            url = f"http://127.0.0.1:{port}/data/environment"
            with urllib.request.urlopen(url, timeout=30) as answer:
                environment = json.load(answer)
        assert environment["data_location"].endswith("/jobs/curves/tensorboard"), environment
        off = json.dumps({"spec": {"tensorboard": {"enabled": False}}})
        ns("patch", "tj", "curves", "--type", "merge", "-p", off)
        ns.wait_for("tj curves", lambda t: "tensorboard" not in t["status"], timeout=60)
    ns.wait_for(board, lambda lst: not lst["items"], timeout=60)


def test_a_restarted_operator_creates_no_duplicates(ns: Kubectl):
    with operator(ns, worker_command(epoch_seconds=30)):
        ns.apply(trainingjob("mnist"))
        ns.wait_for("tj mnist", phase_in("Running"), timeout=120)
    before = {p["metadata"]["name"]: p["metadata"]["uid"] for p in pods(ns, "mnist")}
    with operator(ns, worker_command(epoch_seconds=30)):
        time.sleep(6)  # every job and pod listed at startup has been reconciled
        tj = ns.json("get", "tj", "mnist")
    after = {p["metadata"]["name"]: p["metadata"]["uid"] for p in pods(ns, "mnist")}
    assert after == before
    assert len(after) == 2
    assert tj["status"]["phase"] == "Running"
    assert tj["status"]["restarts"] == 0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model": {"architecture": "planesnet-cnn"}}, "spec.model.architecture"),
        ({"training": {"epochs": 0}}, "spec.training.epochs"),
        ({"workers": {"replicas": 2, "gpus": 1}}, 'unknown field "spec.workers.gpus"'),
        ({"runPolicy": {"cleanPodPolicy": "Sometimes"}}, "spec.runPolicy.cleanPodPolicy"),
        ({"storage": {"claimName": "../kube-system/x"}}, "spec.storage.claimName"),
        ({"model": {"name": "007"}}, "spec.model.name"),
        ({"training": {"seed": 2**32}}, "spec.training.seed"),
    ],
)
def test_the_api_server_refuses_an_invalid_spec_naming_the_field(
    namespace: Kubectl, crd: None, change: dict, message: str
):
    body = trainingjob("bad")
    for key, value in change.items():
        body["spec"][key] = {**body["spec"].get(key, {}), **value}
        body["spec"][key] = {k: v for k, v in body["spec"][key].items() if v is not None}
    proc = namespace("apply", "-f", "-", input=json.dumps(body), check=False)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr


def test_a_job_with_nowhere_to_keep_its_model_fails_naming_the_fields_and_the_chart_value(
    ns: Kubectl,
):
    """No claim, no store, and no default storage from the chart: only the operator knows
    (the API server cannot see the chart's jobDefaults), so it refuses the job at once."""
    with operator(ns):
        ns.apply(trainingjob("homeless", storage={"claimName": None}, promotion={"enabled": True}))
        tj = ns.wait_for("tj homeless", phase_in("Failed"), timeout=60)
    valid = condition(tj, "Valid")
    assert (valid["status"], valid["reason"]) == ("False", "InvalidSpec")
    assert "spec.storage.claimName or spec.storage.uri is required" in valid["message"]
    assert "jobDefaults.storage" in valid["message"]
    assert pods(ns, "homeless") == []


def test_the_api_server_refuses_a_name_too_long_for_worker_pods(namespace: Kubectl, crd: None):
    proc = namespace("apply", "-f", "-", input=json.dumps(trainingjob("x" * 53)), check=False)
    assert proc.returncode != 0
    assert "at most 52 characters" in proc.stderr, proc.stderr


def test_the_api_server_refuses_a_name_no_service_can_have(namespace: Kubectl, crd: None):
    proc = namespace("apply", "-f", "-", input=json.dumps(trainingjob("1st-run")), check=False)
    assert proc.returncode != 0
    assert "must start with a letter" in proc.stderr, proc.stderr


def test_a_missing_claim_is_reported_and_waited_for(namespace: Kubectl, crd: None):
    with operator(namespace, worker_command(epoch_seconds=30)):
        namespace.apply(trainingjob("mnist", storage={"claimName": "nowhere"}))
        tj = namespace.wait_for(
            "tj mnist",
            lambda t: any(
                c["type"] == "Valid" and c["status"] == "False"
                for c in t.get("status", {}).get("conditions", [])
            ),
            timeout=60,
        )
        assert tj["status"]["phase"] == "Pending"
        assert "'nowhere' does not exist" in condition(tj, "Valid")["message"]
        assert not pods(namespace, "mnist")
        assert any(reason == "ClaimNotFound" for reason, _ in events(namespace, "mnist"))


def serving_version(ns: Kubectl) -> str:
    dep = ns.json("get", "deployment", "digits-serving")
    env = dep["spec"]["template"]["spec"]["containers"][0]["env"]
    return next(e["value"] for e in env if e["name"] == "MODEL_VERSION")


def promote(
    ns: Kubectl,
    name: str,
    version: int,
    val_accuracy: float,
    export: bool = True,
    loadable: bool = True,
) -> dict:
    """Train (stand-in) and promote one model; returns the finished TrainingJob."""
    with operator(
        ns,
        worker_command(
            epoch_seconds=0.5,
            val_accuracy=val_accuracy,
            version=version,
            export=export,
            loadable=loadable,
        ),
    ):
        ns.apply(
            trainingjob(
                name,
                training={"epochs": 1},
                workers={"replicas": 1},
                promotion={
                    "enabled": True,
                    "deployment": "digits-serving",
                    "replicas": 2,
                    "progressDeadlineSeconds": 15,
                },
            )
        )
        return ns.wait_for(f"tj {name}", promotion_decided, timeout=240)


def promotion_decided(tj: dict) -> bool:
    """Promoted, failed, or succeeded with the promotion gate's answer."""
    return phase_in("Promoted", "Failed")(tj) or (
        phase_in("Succeeded")(tj)
        and any(c["type"] == "Promoted" for c in tj["status"]["conditions"])
    )


def test_promotion_rolls_forward_refuses_a_worse_model_and_rolls_back_a_broken_one(
    ns: Kubectl,
):
    # First model: the Deployment and its Service are created and become available.
    first = promote(ns, "first", version=1, val_accuracy=0.90)
    assert first["status"]["phase"] == "Promoted", first["status"]
    assert first["status"]["served"] == "digits-serving:1"
    assert serving_version(ns) == "1"
    assert ns.json("get", "service", "digits-serving")["spec"]["ports"][0]["port"] == 8501

    # A better model: the real deployment controller rolls to it.
    second = promote(ns, "second", version=2, val_accuracy=0.95)
    assert second["status"]["phase"] == "Promoted", second["status"]
    assert second["status"]["serving"]["previousVersion"] == 1
    assert serving_version(ns) == "2"
    dep = ns.json("get", "deployment", "digits-serving")
    assert dep["status"]["updatedReplicas"] == dep["status"]["availableReplicas"] == 2
    assert dep["metadata"]["annotations"]["kubetrain.io/metric-value"] == "0.95"
    replica_sets = ns.json("get", "replicasets", "-l", "kubetrain.io/serving=digits-serving")
    assert len(replica_sets["items"]) == 2
    assert any(r == "Promoted" for r, _ in events(ns, "second"))

    # A worse model: the gate refuses it and serving stays where it was.
    worse = promote(ns, "worse", version=3, val_accuracy=0.91)
    assert worse["status"]["phase"] == "Succeeded"
    assert condition(worse, "Promoted")["reason"] == "NotBetter"
    assert serving_version(ns) == "2"

    # A better score whose version is not in the storage: the model-check pod finds it
    # missing before the Deployment is touched, and is gone afterwards.
    before = ns.json("get", "deployment", "digits-serving")["metadata"]["generation"]
    missing = promote(ns, "missing", version=4, val_accuracy=0.99, export=False)
    assert missing["status"]["phase"] == "Succeeded", missing["status"]
    promoted = condition(missing, "Promoted")
    assert promoted["reason"] == "ModelNotFound", promoted
    assert "version 4 not found" in promoted["message"], promoted
    assert ns.json("get", "deployment", "digits-serving")["metadata"]["generation"] == before
    assert serving_version(ns) == "2"
    assert not ns.json("get", "pods", "-l", "kubetrain.io/role=model-check")["items"]
    assert [r for r, _ in events(ns, "missing")].count("CheckingModel") == 1

    # A better score whose complete export the server cannot load: never ready, rolled back.
    broken = promote(ns, "broken", version=5, val_accuracy=0.99, loadable=False)
    assert broken["status"]["phase"] == "Succeeded", broken["status"]
    promoted = condition(broken, "Promoted")
    assert promoted["reason"] == "RolloutFailed", promoted
    assert "rolled back to version 2" in promoted["message"]
    assert serving_version(ns) == "2"
    dep = ns.json("get", "deployment", "digits-serving")
    assert dep["metadata"]["annotations"]["kubetrain.io/model-version"] == "2"
    ns("rollout", "status", "deployment/digits-serving", "--timeout=120s")


# --- object storage: no volume anywhere ------------------------------------------------------


def test_a_job_in_object_storage_trains_and_serves_with_no_volume_at_all(ns: Kubectl):
    s3 = cluster_s3()
    if s3 is None:
        pytest.skip("no S3 server with this cluster; the local one (hack/cluster) has one")
    # Only the keys: the job's spec.storage.s3 points the pods at the store.
    ns.apply(s3_secret("s3", s3, ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")))
    uri = f"s3://{s3['KUBETRAIN_S3_BUCKET']}/{ns.namespace}"
    storage = {
        "claimName": None,
        "uri": uri,
        "secretName": "s3",
        "s3": {"endpoint": s3["AWS_ENDPOINT_URL"], "region": s3["AWS_REGION"]},
    }
    with operator(ns, worker_command(epoch_seconds=0.5, val_accuracy=0.9, version=1)):
        ns.apply(
            trainingjob(
                "stored",
                workers={"replicas": 2},
                storage=storage,
                promotion={"enabled": True, "deployment": "stored-serving", "replicas": 1},
            )
        )
        done = ns.wait_for("tj stored", phase_in("Promoted", "Failed", "Succeeded"), timeout=240)
        if done["status"]["phase"] == "Succeeded":  # promotion decided, or still under way
            done = ns.wait_for(
                "tj stored",
                lambda t: any(c["type"] == "Promoted" for c in t["status"]["conditions"]),
                timeout=180,
            )
    status = done["status"]
    assert status["phase"] == "Promoted", json.dumps(status, indent=1)
    assert status["model"]["path"] == f"{uri}/models/digits/1"
    # The served pod loaded what its init container pulled from the bucket.
    (pod,) = ns.json("get", "pods", "-l", "kubetrain.io/serving=stored-serving")["items"]
    assert pod["status"]["initContainerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
    ready = {c["type"]: c["status"] for c in pod["status"]["conditions"]}
    assert ready["Ready"] == "True"
    # No pod the job made, nor the serving pod, mounts a claim.
    for made in ns.json("get", "pods")["items"]:
        volumes = made["spec"].get("volumes") or []
        assert not any("persistentVolumeClaim" in v for v in volumes), made["metadata"]["name"]
    # What is in the bucket: the state, the published version, and no model-check pod left.
    assert "model-check" not in json.dumps(ns.json("get", "pods")["items"])
    listing = bucket_listing(s3, f"{s3['KUBETRAIN_S3_BUCKET']}/{ns.namespace}")
    assert f"{ns.namespace}/models/digits/1/metadata.json" in listing, listing
    assert f"{ns.namespace}/jobs/stored/epoch" in listing, listing


# --- trials -----------------------------------------------------------------------------------


def search(trials: dict[str, Any], epochs: int) -> dict[str, Any]:
    """The job `search`: one worker a trial, promoting its best model to digits-serving."""
    return trainingjob(
        "search",
        training={"epochs": epochs},
        workers={"replicas": 1},
        trials=trials,
        promotion={"enabled": True, "deployment": "digits-serving", "replicas": 1},
    )


def test_trials_run_as_jobs_of_their_own_and_the_best_ones_model_is_promoted(ns: Kubectl):
    weak, best, broken = 0.1, 0.01, 0.001
    worker = worker_command(
        epoch_seconds=2,
        by_learning_rate={
            weak: {"valAccuracy": 0.70, "version": 1},
            best: {"valAccuracy": 0.95, "version": 2},
            broken: {
                "version": 3,
                "stop": {"index": 0, "epoch": 1, "code": EXIT_PERMANENT, "message": "bad data"},
            },
        },
    )
    trials = {
        "count": 3,
        "parallelism": 2,
        "algorithm": "grid",
        "parameters": {"training.learningRate": {"values": [weak, best, broken]}},
        "earlyStopping": {"medianStop": {"minTrials": 1}},
    }
    with operator(ns, worker):
        ns.apply(search(trials, epochs=6))
        running = ns.wait_for("tj search", lambda t: t.get("status", {}).get("trials"), timeout=60)
        children = ns.json("get", "tj", "-l", "kubetrain.io/trial-of=search")["items"]
        assert sorted(c["metadata"]["name"] for c in children) == ["search-t0", "search-t1"]
        owner = children[0]["metadata"]["ownerReferences"][0]
        assert owner["uid"] == running["metadata"]["uid"]
        done = ns.wait_for("tj search", phase_in("Promoted", "Failed"), timeout=300)
        table = ns("get", "tj", "search").stdout
    status = done["status"]
    assert status["phase"] == "Promoted", json.dumps(status, indent=1)
    assert status["served"] == "digits-serving:2"
    assert status["bestTrial"] == 1
    assert status["trialsProgress"] == "3/3"
    board = {r["index"]: r for r in status["trials"]}
    assert board[1]["state"] == "Succeeded"
    assert board[0]["state"] == "EarlyStopped", board[0]
    assert board[2]["state"] == "Failed"
    assert "bad data" in board[2]["message"]
    assert status["trials"][0]["index"] == 1  # best first
    assert "3/3" in table
    assert "0/1" not in table  # a job with trials has no workers of its own
    assert serving_version(ns) == "2"
    assert condition(done, "Succeeded")["reason"] == "BestTrial"
    reasons = [r for r, _ in events(ns, "search")]
    assert {"TrialStarted", "TrialStopped", "TrialFailed", "TrialSucceeded"} <= set(reasons)
    # The stopped trial's job is gone; deleting the job takes the rest and their pods.
    assert "search-t0" not in ns("get", "tj", "-o", "name").stdout
    ns("delete", "tj", "search", "--wait=true")
    ns.wait_for("tj -l kubetrain.io/trial-of=search", lambda t: not t["items"], timeout=60)
    ns.wait_for("pods -l kubetrain.io/role=worker", lambda p: not p["items"], timeout=60)


def test_a_refit_trains_the_winners_parameters_again_and_its_model_is_promoted(ns: Kubectl):
    """The refit scores 0.99 on the validation split it trained on; the job keeps the
    search's 0.95, which is what the served model's annotation records."""
    weak, best = 0.1, 0.01
    worker = worker_command(
        epoch_seconds=1,
        by_learning_rate={weak: {"valAccuracy": 0.70, "version": 1}, best: {"version": 2}},
        refit={"valAccuracy": 0.99, "version": 3},
        val_accuracy=0.95,
    )
    trials = {
        "count": 2,
        "parallelism": 2,
        "algorithm": "grid",
        "parameters": {"training.learningRate": {"values": [weak, best]}},
        "refit": True,
    }
    with operator(ns, worker):
        ns.apply(search(trials, epochs=3))
        refitting = ns.wait_for("tj search-refit", lambda t: t.get("metadata"), timeout=120)
        done = ns.wait_for("tj search", phase_in("Promoted", "Failed"), timeout=300)
    status = done["status"]
    assert status["phase"] == "Promoted", json.dumps(status, indent=1)
    assert refitting["spec"]["dataset"]["trainOnValidation"] is True
    assert refitting["spec"]["training"]["learningRate"] == best
    assert refitting["metadata"]["ownerReferences"][0]["uid"] == done["metadata"]["uid"]
    assert status["refit"]["state"] == "Succeeded" and status["refit"]["trial"] == 1
    assert status["model"]["version"] == 3
    assert status["served"] == "digits-serving:3"
    assert status["bestMetrics"]["val_accuracy"] == 0.95
    assert {"Refitting", "RefitSucceeded"} <= {r for r, _ in events(ns, "search")}
    ns("delete", "tj", "search", "--wait=true")
    ns.wait_for("tj -l kubetrain.io/trial-of=search", lambda t: not t["items"], timeout=60)

"""Worker pods and their headless Service: what TensorFlow and the trainer need to find."""

from __future__ import annotations

import json

from kubetrain.operator import serving, tensorboard
from kubetrain.operator.manifests import (
    LABEL_JOB,
    LABEL_ROLE,
    SCRATCH_MOUNT,
    SCRATCH_VOLUME,
    WorkerOptions,
    headless_service,
    summarize_pod,
    worker_network_policy,
    worker_pod,
)
from kubetrain.trainer.api.entrypoints import CPUS_ENV
from kubetrain.trainer.api.spec import parse_job
from trainingjobs import body, job


def pods(b: dict, attempt: int = 0) -> list[dict]:
    j = job(b)
    return [worker_pod(b, j, i, attempt) for i in range(j.spec.workers.replicas)]


def env(pod: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"] if "value" in e}


def test_tf_config_names_every_worker_by_its_stable_dns_name_and_its_own_index():
    b = body(workers={"replicas": 3})
    service = headless_service(b)
    for i, pod in enumerate(pods(b)):
        config = json.loads(env(pod)["TF_CONFIG"])
        assert config["task"] == {"type": "worker", "index": i}
        assert config["cluster"]["worker"] == [
            f"mnist-worker-{n}.mnist-workers.ml.svc:2222" for n in range(3)
        ]
        # The DNS name exists because hostname.subdomain matches a headless Service.
        assert pod["metadata"]["name"] == pod["spec"]["hostname"] == f"mnist-worker-{i}"
        assert pod["spec"]["subdomain"] == service["metadata"]["name"]
        assert all(
            pod["metadata"]["labels"][k] == v for k, v in service["spec"]["selector"].items()
        )
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True


def test_the_worker_reads_back_the_same_job_from_its_environment():
    b = body()
    document = json.loads(env(pods(b)[0])["KUBETRAIN_JOB"])
    assert document["metadata"] == {"name": "mnist", "namespace": "ml"}
    assert parse_job(document).spec == job(b).spec


def test_a_worker_sizes_its_threads_to_its_cpu_limit_not_to_the_nodes_cores():
    worker = pods(body(workers={"resources": {"limits": {"cpu": "1500m"}}}))[0]
    container = worker["spec"]["containers"][0]
    cores = next(e for e in container["env"] if e["name"] == CPUS_ENV)
    # Kubernetes hands the limit over rounded up to whole cores (2 here).
    assert cores["valueFrom"]["resourceFieldRef"] == {
        "containerName": container["name"],
        "resource": "limits.cpu",
        "divisor": "1",
    }


def test_pods_are_owned_by_the_job_and_restarted_only_by_the_operator():
    for pod in pods(body(), attempt=2):
        owner = pod["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["name"], owner["uid"]) == ("TrainingJob", "mnist", "uid-1234")
        assert owner["controller"] is True
        assert pod["spec"]["restartPolicy"] == "Never"
        assert pod["spec"]["automountServiceAccountToken"] is False
        assert pod["metadata"]["labels"]["kubetrain.io/attempt"] == "2"
        assert env(pod)["KUBETRAIN_ATTEMPT"] == "2"


def test_the_pod_template_follows_the_spec():
    b = body(
        workers={
            "image": "registry.example/trainer:1",
            "imagePullPolicy": "Always",
            "resources": {"requests": {"cpu": "1"}, "limits": {"memory": "2Gi"}},
            "nodeSelector": {"pool": "cpu"},
            "tolerations": [{"key": "train", "operator": "Exists"}],
        },
        storage={"claimName": "models", "mountPath": "/ckpt", "dataClaimName": "datasets"},
    )
    pod = pods(b)[0]
    container = pod["spec"]["containers"][0]
    assert container["image"] == "registry.example/trainer:1"
    assert container["imagePullPolicy"] == "Always"
    assert container["resources"] == {"requests": {"cpu": "1"}, "limits": {"memory": "2Gi"}}
    assert pod["spec"]["nodeSelector"] == {"pool": "cpu"}
    assert pod["spec"]["tolerations"] == [{"key": "train", "operator": "Exists"}]
    assert container["command"] == [
        "kubetrain",
        "worker",
        "--workdir",
        "/ckpt/jobs/mnist",
        "--model-root",
        "/ckpt/models",
    ]
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["storage"]["persistentVolumeClaim"] == {"claimName": "models"}
    assert volumes["data"]["persistentVolumeClaim"] == {"claimName": "datasets", "readOnly": True}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["storage"]["mountPath"] == "/ckpt"
    assert mounts["data"] == {"name": "data", "mountPath": "/data", "readOnly": True}


def test_without_a_claim_checkpoints_live_in_an_empty_dir():
    b = body(storage={"claimName": None}, promotion={"enabled": False})
    b["spec"]["storage"] = {}
    volumes = pods(b)[0]["spec"]["volumes"]
    assert volumes == [{"name": "storage", "emptyDir": {}}, SCRATCH_VOLUME]


def test_another_worker_entrypoint_keeps_the_arguments():
    b = body()
    pod = worker_pod(b, job(b), 0, 0, WorkerOptions(["python3", "/app/fake.py"]))
    assert pod["spec"]["containers"][0]["command"][:3] == ["python3", "/app/fake.py", "--workdir"]


def test_summarize_pod_names_the_job_that_owns_the_pod():
    b = body()
    created = worker_pod(b, job(b), 0, 0, WorkerOptions())
    assert summarize_pod(created)["owner"] == b["metadata"]["uid"]


def test_summarize_pod_reads_the_workers_exit_and_message():
    raw = {
        "metadata": {
            "name": "mnist-worker-1",
            "labels": {"kubetrain.io/worker-index": "1", "kubetrain.io/attempt": "2"},
        },
        "spec": {"nodeName": "node-b"},
        "status": {
            "phase": "Failed",
            "conditions": [{"type": "Ready", "status": "False"}],
            "containerStatuses": [
                {
                    "name": "worker",
                    "state": {
                        "terminated": {
                            "exitCode": 137,
                            "reason": "OOMKilled",
                            "message": "killed\n",
                        }
                    },
                }
            ],
        },
    }
    assert summarize_pod(raw) == {
        "name": "mnist-worker-1",
        "owner": None,
        "index": 1,
        "attempt": 2,
        "phase": "Failed",
        "exitCode": 137,
        "message": "killed",
        "reason": "OOMKilled",
        "created": None,
        "deletionTimestamp": None,
        "node": "node-b",
        "ready": False,
    }
    evicted = {
        "metadata": {"name": "x", "labels": {"kubetrain.io/worker-index": "0"}},
        "status": {
            "phase": "Failed",
            "reason": "Evicted",
            "message": "The node was low on resource: memory.",
        },
    }
    summary = summarize_pod(evicted)
    assert (summary["exitCode"], summary["reason"]) == (None, "Evicted")
    assert summary["message"] == "The node was low on resource: memory."


def test_every_pod_the_operator_creates_meets_pod_security_restricted():
    """The rules of the `restricted` Pod Security Standard that a pod spec must state;
    the end-to-end story runs in a namespace where the API server enforces them."""
    spec = job(body(promotion={"deployment": "mnist-serving"})).spec
    server = serving.deployment(spec, "ml", 1, {})["spec"]["template"]["spec"]
    check = serving.model_check_pod(body(), spec, 1)["spec"]
    board = tensorboard.deployment(body(), job(body()))["spec"]["template"]["spec"]
    for pod in [pods(body())[0]["spec"], server, check, board]:
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert {next(iter(set(v) - {"name"})) for v in pod["volumes"]} <= {
            "persistentVolumeClaim",
            "emptyDir",
        }
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"] == {"drop": ["ALL"]}
            # Read-only root: /tmp is the scratch volume.
            assert context["readOnlyRootFilesystem"] is True
            assert SCRATCH_MOUNT in container["volumeMounts"]


def test_only_the_jobs_own_workers_may_reach_its_workers_tensorflow_port():
    b = body(workers={"replicas": 3})
    policy = worker_network_policy(b)
    workers = {"matchLabels": {LABEL_JOB: "mnist", LABEL_ROLE: "worker"}}
    # It selects every worker pod of the job, and only those.
    for pod in pods(b):
        labels = pod["metadata"]["labels"]
        assert all(labels[k] == v for k, v in policy["spec"]["podSelector"]["matchLabels"].items())
    assert policy["spec"] == {
        "podSelector": workers,
        "policyTypes": ["Ingress"],
        "ingress": [
            {"from": [{"podSelector": workers}], "ports": [{"protocol": "TCP", "port": 2222}]}
        ],
    }
    # Garbage-collected with the job, like the pods it protects.
    assert policy["metadata"]["ownerReferences"][0]["uid"] == b["metadata"]["uid"]


def test_workers_spread_over_nodes_by_default_counting_only_their_own_attempt():
    b = body()
    (constraint,) = worker_pod(b, job(b), 1, 3)["spec"]["topologySpreadConstraints"]
    assert constraint["topologyKey"] == "kubernetes.io/hostname"
    assert constraint["maxSkew"] == 1
    assert constraint["whenUnsatisfiable"] == "ScheduleAnyway"
    assert constraint["labelSelector"]["matchLabels"] == {
        "kubetrain.io/job": "mnist",
        "kubetrain.io/role": "worker",
        "kubetrain.io/attempt": "3",
    }


def test_spreading_can_be_required_or_turned_off():
    required = body(workers={"spread": "Required"})
    (constraint,) = worker_pod(required, job(required), 0, 0)["spec"]["topologySpreadConstraints"]
    assert constraint["whenUnsatisfiable"] == "DoNotSchedule"
    packed = body(workers={"spread": "None"})
    assert "topologySpreadConstraints" not in worker_pod(packed, job(packed), 0, 0)["spec"]

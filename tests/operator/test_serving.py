"""The serving Deployment: how it rolls, what it runs, and the patch that changes its version."""

from __future__ import annotations

from kubetrain.operator import serving
from kubetrain.operator.manifests import worker_pod
from kubetrain.operator.serving import served_version, version_patch
from trainingjobs import body, job, serving_deployment, strategic_merge

SPEC = job(body()).spec
IN_S3 = {
    "claimName": None,
    "uri": "s3://models/kubetrain",
    "secretName": "s3-credentials",
    "s3": {"endpoint": "http://s3.storage:7070", "region": "eu-west-1"},
}


def test_the_deployment_rolls_without_losing_capacity_and_probes_readiness():
    dep = serving_deployment(3)
    strategy = dep["spec"]["strategy"]
    assert strategy == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": 8501}
    assert container["lifecycle"]["preStop"]["exec"]["command"][0] == "sleep"
    assert container["command"] == [
        "kubetrain",
        "serve",
        "--model-dir",
        "/var/lib/kubetrain/models/mnist",
        "--port",
        "8501",
    ]
    assert container["volumeMounts"][0]["readOnly"] is True
    assert dep["spec"]["progressDeadlineSeconds"] == 300
    assert served_version(dep) == 3
    assert dep["metadata"]["annotations"]["kubetrain.io/metric-value"] == "0.97"


def test_the_version_patch_changes_the_pod_template_only_in_the_version():
    v3, v4 = serving_deployment(3), serving_deployment(4)
    patched = strategic_merge(v3, version_patch(SPEC, 4, {"kubetrain.io/model-version": "4"}))
    assert patched["spec"]["template"] == v4["spec"]["template"]
    assert served_version(patched) == 4
    v3_env = v3["spec"]["template"]["spec"]["containers"][0]["env"]
    assert v3_env == [{"name": "MODEL_VERSION", "value": "3"}]


def test_a_slow_starting_server_is_not_killed_by_its_liveness_probe():
    # Loading TensorFlow and the model took over a minute on a busy 2-core node, while the
    # liveness probe (10 s delay, 3 x 10 s) restarted the server before it was up.
    container = serving_deployment(1)["spec"]["template"]["spec"]["containers"][0]
    startup = container["startupProbe"]
    assert startup["httpGet"] == container["livenessProbe"]["httpGet"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300
    assert "initialDelaySeconds" not in container["livenessProbe"]


# --- an object store instead of a claim -----------------------------------------------------


def test_with_an_object_store_the_server_loads_what_its_init_container_pulled():
    spec = job(body(storage=IN_S3)).spec
    pod = serving.deployment(spec, "ml", 5, {})["spec"]["template"]["spec"]
    (pull,), (server,) = pod["initContainers"], pod["containers"]
    assert pull["command"] == [
        "kubetrain",
        "pull",
        "--model-dir",
        "s3://models/kubetrain/models/mnist",
        "--into",
        "/models/mnist",
    ]
    assert server["command"][server["command"].index("--model-dir") + 1] == "/models/mnist"
    # Both pinned to the version; only the puller holds the store's settings and Secret.
    assert {"name": "MODEL_VERSION", "value": "5"} in pull["env"]
    assert {"name": "AWS_ENDPOINT_URL", "value": "http://s3.storage:7070"} in pull["env"]
    assert {"name": "AWS_REGION", "value": "eu-west-1"} in pull["env"]
    assert pull["envFrom"] == [{"secretRef": {"name": "s3-credentials"}}]
    assert server["env"][0] == {"name": "MODEL_VERSION", "value": "5"}
    # No claim anywhere: the version lives in an emptyDir the server only reads.
    assert not any("persistentVolumeClaim" in v for v in pod["volumes"])
    assert {"name": "models", "mountPath": "/models", "readOnly": True} in server["volumeMounts"]


def test_the_version_patch_repins_the_puller_and_the_server_together():
    spec = job(body(storage=IN_S3)).spec
    v3 = serving.deployment(spec, "ml", 3, {})
    v4 = serving.deployment(spec, "ml", 4, {})
    patched = strategic_merge(v3, version_patch(spec, 4, {}))
    assert patched["spec"]["template"] == v4["spec"]["template"]


def test_a_deployment_pulling_from_another_store_serves_another_model():
    spec = job(body(storage=IN_S3)).spec
    other = job(body(storage={**IN_S3, "uri": "s3://other-bucket/x"})).spec
    assert serving.other_model(spec, serving.deployment(spec, "ml", 1, {})) is None
    refusal = serving.other_model(spec, serving.deployment(other, "ml", 1, {}))
    assert "s3://other-bucket/x/models/mnist" in refusal
    assert "set spec.promotion.deployment" in refusal
    # A claim's Deployment and a store's never pass for one another.
    assert serving.other_model(spec, serving.deployment(SPEC, "ml", 1, {})) is not None


def test_with_an_object_store_the_model_check_asks_the_store_itself():
    b = body(storage=IN_S3)
    pod = serving.model_check_pod(b, job(b).spec, 7)
    (checker,) = pod["spec"]["containers"]
    command = checker["command"]
    assert command[command.index("--model-dir") + 1] == "s3://models/kubetrain/models/mnist"
    assert checker["command"][-1] == "--check-only"
    assert checker["envFrom"] == [{"secretRef": {"name": "s3-credentials"}}]
    assert "initContainers" not in pod["spec"]


def test_workers_reach_the_store_without_a_volume():
    b = body(storage=IN_S3)
    pod = worker_pod(b, job(b), 0, 0)
    (worker,) = pod["spec"]["containers"]
    command = worker["command"]
    assert command[command.index("--workdir") + 1] == "s3://models/kubetrain/jobs/mnist"
    assert command[command.index("--model-root") + 1] == "s3://models/kubetrain/models"
    assert [v["name"] for v in pod["spec"]["volumes"]] == ["tmp"]
    assert worker["envFrom"] == [{"secretRef": {"name": "s3-credentials"}}]
    assert {"name": "AWS_ENDPOINT_URL", "value": "http://s3.storage:7070"} in worker["env"]

"""The serving Deployment: how it rolls, what it runs, and the patch that changes its version."""

from __future__ import annotations

from kubetrain.operator.serving import served_version, version_patch
from trainingjobs import serving_deployment, strategic_merge


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
    patched = strategic_merge(v3, version_patch(4, {"kubetrain.io/model-version": "4"}))
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

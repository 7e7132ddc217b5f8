"""The Helm chart: lints, renders valid Kubernetes objects, refuses bad values, least privilege.

No cluster: helm renders offline, kubeconform checks against schemas made locally from the
Kubernetes OpenAPI documents and the chart's CRD (see hack/tools).
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from charttools import CHART, REPO, Tools
from kubetrain.operator import metrics
from kubetrain.operator.settings import Settings
from kubetrain.trainer.api.spec import LOCAL_TRAINER_IMAGE, OBJECT_STORE_URI

RELEASE, NAMESPACE = "kubetrain", "kubetrain"

# name -> `--set` arguments; each must lint and render into valid objects.
VALUE_SETS: dict[str, list[str]] = {
    "defaults": [],
    "all-namespaces": ["watch.allNamespaces=true", "storage.storageClassName=fast"],
    "namespace-list": ["watch.allNamespaces=false", "watch.namespaces={team-a,team-b}"],
    "own-namespace": ["watch.allNamespaces=false"],
    "bring-your-own": [
        "rbac.create=false",
        "serviceAccount.create=false",
        "serviceAccount.name=trainer-operator",
        "storage.create=false",
        "image.repository=registry.example.com:5000/ml/kubetrain-operator",
        "image.tag=0.1.0",
        "logFormat=json",
        "workerCommand={python,-m,kubetrain.trainer,worker}",
    ],
}


def set_args(values: list[str]) -> list[str]:
    return [arg for value in values for arg in ("--set", value)]


def render(tools: Tools, values: list[str], *extra: str) -> str:
    done = tools.helm_run(
        "template", RELEASE, CHART, "--namespace", NAMESPACE, *set_args(values), *extra
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def objects(tools: Tools, values: list[str]) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(render(tools, values)) if doc]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def operator_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = by_kind(docs, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


# --- lint and schema conformance -------------------------------------------------------------


@pytest.mark.parametrize("name", VALUE_SETS)
def test_chart_lints_strictly(tools: Tools, name: str) -> None:
    done = tools.helm_run(
        "lint", "--strict", CHART, "--namespace", NAMESPACE, *set_args(VALUE_SETS[name])
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 chart(s) failed" in done.stdout


@pytest.mark.parametrize("name", VALUE_SETS)
def test_rendered_objects_conform_to_the_kubernetes_schemas(tools: Tools, name: str) -> None:
    manifests = render(tools, VALUE_SETS[name], "--include-crds")
    done = tools.conform(manifests)
    summary = done.stdout.strip().splitlines()[-1]
    assert done.returncode == 0, done.stdout + done.stderr
    count = len([doc for doc in yaml.safe_load_all(manifests) if doc])
    assert f"{count} resources found" in summary
    assert f"Valid: {count}, Invalid: 0, Errors: 0, Skipped: 0" in summary


def test_kubeconform_refuses_a_misspelt_field(tools: Tools) -> None:
    """The conformance check is strict: an unknown field fails, naming the field."""
    manifests = render(tools, []).replace("readOnlyRootFilesystem:", "readOnlyRootFileSystem:")
    done = tools.conform(manifests)
    assert done.returncode == 1
    assert "readOnlyRootFileSystem" in done.stdout


def test_the_examples_conform_to_the_trainingjob_schema(tools: Tools) -> None:
    for example in sorted((REPO / "examples").glob("*.yaml")):
        done = tools.conform(example.read_text())
        assert done.returncode == 0, f"{example.name}: {done.stdout}"
    broken = (REPO / "examples" / "mnist.yaml").read_text().replace("epochs:", "epoch:")
    done = tools.conform(broken)
    assert done.returncode == 1 and "'epoch' not allowed" in done.stdout


# --- values.schema.json ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("watch.allNamespace=false", "at '/watch': additional properties 'allNamespace'"),
        ("watch.namespaces={Team_A}", "at '/watch/namespaces/0'"),
        ("image.pullPolicy=Sometimes", "at '/image/pullPolicy': value must be one of"),
        ("image.repository=", "at '/image/repository'"),
        ("storage.size=lots", "at '/storage/size'"),
        ("storage.accessModes={ReadWriteSometimes}", "at '/storage/accessModes/0'"),
        ("threads=0", "at '/threads': minimum"),
        ("replicas=0", "at '/replicas': minimum"),
        ("logFormat=xml", "at '/logFormat'"),
        ("podSecurityContext.runAsNonRoot=false", "at '/podSecurityContext/runAsNonRoot'"),
        ("workerCommand=kubetrain worker", "at '/workerCommand'"),
        ("jobDefaults.image=", "at '/jobDefaults/image'"),
        ("jobDefaults.storage.uri=/var/lib/models", "at '/jobDefaults/storage/uri'"),
        ("jobDefaults.storage.bucket=models", "at '/jobDefaults/storage'"),
        ("jobDefaults.storage.s3.endpoint=minio:9000", "at '/jobDefaults/storage/s3/endpoint'"),
        ("metrics.port=80", "at '/metrics/port': minimum"),
        ("serviceMonitor.interval=soon", "at '/serviceMonitor/interval'"),
        ("serviceMonitor.enable=true", "at '/serviceMonitor': additional properties 'enable'"),
    ],
)
def test_bad_values_fail_with_a_message_naming_the_field(
    tools: Tools, value: str, message: str
) -> None:
    done = tools.helm_run("template", RELEASE, CHART, "--set", value)
    assert done.returncode != 0
    assert "values don't meet the specifications of the schema" in done.stderr
    assert message in done.stderr


def test_a_namespace_list_while_watching_all_namespaces_is_refused(tools: Tools) -> None:
    done = tools.helm_run("template", RELEASE, CHART, "--set", "watch.namespaces={team-a}")
    assert done.returncode != 0
    assert "watch.namespaces lists namespaces but watch.allNamespaces is true" in done.stderr


def test_install_refuses_bad_values_too(tools: Tools) -> None:
    done = tools.helm_run("install", RELEASE, CHART, "--dry-run=client", "--set", "threads=-1")
    assert done.returncode != 0
    assert "at '/threads'" in done.stderr


# --- RBAC ------------------------------------------------------------------------------------


def rules_of(docs: list[dict[str, Any]], kind: str) -> dict[str, list[dict[str, Any]]]:
    return {
        f"{d['metadata'].get('namespace', '')}/{d['metadata']['name']}": d["rules"]
        for d in by_kind(docs, kind)
    }


def grants(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


# Every (group, resource, verb) the operator's code and kopf use in a watched namespace.
OPERATOR_GRANTS = {
    *{
        ("kubetrain.io", "trainingjobs", v)
        for v in ("get", "list", "watch", "create", "patch", "delete")
    },
    ("kubetrain.io", "trainingjobs/status", "patch"),
    ("kubetrain.io", "trainingjobs/finalizers", "update"),
    *{("", "pods", v) for v in ("get", "list", "watch", "create", "delete")},
    ("", "pods/log", "get"),
    *{("", "services", v) for v in ("create", "delete")},
    *{("apps", "deployments", v) for v in ("get", "create", "patch", "delete")},
    *{("networking.k8s.io", "networkpolicies", v) for v in ("create", "delete")},
    *{("policy", "poddisruptionbudgets", v) for v in ("create", "delete")},
    *{("autoscaling", "horizontalpodautoscalers", v) for v in ("create", "delete")},
    ("", "persistentvolumeclaims", "get"),
    ("", "events", "create"),
}
DISCOVERY_GRANTS = {
    *{("apiextensions.k8s.io", "customresourcedefinitions", v) for v in ("list", "watch")},
    ("", "nodes", "get"),  # is a lost worker's node Ready?
}
LEADER_ELECTION_GRANTS = {("coordination.k8s.io", "leases", v) for v in ("get", "create", "update")}


@pytest.mark.parametrize("name", VALUE_SETS)
def test_rbac_names_every_verb_and_resource(tools: Tools, name: str) -> None:
    docs = objects(tools, VALUE_SETS[name])
    for kind in ("Role", "ClusterRole"):
        for role, rules in rules_of(docs, kind).items():
            for group, resource, verb in grants(rules):
                assert "*" not in (group, resource, verb), f"{kind} {role} grants a wildcard"
            assert all(set(rule) == {"apiGroups", "resources", "verbs"} for rule in rules), (
                f"{kind} {role}: no resourceNames or nonResourceURLs expected"
            )


def test_watching_all_namespaces_grants_the_operator_rules_cluster_wide(tools: Tools) -> None:
    docs = objects(tools, [])
    assert set(rules_of(docs, "Role")) == {f"{NAMESPACE}/kubetrain-leader-election"}
    cluster = rules_of(docs, "ClusterRole")
    assert grants(cluster["/kubetrain-operator"]) == OPERATOR_GRANTS
    assert grants(cluster["/kubetrain-discovery"]) == DISCOVERY_GRANTS
    bindings = {b["roleRef"]["name"]: b["subjects"] for b in by_kind(docs, "ClusterRoleBinding")}
    expected = [{"kind": "ServiceAccount", "name": "kubetrain", "namespace": NAMESPACE}]
    assert bindings == {"kubetrain-operator": expected, "kubetrain-discovery": expected}


def test_watching_a_namespace_list_grants_roles_in_those_namespaces_only(tools: Tools) -> None:
    docs = objects(tools, VALUE_SETS["namespace-list"])
    roles = rules_of(docs, "Role")
    election = roles.pop(f"{NAMESPACE}/kubetrain-leader-election")
    assert grants(election) == LEADER_ELECTION_GRANTS
    assert set(roles) == {"team-a/kubetrain-operator", "team-b/kubetrain-operator"}
    assert all(grants(rules) == OPERATOR_GRANTS for rules in roles.values())
    # Cluster-wide only what kopf must read to find its CRD and the namespaces.
    (discovery,) = rules_of(docs, "ClusterRole").values()
    assert grants(discovery) == DISCOVERY_GRANTS | {
        ("", "namespaces", "list"),
        ("", "namespaces", "watch"),
    }
    bindings = {
        (b["metadata"]["namespace"], b["roleRef"]["kind"], b["roleRef"]["name"])
        for b in by_kind(docs, "RoleBinding")
    }
    assert bindings == {
        ("team-a", "Role", "kubetrain-operator"),
        ("team-b", "Role", "kubetrain-operator"),
        (NAMESPACE, "Role", "kubetrain-leader-election"),
    }
    for binding in by_kind(docs, "RoleBinding"):
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "kubetrain", "namespace": NAMESPACE}
        ]


def test_no_rbac_objects_when_the_user_brings_their_own(tools: Tools) -> None:
    docs = objects(tools, VALUE_SETS["bring-your-own"])
    kinds = {doc["kind"] for doc in docs}
    assert kinds == {"Deployment", "Service"}  # the Service: the operator's metrics
    deployment = by_kind(docs, "Deployment")[0]
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "trainer-operator"


# --- the operator Deployment -----------------------------------------------------------------


def test_the_leader_election_role_grants_only_the_lease(tools: Tools) -> None:
    docs = objects(tools, [])
    roles = rules_of(docs, "Role")
    assert grants(roles[f"{NAMESPACE}/kubetrain-leader-election"]) == LEADER_ELECTION_GRANTS
    (binding,) = by_kind(docs, "RoleBinding")
    assert binding["metadata"]["namespace"] == NAMESPACE
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "kubetrain", "namespace": NAMESPACE}
    ]


def test_replicas_elect_a_leader_in_the_releases_namespace(tools: Tools) -> None:
    docs = objects(tools, ["replicas=2"])
    (deployment,) = by_kind(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    # A new pod starts as a standby before the old one stops and hands the Lease over.
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    env = {e["name"]: e for e in operator_container(docs)["env"]}
    assert env["KUBETRAIN_LEADER_ELECTION"]["value"] == "true"
    assert env["KUBETRAIN_LEASE_NAMESPACE"]["valueFrom"] == {
        "fieldRef": {"fieldPath": "metadata.namespace"}
    }


def test_operator_runs_non_root_on_a_read_only_root(tools: Tools) -> None:
    docs = objects(tools, [])
    (deployment,) = by_kind(docs, "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    container = operator_container(docs)
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert container["image"] == "localhost/kubetrain-operator:dev"
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    # The one writable path is a size-limited emptyDir.
    assert container["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert pod["volumes"] == [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}]


def test_probes_ask_kopfs_health_endpoint(tools: Tools) -> None:
    container = operator_container(objects(tools, ["probePort=9090"]))
    assert "--liveness=http://0.0.0.0:9090/healthz" in container["command"]
    assert {"name": "probes", "containerPort": 9090, "protocol": "TCP"} in container["ports"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "probes"}


# --- metrics ---------------------------------------------------------------------------------


def test_every_operator_pod_serves_metrics_behind_a_service(
    tools: Tools, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = objects(tools, [])
    container = operator_container(docs)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"probes": 8081, "metrics": 8080}
    env = {e["name"]: e.get("value") for e in container["env"]}
    monkeypatch.setenv("KUBETRAIN_METRICS_PORT", env["KUBETRAIN_METRICS_PORT"])
    assert Settings().metrics_port == ports["metrics"]  # where the operator listens
    (service,) = by_kind(docs, "Service")
    assert service["metadata"]["name"] == "kubetrain-metrics"
    assert service["metadata"]["namespace"] == NAMESPACE
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 8080, "targetPort": "metrics", "protocol": "TCP"}
    ]
    (deployment,) = by_kind(docs, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()  # every replica


def test_metrics_turned_off_leave_no_port_no_service_and_no_server(
    tools: Tools, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = objects(tools, ["metrics.enabled=false"])
    container = operator_container(docs)
    assert [p["name"] for p in container["ports"]] == ["probes"]
    assert by_kind(docs, "Service") == []
    env = {e["name"]: e.get("value") for e in container["env"]}
    monkeypatch.setenv("KUBETRAIN_METRICS_PORT", env["KUBETRAIN_METRICS_PORT"])
    assert Settings().metrics_port is None


def test_no_servicemonitor_unless_asked_for(tools: Tools) -> None:
    assert by_kind(objects(tools, []), "ServiceMonitor") == []


def test_the_servicemonitor_scrapes_the_metrics_service(tools: Tools) -> None:
    values = [
        "serviceMonitor.enabled=true",
        "serviceMonitor.interval=30s",
        "serviceMonitor.labels.release=kube-prometheus-stack",
    ]
    done = tools.helm_run("lint", "--strict", CHART, *set_args(values))
    assert done.returncode == 0, done.stdout + done.stderr
    docs = objects(tools, values)
    (monitor,) = by_kind(docs, "ServiceMonitor")
    (service,) = by_kind(docs, "Service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["namespace"] == NAMESPACE
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    spec = monitor["spec"]
    assert spec["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert spec["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert spec["endpoints"] == [{"port": "metrics", "path": metrics.PATH, "interval": "30s"}]
    assert service["spec"]["ports"][0]["name"] == "metrics"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            ["serviceMonitor.enabled=true", "metrics.enabled=false"],
            "serviceMonitor.enabled needs metrics.enabled",
        ),
        (["metrics.port=9090", "probePort=9090"], "metrics.port and probePort are both 9090"),
    ],
)
def test_metrics_values_that_cannot_work_are_refused(
    tools: Tools, values: list[str], message: str
) -> None:
    done = tools.helm_run("template", RELEASE, CHART, *set_args(values))
    assert done.returncode != 0
    assert message in done.stderr


@pytest.mark.parametrize(
    ("values", "scope"),
    [
        ([], ["--all-namespaces"]),
        (VALUE_SETS["namespace-list"], ["--namespace=team-a", "--namespace=team-b"]),
        (VALUE_SETS["own-namespace"], [f"--namespace={NAMESPACE}"]),
    ],
)
def test_operator_watches_the_namespaces_it_is_granted(
    tools: Tools, values: list[str], scope: list[str]
) -> None:
    command = operator_container(objects(tools, values))["command"]
    assert command[:4] == ["kopf", "run", "--standalone", "--module=kubetrain.operator.handlers"]
    assert [arg for arg in command if arg.startswith(("--namespace", "--all-namespaces"))] == scope


def test_operator_settings_reach_the_environment(tools: Tools) -> None:
    container = operator_container(
        objects(
            tools,
            VALUE_SETS["bring-your-own"]
            + ["reconcileInterval=5", "progressInterval=30", "threads=4"],
        )
    )
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["KUBETRAIN_RECONCILE_INTERVAL"] == "5"
    assert env["KUBETRAIN_PROGRESS_INTERVAL"] == "30"
    assert env["KUBETRAIN_THREADS"] == "4"
    assert env["KUBETRAIN_WORKER_COMMAND"] == '["python","-m","kubetrain.trainer","worker"]'
    assert "KUBETRAIN_SERVING_COMMAND" not in env
    assert container["image"] == "registry.example.com:5000/ml/kubetrain-operator:0.1.0"
    assert "--log-format=json" in container["command"]


# --- storage ---------------------------------------------------------------------------------


def test_models_claim_uses_the_default_storage_class_unless_one_is_named(tools: Tools) -> None:
    (claim,) = by_kind(objects(tools, []), "PersistentVolumeClaim")
    assert claim["metadata"]["name"] == "kubetrain-models"
    assert claim["metadata"]["namespace"] == NAMESPACE
    # An empty storageClassName would mean "no class"; absent means the cluster's default.
    assert "storageClassName" not in claim["spec"]
    assert claim["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    (named,) = by_kind(objects(tools, VALUE_SETS["all-namespaces"]), "PersistentVolumeClaim")
    assert named["spec"]["storageClassName"] == "fast"


def test_models_claim_is_made_where_the_jobs_run(tools: Tools) -> None:
    claims = by_kind(objects(tools, VALUE_SETS["namespace-list"]), "PersistentVolumeClaim")
    assert sorted(c["metadata"]["namespace"] for c in claims) == ["team-a", "team-b"]
    claims = by_kind(objects(tools, ["storage.namespaces={ml}"]), "PersistentVolumeClaim")
    assert [c["metadata"]["namespace"] for c in claims] == ["ml"]


def operator_environment(tools: Tools, values: list[str]) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in operator_container(objects(tools, values))["env"]}


def test_jobs_that_name_no_image_or_storage_get_the_local_image_and_the_charts_claim(
    tools: Tools, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = operator_environment(tools, [])
    for name in ("KUBETRAIN_DEFAULT_IMAGE", "KUBETRAIN_DEFAULT_STORAGE"):
        monkeypatch.setenv(name, env[name])
    defaults = Settings().job_defaults  # what the operator makes of the rendered values
    assert defaults.image == LOCAL_TRAINER_IMAGE
    assert defaults.storage is not None and defaults.storage.claim_name == "kubetrain-models"


def test_a_clusters_registry_and_object_store_are_set_once_in_the_values(
    tools: Tools, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = operator_environment(
        tools,
        [
            "storage.create=false",
            "jobDefaults.image=registry.example.com/ml/kubetrain-trainer:0.1.0",
            "jobDefaults.storage.uri=s3://models/kubetrain",
            "jobDefaults.storage.secretName=s3-credentials",
            "jobDefaults.storage.s3.endpoint=http://minio.storage:9000",
        ],
    )
    for name in ("KUBETRAIN_DEFAULT_IMAGE", "KUBETRAIN_DEFAULT_STORAGE"):
        monkeypatch.setenv(name, env[name])
    defaults = Settings().job_defaults
    assert defaults.image == "registry.example.com/ml/kubetrain-trainer:0.1.0"
    assert defaults.storage is not None
    assert defaults.storage.uri == "s3://models/kubetrain"
    assert defaults.storage.secret_name == "s3-credentials"
    assert defaults.storage.s3.endpoint == "http://minio.storage:9000"


def test_without_the_charts_claim_jobs_get_no_default_storage(tools: Tools) -> None:
    env = operator_environment(tools, ["storage.create=false"])
    assert env["KUBETRAIN_DEFAULT_STORAGE"] == "{}"


def test_a_default_storage_with_both_a_claim_and_a_store_is_refused(tools: Tools) -> None:
    done = tools.helm_run(
        "template",
        RELEASE,
        CHART,
        *set_args(["jobDefaults.storage.claimName=models", "jobDefaults.storage.uri=s3://b/p"]),
    )
    assert done.returncode != 0
    assert "at '/jobDefaults/storage'" in done.stderr


def test_the_values_schema_takes_the_object_store_uris_the_crd_takes() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    storage = schema["properties"]["jobDefaults"]["properties"]["storage"]
    assert storage["properties"]["uri"]["pattern"] == OBJECT_STORE_URI


def test_the_example_jobs_name_the_charts_claim(tools: Tools) -> None:
    (claim,) = by_kind(objects(tools, []), "PersistentVolumeClaim")
    example = yaml.safe_load((REPO / "examples" / "mnist.yaml").read_text())
    assert example["spec"]["storage"]["claimName"] == claim["metadata"]["name"]


# --- CRD and NOTES ---------------------------------------------------------------------------


def test_the_chart_ships_the_repositorys_crd(tools: Tools, tmp_path: Path) -> None:
    """One source: the chart's crds/ links to crds/, and the packaged chart holds its bytes."""
    repo_crd = REPO / "crds" / "trainingjobs.kubetrain.io.yaml"
    chart_crds = sorted((CHART / "crds").iterdir())
    assert [p.name for p in chart_crds] == [repo_crd.name]
    assert chart_crds[0].read_bytes() == repo_crd.read_bytes()

    done = tools.helm_run("package", CHART, "--destination", tmp_path)
    assert done.returncode == 0, done.stderr
    (package,) = tmp_path.glob("kubetrain-*.tgz")
    with tarfile.open(package) as tar:
        member = tar.extractfile(f"kubetrain/crds/{repo_crd.name}")
        assert member is not None and member.read() == repo_crd.read_bytes()


def test_notes_tell_the_next_commands(tools: Tools) -> None:
    done = tools.helm_run(
        "install",
        RELEASE,
        CHART,
        "--namespace",
        NAMESPACE,
        "--dry-run=client",
        *set_args(VALUE_SETS["namespace-list"]),
    )
    assert done.returncode == 0, done.stderr
    notes = done.stdout.split("NOTES:", 1)[1]
    assert "kubectl -n kubetrain rollout status deployment/kubetrain" in notes
    assert "kubectl -n team-a apply -f examples/mnist.yaml" in notes
    assert "kubectl -n team-a get trainingjobs -w" in notes
    assert "team-a, team-b" in notes

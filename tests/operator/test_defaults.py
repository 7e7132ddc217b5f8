"""The cluster's defaults (the chart's jobDefaults): what a job gets for what it leaves out."""

from __future__ import annotations

import pytest
from kubetrain.operator.defaults import JobDefaults
from kubetrain.operator.manifests import WorkerOptions, worker_pod
from kubetrain.operator.settings import Settings
from kubetrain.trainer.api.spec import LOCAL_TRAINER_IMAGE, SpecError, parse_storage
from trainingjobs import body, job

OBJECT_STORE = parse_storage(
    {"uri": "s3://models/team-a", "secretName": "s3-credentials", "s3": {"region": "eu-west-1"}}
)


def unstored(**overrides):
    """A job body that names no storage at all."""
    b = body(**overrides)
    del b["spec"]["storage"]
    return b


def test_a_job_without_an_image_runs_the_clusters_trainer_image():
    defaults = JobDefaults(image="registry.example/kubetrain-trainer:0.3")
    resolved = job(body(), defaults)
    assert resolved.spec.workers.image == "registry.example/kubetrain-trainer:0.3"
    pod = worker_pod(body(), resolved, 0, 0, WorkerOptions(["kubetrain", "worker"]))
    assert pod["spec"]["containers"][0]["image"] == "registry.example/kubetrain-trainer:0.3"


def test_an_image_the_job_names_wins():
    b = body(workers={"image": "registry.example/mine:1"})
    assert job(b, JobDefaults(image="registry.example/other:2")).spec.workers.image == (
        "registry.example/mine:1"
    )


def test_without_chart_values_the_image_is_the_local_clusters():
    assert job(body()).spec.workers.image == LOCAL_TRAINER_IMAGE


def test_a_job_naming_no_storage_gets_the_default_store_and_keeps_what_it_set():
    b = unstored()
    b["spec"]["storage"] = {"dataClaimName": "datasets"}
    storage = job(b, JobDefaults(storage=OBJECT_STORE)).spec.storage
    assert storage.uri == "s3://models/team-a"
    assert storage.secret_name == "s3-credentials"
    assert storage.s3.region == "eu-west-1"
    assert storage.data_claim_name == "datasets"
    assert storage.claim_name is None


def test_a_job_naming_its_own_claim_takes_nothing_from_the_default_store():
    storage = job(body(), JobDefaults(storage=OBJECT_STORE)).spec.storage
    assert storage.claim_name == "models"
    assert storage.uri is None
    assert storage.secret_name is None


def test_promotion_without_any_storage_says_which_fields_and_which_chart_value():
    with pytest.raises(SpecError) as err:
        job(unstored())
    message = str(err.value)
    assert "spec.storage.claimName or spec.storage.uri is required" in message
    assert "jobDefaults.storage" in message


def test_a_job_that_promotes_nothing_needs_no_storage():
    resolved = job(unstored(promotion={"enabled": False}))
    assert resolved.spec.storage.claim_name is None


def test_the_operator_reads_its_defaults_from_the_environment(monkeypatch):
    monkeypatch.setenv("KUBETRAIN_DEFAULT_IMAGE", "registry.example/trainer:9")
    monkeypatch.setenv("KUBETRAIN_DEFAULT_STORAGE", '{"claimName": "kubetrain-models"}')
    defaults = Settings().job_defaults
    assert defaults.image == "registry.example/trainer:9"
    assert defaults.storage is not None and defaults.storage.claim_name == "kubetrain-models"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("{not json", "KUBETRAIN_DEFAULT_STORAGE"),
        ('{"claimName": "Not_A_Name"}', "claimName"),
        ('{"bucket": "x"}', "bucket"),
        ('{"uri": "/var/lib/models"}', "must be s3://bucket/prefix"),
        ('{"uri": "s3://b/p", "claimName": "c"}', "not both"),
    ],
)
def test_a_bad_default_storage_stops_the_operator_naming_the_variable(monkeypatch, value, expected):
    monkeypatch.setenv("KUBETRAIN_DEFAULT_STORAGE", value)
    with pytest.raises(ValueError, match="KUBETRAIN_DEFAULT_STORAGE") as err:
        Settings()
    assert expected in str(err.value)

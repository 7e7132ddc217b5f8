from pathlib import Path

import pytest
import yaml
from kubetrain.trainer.api.spec import (
    SpecError,
    TrainingJobSpec,
    apply_override,
    load_job,
    parse_job,
)

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_is_a_valid_training_job(path: Path) -> None:
    job = load_job(path)
    assert job.kind == "TrainingJob"
    assert job.spec.workers.replicas >= 1


def test_defaults_fill_what_the_user_left_out(job_document: dict) -> None:
    job = parse_job(job_document)
    assert job.spec.training.metric == "val_accuracy"
    assert job.spec.run_policy.backoff_limit == 3
    assert job.spec.model_name == "mnist"
    assert job.spec.serving_deployment == "mnist-serving"


def test_set_overrides_any_field_by_dotted_camel_case_path(
    tmp_path: Path, job_document: dict
) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job_document))
    job = load_job(
        path,
        [
            "spec.training.epochs=1",
            "spec.workers.replicas=1",
            "spec.dataset.splitBy=scene",
            "spec.promotion.enabled=false",
        ],
    )
    assert job.spec.training.epochs == 1
    assert job.spec.workers.replicas == 1
    assert job.spec.dataset.split_by == "scene"
    assert job.spec.promotion.enabled is False


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("spec.training.epochs=0", "spec.training.epochs"),
        ("spec.workers.replicas=lots", "spec.workers.replicas"),
        ("spec.training.epoch=3", "spec.training.epoch"),
        ("spec.dataset.name=cifar", "spec.dataset.name"),
        ("spec.model.architecture=planesnet-seed", "planesnet"),
        # Names that become object names or parts of API URLs, checked as the API server would.
        ("spec.storage.claimName=../kube-system/secrets/x", "spec.storage.claimName"),
        ("spec.storage.dataClaimName=a/b", "spec.storage.dataClaimName"),
        ("spec.model.name=" + "m" * 56, "spec.model.name"),
        ("spec.promotion.deployment=9-serving", "spec.promotion.deployment"),
        ("spec.training.seed=4294967295", "spec.training.seed"),
    ],
)
def test_a_bad_value_is_refused_naming_the_field(
    job_document: dict, override: str, field: str
) -> None:
    apply_override(job_document, override)
    with pytest.raises(SpecError, match=field.replace(".", r"\.")):
        parse_job(job_document)


def test_a_model_name_must_make_a_valid_service_name(job_document: dict) -> None:
    job_document["spec"]["model"]["name"] = "007"
    with pytest.raises(SpecError, match=r"spec\.model\.name"):
        parse_job(job_document)
    job_document["spec"]["model"]["name"] = "m" * 55
    assert parse_job(job_document).spec.serving_deployment == "m" * 55 + "-serving"


def test_a_job_name_must_make_a_valid_service_name(job_document: dict) -> None:
    job_document["metadata"]["name"] = "1st-run"
    with pytest.raises(SpecError, match=r"metadata\.name"):
        parse_job(job_document)


def test_an_empty_claim_name_is_refused(job_document: dict) -> None:
    job_document["spec"]["storage"] = {"claimName": ""}
    with pytest.raises(SpecError, match=r"spec\.storage\.claimName"):
        parse_job(job_document)


def test_a_claim_name_may_be_a_dns_subdomain(job_document: dict) -> None:
    apply_override(job_document, "spec.storage.claimName=models.team-a")
    assert parse_job(job_document).spec.storage.claim_name == "models.team-a"


def test_a_set_without_a_value_is_refused(job_document: dict) -> None:
    with pytest.raises(SpecError, match="PATH=VALUE"):
        apply_override(job_document, "spec.training.epochs")


def test_a_missing_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="no such file"):
        load_job(tmp_path / "absent.yaml")


def test_a_directory_or_a_binary_file_as_the_job_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="is a directory"):
        load_job(tmp_path)
    binary = tmp_path / "model.h5"
    binary.write_bytes(b"\x89HDF\r\n\x1a\n\xff\xfe\x00")
    with pytest.raises(SpecError, match="not a text file"):
        load_job(binary)


def test_spec_round_trips_through_its_wire_form(job_document: dict) -> None:
    spec = parse_job(job_document).spec
    wire = spec.model_dump(by_alias=True)
    assert "batchSize" in wire["training"]
    assert TrainingJobSpec.model_validate(wire) == spec


def test_the_readme_field_reference_is_the_generated_one() -> None:
    from kubetrain.trainer.reference import table

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert table() in readme, "run: python -m kubetrain.trainer.reference, paste into README"

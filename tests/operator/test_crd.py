"""The CRD: generated from the one spec definition, committed, and structurally sound."""

from __future__ import annotations

from pathlib import Path

import yaml
from kubetrain.operator import crd
from kubetrain.trainer.api.spec import Promotion, Training, TrainingJobSpec

CRD_FILE = Path(__file__).resolve().parents[2] / "crds" / "trainingjobs.kubetrain.io.yaml"


def version() -> dict:
    return crd.crd()["spec"]["versions"][0]


def test_the_committed_crd_is_the_generated_one():
    assert CRD_FILE.read_text() == crd.render(), (
        "regenerate: python -m kubetrain.operator.crd > crds/trainingjobs.kubetrain.io.yaml"
    )


def walk(node: dict, path: str = ""):
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from walk(child, f"{path}.{name}")
    if "items" in node:
        yield from walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}{{}}")


def test_the_schema_is_structural():
    schema = version()["schema"]["openAPIV3Schema"]
    for path, node in walk(schema):
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), path
        assert not {"$ref", "anyOf", "allOf", "oneOf", "title", "const"} & node.keys(), path
        for strict in ("exclusiveMinimum", "exclusiveMaximum"):
            assert isinstance(node.get(strict, True), bool), path  # OpenAPI v3.0 style


def test_defaults_enums_and_bounds_come_from_the_pydantic_spec():
    spec = version()["schema"]["openAPIV3Schema"]["properties"]["spec"]
    training = spec["properties"]["training"]
    assert training["default"] == {}
    epochs = training["properties"]["epochs"]
    field = Training.model_fields["epochs"]
    assert epochs["default"] == field.default == 5
    assert (epochs["minimum"], epochs["maximum"]) == (1, 1000)
    assert spec["properties"]["model"]["properties"]["architecture"]["enum"] == [
        "mnist-dense",
        "mnist-cnn",
        "planesnet-seed",
        "planesnet-cnn",
    ]
    assert spec["required"] == [
        name for name, f in TrainingJobSpec.model_fields.items() if f.is_required()
    ]
    policy = spec["properties"]["runPolicy"]["properties"]["cleanPodPolicy"]
    assert (policy["enum"], policy["default"]) == (["All", "Running", "None"], "Running")
    fraction = spec["properties"]["dataset"]["properties"]["validationFraction"]
    assert (fraction["minimum"], fraction["exclusiveMinimum"]) == (0, True)


def test_an_optional_object_stays_absent_unless_the_job_asks_for_it():
    """A `{}` default would switch autoscaling on for every job (and is invalid besides:
    autoscaling requires maxReplicas), so the API server must leave it out."""
    spec = version()["schema"]["openAPIV3Schema"]["properties"]["spec"]
    promotion = spec["properties"]["promotion"]
    assert promotion["default"] == {}
    autoscaling = promotion["properties"]["autoscaling"]
    assert "default" not in autoscaling
    assert autoscaling["required"] == ["maxReplicas"]
    assert not any(key.startswith("x-absent") for key in autoscaling)


def test_a_default_a_function_makes_reaches_the_api_servers_defaulting():
    """`{}` would give serving pods no CPU request, and a CPU autoscaler nothing to divide by."""
    promotion = version()["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    resources = promotion["promotion"]["properties"]["resources"]
    made = Promotion.model_fields["resources"].default_factory()
    assert resources["default"] == made.model_dump()
    assert resources["default"]["requests"]["cpu"] == "100m"
    # A type's own defaults stay `{}`: the API server fills in their fields.
    assert promotion["training"]["default"] == {}


def test_every_printer_column_points_into_the_status_schema():
    status = version()["schema"]["openAPIV3Schema"]["properties"]["status"]
    for column in version()["additionalPrinterColumns"]:
        path = column["jsonPath"].lstrip(".").split(".")
        if path[0] == "metadata":
            continue
        node = {"properties": {"status": status}}
        for part in path:
            node = node.get("properties", {}).get(part) or node.get("additionalProperties")
            assert node, column
        expected = {"string": "string", "number": "number", "integer": "integer", "date": "string"}[
            column["type"]
        ]
        assert node["type"] == expected, column


def test_names_status_subresource_and_rules():
    v = version()
    assert crd.crd()["spec"]["names"]["shortNames"] == ["tj"]
    assert v["subresources"] == {"status": {}}
    rules = v["schema"]["openAPIV3Schema"]["properties"]["spec"]["x-kubernetes-validations"]
    assert "'mnist-dense'" in rules[0]["rule"] and "'planesnet-seed'" in rules[0]["rule"]
    assert all(r["message"] for r in rules)


def test_the_file_is_yaml_kubectl_can_read():
    assert yaml.safe_load(CRD_FILE.read_text())["kind"] == "CustomResourceDefinition"

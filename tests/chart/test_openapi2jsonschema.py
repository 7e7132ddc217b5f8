"""The converter that makes kubeconform's schemas from OpenAPI v3 documents and CRDs."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from charttools import CONVERTER

spec = importlib.util.spec_from_file_location("openapi2jsonschema", CONVERTER)
assert spec and spec.loader
convert = importlib.util.module_from_spec(spec)
spec.loader.exec_module(convert)


@pytest.mark.parametrize(
    ("group", "version", "kind", "name"),
    [
        ("", "v1", "Pod", "pod-v1.json"),
        ("apps", "v1", "Deployment", "deployment-apps-v1.json"),
        ("rbac.authorization.k8s.io", "v1", "ClusterRole", "clusterrole-rbac-v1.json"),
        ("kubetrain.io", "v1alpha1", "TrainingJob", "trainingjob-kubetrain-v1alpha1.json"),
    ],
)
def test_files_are_named_as_kubeconform_looks_them_up(
    group: str, version: str, kind: str, name: str
) -> None:
    assert convert.file_name(group, version, kind) == name


def test_objects_with_properties_refuse_unknown_fields() -> None:
    schema = convert.to_json_schema(
        {
            "type": "object",
            "properties": {
                "spec": {"type": "object", "properties": {"replicas": {"type": "integer"}}},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "raw": {
                    "type": "object",
                    "properties": {"a": {}},
                    "x-kubernetes-preserve-unknown-fields": True,
                },
            },
        }
    )
    assert schema["additionalProperties"] is False
    assert schema["properties"]["spec"]["additionalProperties"] is False
    assert schema["properties"]["labels"]["additionalProperties"] == {"type": "string"}
    assert "additionalProperties" not in schema["properties"]["raw"]


def test_kubernetes_extensions_become_json_schema() -> None:
    port = convert.to_json_schema({"x-kubernetes-int-or-string": True})
    assert port == {"anyOf": [{"type": "integer"}, {"type": "string"}]}
    assert convert.to_json_schema({"type": "string", "nullable": True}) == {
        "type": ["string", "null"]
    }
    # Values are data, not schemas: a default that is an object stays as it is.
    assert convert.to_json_schema({"default": {"properties": 1}}) == {"default": {"properties": 1}}


def test_a_crd_becomes_one_self_contained_schema_per_served_version(tmp_path: Path) -> None:
    crd = tmp_path / "crd.yaml"
    crd.write_text("""
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.example.io}
spec:
  group: example.io
  names: {kind: Widget, plural: widgets}
  scope: Namespaced
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec: {type: object, properties: {size: {type: integer, minimum: 1}}}
    - name: v0
      served: false
      storage: false
      schema: {openAPIV3Schema: {type: object}}
""")
    openapi = tmp_path / "openapi.json"
    openapi.write_text(
        json.dumps(
            {
                "components": {
                    "schemas": {
                        convert.OBJECT_META: {
                            "type": "object",
                            "properties": {"name": {"type": "string"}},
                        },
                    }
                }
            }
        )
    )
    assert (
        convert.main(["--out", str(tmp_path / "out"), "--openapi", str(openapi), "--crd", str(crd)])
        == 0
    )
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["widget-example-v1.json"]
    schema = json.loads((tmp_path / "out" / "widget-example-v1.json").read_text())
    assert schema["properties"]["kind"]["enum"] == ["Widget"]
    assert schema["properties"]["apiVersion"]["enum"] == ["example.io/v1"]
    assert schema["properties"]["metadata"] == {"$ref": f"#/definitions/{convert.OBJECT_META}"}
    assert schema["definitions"][convert.OBJECT_META]["additionalProperties"] is False
    assert schema["properties"]["spec"]["properties"]["size"] == {"type": "integer", "minimum": 1}

#!/usr/bin/env python3
"""Turn Kubernetes OpenAPI v3 documents and CRDs into kubeconform's local JSON schemas.

    openapi2jsonschema.py --out DIR [--openapi FILE ...] [--crd FILE ...]
    kubeconform -strict -schema-location 'DIR/{{ .ResourceKind }}{{ .KindSuffix }}.json' ...

kubeconform cannot download its schemas here, so they are made from what is on disk: the
API server's OpenAPI v3 documents (the `api/openapi-spec/v3/*.json` files of the
k8s.io/kubernetes Go module, or `kubectl get --raw /openapi/v3/...` from a cluster) and the
CRDs' `openAPIV3Schema`. One file per kind, named as kubeconform looks it up
(`deployment-apps-v1.json`, `trainingjob-kubetrain-v1alpha1.json`), each self-contained:
the definitions it reaches are copied into its own `definitions` (references are kept, so
recursive types such as a CRD's JSONSchemaProps stay finite).

Strict: an object that lists its properties gets `additionalProperties: false` unless it
preserves unknown fields, so a misspelt field fails instead of being ignored; `apiVersion`
and `kind` must be the kind's own.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any

REF_PREFIX = "#/components/schemas/"
OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
DATA_KEYWORDS = ("default", "enum", "example", "examples", "const")


def file_name(group: str, version: str, kind: str) -> str:
    """kubeconform's `{{ .ResourceKind }}{{ .KindSuffix }}.json` for group/version/kind."""
    suffix = f"-{group.split('.')[0]}-{version}" if group else f"-{version}"
    return f"{kind.lower()}{suffix.lower()}.json"


def to_json_schema(node: Any) -> Any:
    """OpenAPI v3 (Kubernetes dialect) to draft-4 JSON schema, strict about unknown fields."""
    if isinstance(node, list):
        return [to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "$ref" and isinstance(value, str):
            out[key] = "#/definitions/" + value.removeprefix(REF_PREFIX)
        elif key in ("properties", "patternProperties", "definitions"):
            # maps from names to schemas: recurse into the values, never treat names as keywords
            out[key] = {name: to_json_schema(schema) for name, schema in value.items()}
        elif key.startswith("x-") or key == "nullable":
            continue
        elif key in DATA_KEYWORDS:
            out[key] = copy.deepcopy(value)  # values, not schemas
        else:
            out[key] = to_json_schema(value)
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def references(node: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(REF_PREFIX):
            found.add(ref.removeprefix(REF_PREFIX))
        for value in node.values():
            found |= references(value)
    elif isinstance(node, list):
        for value in node:
            found |= references(value)
    return found


def reachable(root: Any, components: dict[str, Any]) -> dict[str, Any]:
    """Every component schema that `root` refers to, directly or not."""
    seen: dict[str, Any] = {}
    todo = sorted(references(root))
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        if name not in components:
            raise KeyError(f"unresolved reference {REF_PREFIX}{name}")
        seen[name] = components[name]
        todo.extend(references(components[name]) - seen.keys())
    return seen


def pin_type(schema: dict[str, Any], group: str, version: str, kind: str) -> dict[str, Any]:
    api_version = f"{group}/{version}" if group else version
    props = schema.setdefault("properties", {})
    props["apiVersion"] = {**props.get("apiVersion", {}), "type": "string", "enum": [api_version]}
    props["kind"] = {**props.get("kind", {}), "type": "string", "enum": [kind]}
    return schema


def document(
    root: dict[str, Any], components: dict[str, Any], group: str, version: str, kind: str
) -> dict[str, Any]:
    root = pin_type(copy.deepcopy(root), group, version, kind)
    result = {"$schema": "http://json-schema.org/draft-04/schema#", **to_json_schema(root)}
    definitions = reachable(root, components)
    if definitions:
        result["definitions"] = {
            name: to_json_schema(definitions[name]) for name in sorted(definitions)
        }
    return result


def from_openapi(paths: list[Path]) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """(file name -> schema, all component schemas) from OpenAPI v3 documents."""
    components: dict[str, Any] = {}
    for path in paths:
        components.update(json.loads(path.read_text())["components"]["schemas"])
    schemas: dict[str, dict[str, Any]] = {}
    for name in sorted(components):
        gvks = components[name].get("x-kubernetes-group-version-kind") or []
        if len(gvks) != 1:  # meta types (WatchEvent, DeleteOptions) claim every group
            continue
        gvk = gvks[0]
        target = file_name(gvk["group"], gvk["version"], gvk["kind"])
        schemas.setdefault(
            target,
            document(components[name], components, gvk["group"], gvk["version"], gvk["kind"]),
        )
    return schemas, components


def from_crd(path: Path, components: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """One schema per served version of each CRD in the file (metadata as ObjectMeta if known)."""
    import yaml  # only CRDs need it; the Kubernetes documents are JSON

    schemas: dict[str, dict[str, Any]] = {}
    for crd in yaml.safe_load_all(path.read_text()):
        if not crd or crd.get("kind") != "CustomResourceDefinition":
            continue
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if not version.get("served", True):
                continue
            root = copy.deepcopy(version["schema"]["openAPIV3Schema"])
            if OBJECT_META in components:
                root.setdefault("properties", {})["metadata"] = {"$ref": REF_PREFIX + OBJECT_META}
            name = file_name(group, version["name"], kind)
            schemas[name] = document(root, components, group, version["name"], kind)
    return schemas


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="directory for the schemas")
    parser.add_argument(
        "--openapi", type=Path, nargs="*", default=[], help="Kubernetes OpenAPI v3 documents (JSON)"
    )
    parser.add_argument(
        "--crd", type=Path, nargs="*", default=[], help="CustomResourceDefinition manifests (YAML)"
    )
    args = parser.parse_args(argv)

    schemas, components = from_openapi(args.openapi)
    for path in args.crd:
        schemas.update(from_crd(path, components))
    if not schemas:
        print("no kinds found in the given documents", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    for name, schema in sorted(schemas.items()):
        (args.out / name).write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
    print(f"{len(schemas)} schemas in {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

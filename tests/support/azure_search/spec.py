"""Validation against Microsoft's published OpenAPI (swagger 2.0) description of the 2024-07-01 API.

The schemas come from ``tests/support/azure_spec/`` (see its NOTICE). Swagger 2.0 schemas are JSON Schema
draft 4 plus extensions; two of those matter here: an ``enum`` marked ``x-ms-enum.modelAsString`` is an
open set (``answers`` takes ``extractive|count-3``), and a ``discriminator`` picks the subtype by its
value (``VectorQuery`` with ``kind: vector`` must also be a ``RawVectorQuery``).
"""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft4Validator

SPEC_DIR = Path(__file__).resolve().parents[1] / "azure_spec"
FILES = {"index": "searchindex.json", "service": "searchservice.json"}

# (method, route) -> (spec file, swagger path, method): the routes the emulator serves
OPERATIONS: dict[tuple[str, str], tuple[str, str, str]] = {
    ("POST", "indexes"): ("service", "/indexes", "post"),
    ("GET", "indexes"): ("service", "/indexes", "get"),
    ("PUT", "index"): ("service", "/indexes('{indexName}')", "put"),
    ("GET", "index"): ("service", "/indexes('{indexName}')", "get"),
    ("DELETE", "index"): ("service", "/indexes('{indexName}')", "delete"),
    ("POST", "search"): ("index", "/docs/search.post.search", "post"),
    ("POST", "batch"): ("index", "/docs/search.index", "post"),
    ("GET", "lookup"): ("index", "/docs('{key}')", "get"),
    ("GET", "count"): ("index", "/docs/$count", "get"),
}


def _open_enums(node: Any) -> Any:
    if isinstance(node, dict):
        out = {k: _open_enums(v) for k, v in node.items()}
        if (node.get("x-ms-enum") or {}).get("modelAsString") and "enum" in out:
            del out["enum"]
        return out
    if isinstance(node, list):
        return [_open_enums(v) for v in node]
    return node


@cache
def load(name: str) -> dict[str, Any]:
    return json.loads((SPEC_DIR / FILES[name]).read_text())


@cache
def _definitions(name: str) -> dict[str, Any]:
    return _open_enums(copy.deepcopy(load(name)["definitions"]))


def _subtypes(name: str) -> dict[str, dict[str, str]]:
    """discriminated base -> {discriminator value -> subtype definition}."""
    out: dict[str, dict[str, str]] = {}
    for sub, schema in load(name)["definitions"].items():
        value = schema.get("x-ms-discriminator-value")
        for part in schema.get("allOf", []):
            base = part.get("$ref", "").rsplit("/", 1)[-1]
            if value and base:
                out.setdefault(base, {})[value] = sub
    return out


def _without_nulls(value: Any) -> Any:
    """Swagger 2.0 tools read a null property as an absent one (the published examples send
    ``"minimumCoverage": null``); JSON Schema would not."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def errors(name: str, schema: dict[str, Any], instance: Any) -> list[str]:
    """Every violation of ``schema`` (which may ``$ref`` the file's definitions) by ``instance``."""
    instance = _without_nulls(instance)
    definitions = _definitions(name)
    validator = Draft4Validator({**_open_enums(schema), "definitions": definitions})
    found = [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(instance)]
    found += _discriminated(name, schema, instance, definitions)
    return found


def _discriminated(name: str, schema: dict[str, Any], instance: Any, definitions: dict[str, Any]) -> list[str]:
    """Validate values of discriminated types against the subtype their discriminator names."""
    found: list[str] = []
    subtypes = _subtypes(name)

    def walk(node: Any, value: Any, path: str) -> None:
        if not isinstance(node, dict):
            return
        ref = node.get("$ref", "")
        if ref.startswith("#/definitions/"):
            base = ref.rsplit("/", 1)[-1]
            definition = definitions[base]
            discriminator = definition.get("discriminator")
            if discriminator and isinstance(value, dict) and base in subtypes:
                sub = subtypes[base].get(value.get(discriminator))
                if sub is None:
                    found.append(f"{path}: unknown {discriminator} {value.get(discriminator)!r} for {base}")
                else:
                    validator = Draft4Validator({"$ref": f"#/definitions/{sub}", "definitions": definitions})
                    found.extend(f"{path}: {e.message}" for e in validator.iter_errors(value))
            node = definition
        if isinstance(value, dict):
            for key, sub_schema in (node.get("properties") or {}).items():
                if key in value:
                    walk(sub_schema, value[key], f"{path}/{key}")
        if isinstance(value, list) and isinstance(node.get("items"), dict):
            for i, item in enumerate(value):
                walk(node["items"], item, f"{path}/{i}")

    walk(schema, instance, "")
    return found


def operation(method: str, route: str) -> tuple[str, dict[str, Any]]:
    name, path, verb = OPERATIONS[(method, route)]
    return name, load(name)["paths"][path][verb]


def request_errors(method: str, route: str, body: Any) -> list[str]:
    name, op = operation(method, route)
    for parameter in op.get("parameters", []):
        if parameter.get("in") == "body":
            return errors(name, parameter["schema"], body)
    return []


def response_errors(method: str, route: str, status: int, body: Any) -> list[str]:
    """Violations of the response schema the spec gives for ``status`` (errors: the ``error`` object)."""
    name, op = operation(method, route)
    responses = op["responses"]
    entry = responses.get(str(status))
    if entry is None:
        if status < 400:
            return [f"status {status} is not a documented response of {op['operationId']}"]
        entry = responses.get("default", {})
        # The wire format wraps the spec's SearchError in an OData "error" member.
        if not isinstance(body, dict) or "error" not in body:
            return [f"error response without an 'error' member: {body!r}"[:300]]
        body = body["error"]
    schema = entry.get("schema")
    return errors(name, schema, body) if schema else []

"""MkDocs hook: the REST reference page (rest-reference.md), generated from the service's OpenAPI schema.

At every build it creates the FastAPI application (``api.app.create_app``) with a throw-away ``$KB_HOME``,
no model warm-up and no server, reads ``app.openapi()`` and adds one generated Markdown page to the
build: every path and method grouped by tag, with its summary, description, parameters, request body,
responses and the schemas they name (field, type, required, default, description). Nothing is written
into docs/. If the application cannot be imported or built, the build fails with the reason: the page is
never left empty or stale.
"""

from __future__ import annotations

import html
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

PAGE = "rest-reference.md"
METHODS = ("get", "put", "post", "patch", "delete", "head", "options")
ENV = {"HF_HUB_OFFLINE": "1", "KB_WARMUP": "off", "KB_AUTH": "on"}


def on_files(files: Files, config: MkDocsConfig) -> Files:
    schema = load_schema(Path(config.config_file_path).parent)
    if files.get_file_from_path(PAGE) is not None:
        raise PluginError(f"docs/{PAGE} is generated from the OpenAPI schema at build time; delete the file")
    files.append(File.generated(config, PAGE, content=render(schema)))
    return files


def load_schema(root: Path) -> dict[str, Any]:
    """The OpenAPI schema of ``create_app()``, built in a temporary $KB_HOME (nothing is opened or served)."""
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    saved = {name: os.environ.get(name) for name in (*ENV, "KB_HOME")}
    with tempfile.TemporaryDirectory(prefix="kb-docs-home-") as home:
        os.environ.update(ENV, KB_HOME=home)
        try:
            from api.app import create_app
            from api.config import ServiceSettings

            app = create_app(ServiceSettings(home=Path(home), warmup=False))
            schema = app.openapi()
        except Exception as exc:  # any failure must stop the build, never yield an empty reference
            raise PluginError(
                f"docs/hooks/openapi_reference.py: cannot build the REST reference, because creating the "
                f"service (api.app.create_app) or its OpenAPI schema failed: {type(exc).__name__}: {exc}") from exc
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
    if not schema.get("paths"):
        raise PluginError("docs/hooks/openapi_reference.py: the OpenAPI schema has no paths")
    return schema


def render(schema: dict[str, Any]) -> str:
    info = schema.get("info", {})
    components = schema.get("components", {}).get("schemas", {})
    groups: dict[str, list[tuple[str, str, dict[str, Any]]]] = {}
    for path, item in schema["paths"].items():
        for method in METHODS:
            if method in item:
                operation = item[method]
                groups.setdefault((operation.get("tags") or ["other"])[0], []).append((method, path, operation))
    count = sum(len(ops) for ops in groups.values())
    anchors = [op_anchor(m, p) for ops in groups.values() for m, p, _ in ops]
    anchors += [tag_anchor(t) for t in groups] + [schema_anchor(n) for n in components]
    if len(set(anchors)) != len(anchors):
        raise PluginError(f"docs/hooks/openapi_reference.py: two headings would share an anchor: {sorted(anchors)}")
    out = [
        "# REST reference",
        "",
        f"Generated at build time from the OpenAPI schema of the service ({info.get('title', 'kb')} "
        f"{info.get('version', '')}, OpenAPI {schema.get('openapi', '')}): {count} operations on "
        f"{len(schema['paths'])} paths. A running server serves the same schema at `/openapi.json` and an "
        "interactive version with examples at `/docs`. The [REST service guide](rest.md) explains the resources, "
        "limits and speed; [Auth](auth.md) the API keys and roles.",
        "",
        "Every route under `/v1` needs an API key (`Authorization: Bearer kb_<id>_<secret>`) unless the service "
        "runs with `KB_AUTH=off`. Besides the status codes listed with each operation, any route can answer "
        "with the JSON error body `{\"error\": {\"code\": ..., \"message\": ...}}`: 401 without a valid key, "
        "403 without the role, 404 for unknown ids, 409 for conflicts and a busy writer, 413 for a body over the "
        "limit, 422 for invalid input, 502/503 when an embedding endpoint or a store is down, 507 when the disk "
        "is full. Not in the schema: `GET /metrics` (see [Deployment](deployment.md#metrics-get-metrics)) and the "
        "web console's static files at `/` and `/console/*` (see [The web console](console.md)).",
        "",
    ]
    for tag, operations in groups.items():
        links = ", ".join(f"[`{m.upper()} {p}`](#{op_anchor(m, p)})" for m, p, _ in operations)
        out.append(f"- **[{tag}](#{tag_anchor(tag)})**: {links}")
    out.append(f"- **[Schemas](#schemas)**: {', '.join(f'[`{n}`](#{schema_anchor(n)})' for n in components)}")
    out.append("")
    for tag, operations in groups.items():
        out += [f"## {tag} {{#{tag_anchor(tag)}}}", ""]
        for method, path, operation in operations:
            out += render_operation(method, path, operation)
    out += ["## Schemas {#schemas}", ""]
    for name, component in components.items():
        out += render_schema(name, component)
    return "\n".join(out) + "\n"


def render_operation(method: str, path: str, operation: dict[str, Any]) -> list[str]:
    out = [f"### `{method.upper()} {path}` {{#{op_anchor(method, path)}}}", ""]
    if operation.get("summary"):
        out += [f"**{text(operation['summary'])}**", ""]
    if operation.get("description"):
        out += [html.escape(operation["description"].strip(), quote=False), ""]
    if operation.get("deprecated"):
        out += ["*Deprecated.*", ""]
    parameters = operation.get("parameters", [])
    if parameters:
        out += ["| parameter | in | type | required | default | description |", "| --- | --- | --- | --- | --- | --- |"]
        for p in parameters:
            s = p.get("schema", {})
            out.append(f"| `{p['name']}` | {p['in']} | {type_of(s)} | {'yes' if p.get('required') else 'no'} | "
                       f"{default_of(s)} | {text(p.get('description') or s.get('description', ''))} |")
        out.append("")
    body = operation.get("requestBody")
    if body:
        required = "required" if body.get("required") else "optional"
        kinds = "; ".join(f"`{kind}`: {type_of(c.get('schema', {}))}" for kind, c in body.get("content", {}).items())
        out += [f"Request body ({required}): {kinds or 'any'}", ""]
    else:
        out += ["Request body: none" + (" in the schema (a raw body: see the summary)" if "raw" in
                                        operation.get("summary", "") else ""), ""]
    out += ["| status | meaning | response body |", "| --- | --- | --- |"]
    for status, response in operation.get("responses", {}).items():
        content = response.get("content", {})
        bodies = "; ".join(f"`{kind}`: {type_of(c.get('schema', {}))}" for kind, c in content.items()) or "none"
        out.append(f"| {status} | {text(response.get('description', ''))} | {bodies} |")
    out.append("")
    return out


def render_schema(name: str, schema: dict[str, Any]) -> list[str]:
    out = [f"### {name} {{#{schema_anchor(name)}}}", ""]
    if schema.get("description"):
        out += [text(schema["description"]), ""]
    properties = schema.get("properties")
    if not properties:
        return [*out, f"Type: {type_of(schema)}", ""]
    required = set(schema.get("required", []))
    out += ["| field | type | required | default | description |", "| --- | --- | --- | --- | --- |"]
    for field, s in properties.items():
        out.append(f"| `{field}` | {type_of(s)} | {'yes' if field in required else 'no'} | {default_of(s)} | "
                   f"{text(s.get('description', ''))} |")
    extra = schema.get("additionalProperties")
    out.append("")
    if extra is False or extra is True:
        out += [f"Other fields: {'refused (422)' if extra is False else 'allowed'}.", ""]
    return out


def type_of(schema: dict[str, Any]) -> str:
    """A short, linked type: `SearchHit`, array of `string`, `string` or null, one of "raw", "structured"."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f"[`{name}`](#{schema_anchor(name)})"
    for combinator, word in (("anyOf", " or "), ("oneOf", " or "), ("allOf", " and ")):
        if combinator in schema:
            return word.join(type_of(s) for s in schema[combinator])
    if "enum" in schema:
        return "one of " + ", ".join(f"`{value!r}`".replace("'", '"') for value in schema["enum"])
    kind = schema.get("type")
    if kind == "array":
        return f"array of {type_of(schema.get('items', {}))}"
    if kind == "object" or "additionalProperties" in schema:
        values = schema.get("additionalProperties")
        return f"object of {type_of(values)}" if isinstance(values, dict) and values else "object"
    if kind is None:
        return "any"
    bounds = [f"{symbol} {fmt(schema[key])}" for key, symbol in
              (("minimum", "≥"), ("exclusiveMinimum", ">"), ("maximum", "≤"), ("exclusiveMaximum", "<"))
              if key in schema]
    bounds += [f"length ≥ {schema['minLength']}"] if "minLength" in schema else []
    bounds += [f"length ≤ {schema['maxLength']}"] if "maxLength" in schema else []
    return f"`{kind}`" + (f" ({', '.join(bounds)})" if bounds else "")


def default_of(schema: dict[str, Any]) -> str:
    return f"`{fmt(schema['default'])}`" if "default" in schema else ""


def fmt(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    return repr(value).replace("'", '"') if isinstance(value, str) else str(value)


def text(value: str) -> str:
    """One line of plain text (a table cell): no line breaks, no bare pipes, no HTML."""
    return html.escape(" ".join(str(value).split()), quote=False).replace("|", "\\|")


def slug(value: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", value.lower()).strip("-")


def op_anchor(method: str, path: str) -> str:
    return f"{method}-{slug(path)}"


def tag_anchor(tag: str) -> str:
    return f"tag-{slug(tag)}"


def schema_anchor(name: str) -> str:
    return f"schema-{slug(name)}"

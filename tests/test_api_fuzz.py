"""Schemathesis against the service's own OpenAPI: no 5xx and no response breaking its schema.

Path parameters are pinned to a real project, knowledge bank and folder, so the fuzzed requests
reach the handlers' logic instead of stopping at 404s.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

import kb
from tests.support.server import ADMIN_KEY, KBServer

# What schemathesis' generator leaves out (lone surrogates: it only makes strings it can encode as UTF-8) and
# the edges of what stores hold; json.dumps sends surrogates as "\\ud800" escapes and NaN as a bare literal.
HOSTILE_STRINGS = st.sampled_from(["\ud800", "a\udfffb", "\udbff\udc00\ud800", "\x00", "x\x00y", "k" * 300,
                                   "é" * 17_000, "\ufeff\u202e", ""])
HOSTILE_NUMBERS = st.sampled_from([2**64, 2**63, -(2**63) - 1, 10**40, -0.0, float("nan"), float("inf"),
                                   float("-inf")])
HOSTILE_NESTING = st.integers(17, 60).map(lambda depth: _nested(depth))


def _nested(depth: int) -> object:
    value: object = "leaf"
    for _ in range(depth):
        value = {"n": value}
    return value


def taint(value: object, data: st.DataObject) -> object:
    """A copy of a generated JSON body with some strings, keys and numbers swapped for hostile ones."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if data.draw(st.integers(0, 5)) == 0:
                key = key + data.draw(HOSTILE_STRINGS)
            out[key] = taint(item, data)
        if data.draw(st.integers(0, 7)) == 0:
            out[data.draw(HOSTILE_STRINGS) or "deep"] = data.draw(HOSTILE_NESTING)
        return out
    if isinstance(value, list):
        return [taint(item, data) for item in value]
    if isinstance(value, str) and data.draw(st.integers(0, 2)) == 0:
        return value + data.draw(HOSTILE_STRINGS)
    if isinstance(value, int | float) and not isinstance(value, bool) and data.draw(st.integers(0, 2)) == 0:
        return data.draw(HOSTILE_NUMBERS)
    return value


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[KBServer, dict[str, str]]]:
    server = KBServer(tmp_path_factory.mktemp("fuzz-home"), env={"KB_MAX_K": "100", "KB_MAX_BATCH": "50"}).start()
    client = kb.api_client(url=server.url, api_key=ADMIN_KEY)
    project = client.get_default_project()
    handle = project.create_knowledge_bank("fuzzed", embedding_llm_id="custom:fake6",
                                           settings={"metadata_schema": {"source": "string", "n": "int"}})
    handle.as_core_knowledge_bank().as_langchain_vectorstore().add_texts(
        ["alpha beta", "gamma delta"], metadatas=[{"source": "a", "n": 1}, {"source": "b", "n": 2}], ids=["a", "b"])
    folder = project.create_managed_folder("files")
    folder.upload_data("/x.txt", b"x")
    yield server, {"project_key": "DEFAULT", "kb_id": handle.id, "folder_id": folder.id}
    server.stop()


@pytest.fixture(scope="module")
def api_schema(fuzz_server: tuple[KBServer, dict[str, str]]) -> schemathesis.BaseSchema:
    server, _ = fuzz_server
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    # Deleting the fuzzed knowledge bank or folder would turn every later request into a 404.
    return schema.exclude(method="DELETE", path_regex=r"/knowledge-banks/\{kb_id\}$").exclude(
        method="DELETE", path_regex=r"/folders/\{folder_id\}$")


def test_no_server_errors_and_schema_conformance(api_schema: schemathesis.BaseSchema,
                                                 fuzz_server: tuple[KBServer, dict[str, str]]) -> None:
    # Driven by hand rather than schemathesis' pytest plugin, which does not support pytest 9 yet.
    server, pinned = fuzz_server
    tried: list[str] = []
    statuses: dict[int, int] = {}
    counts = {"cases": 0, "tainted": 0}
    for result in api_schema.get_all_operations():
        operation = result.ok()

        @settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(), data=st.data())
        def run(case: schemathesis.Case, data: st.DataObject) -> None:
            for name, value in pinned.items():
                if case.path_parameters and name in case.path_parameters:
                    case.path_parameters[name] = value
            counts["cases"] += 1
            headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
            if isinstance(case.body, dict | list) and data.draw(st.booleans(), label="taint"):
                # schemathesis never sends lone surrogates or NaN (and refuses to), so these go out by hand
                counts["tainted"] += 1
                body = json.dumps(taint(case.body, data)).encode()
                response = requests.request(case.method, f"{server.url}{case.formatted_path}", params=case.query,
                                            headers={**headers, "Content-Type": "application/json"}, data=body,
                                            timeout=30)
            else:
                response = case.call(headers=headers, timeout=30)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            case.validate_response(response, checks=(not_a_server_error, response_schema_conformance))

        run()
        tried.append(operation.label)
    print(f"schemathesis: {counts['cases']} cases over {len(tried)} operations, {counts['tainted']} with hostile "
          f"values in the body; statuses {dict(sorted(statuses.items()))}")
    assert len(tried) >= 25  # every route of the API was fuzzed
    assert sum(n for code, n in statuses.items() if code < 300) >= 100, statuses  # and many reached the handlers
    assert counts["tainted"] >= 50, counts  # and the hostile values went in often


def test_the_fuzzed_knowledge_bank_is_still_consistent(fuzz_server: tuple[KBServer, dict[str, str]]) -> None:
    server, pinned = fuzz_server
    core = kb.api_client(url=server.url, api_key=ADMIN_KEY).get_default_project() \
        .get_knowledge_bank(pinned["kb_id"]).as_core_knowledge_bank()
    count = core.count()
    assert min(count, 100) == len(core.as_langchain_vectorstore().similarity_search("alpha", k=100))
    assert Path(server.home).exists()

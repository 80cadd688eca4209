"""The remote client refuses hostile input as the embedded client does: the same typed error, the same message
(naming the document, its position and the key), raised before anything is sent, and nothing written.

Every case runs on both clients side by side: an embedded knowledge bank and one behind a real ``kb`` service
(uvicorn on a loopback port), with the same hostile values as tests/test_input_hardening.py and the same
hypothesis strategies as tests/test_hostile_input.py.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from langchain_core.documents import Document

import kb
from kb.client import EmbeddedClient
from kb_base.input_checks import MAX_DEPTH
from tests.conftest import FAKE_MODEL_ID
from tests.test_hostile_input import HOSTILE_TEXT, JSON
from tests.test_input_hardening import HOSTILE_METADATA, SURROGATE, _deep

# the server, remote and embedded module fixtures these tests compare the two clients with
pytest_plugins = ["tests.support.remote_pair"]

_names = itertools.count()


class Sent:
    """The requests the remote client sent while recording."""

    def __init__(self) -> None:
        self.requests: list[str] = []

    def writes(self) -> list[str]:
        return [r for r in self.requests if not r.startswith("GET ") and not r.endswith(("/documents/get", "/count"))]


@contextmanager
def recording(remote: Any) -> Iterator[Sent]:
    sent = Sent()

    def hook(request: httpx.Request) -> None:
        sent.requests.append(f"{request.method} {request.url.path}")

    hooks = remote.transport.http.event_hooks
    remote.transport.http.event_hooks = {**hooks, "request": [*hooks.get("request", []), hook]}
    try:
        yield sent
    finally:
        remote.transport.http.event_hooks = hooks


def outcome(action: Callable[[], Any]) -> tuple[str, str]:
    """("ok", repr of the result) or (error class, message); anything but a kb error fails the test."""
    try:
        return "ok", repr(action())
    except kb.KBError as exc:
        return type(exc).__name__, str(exc)


def _pair(embedded: EmbeddedClient, remote: Any, settings: dict | None = None,
          kept: dict | None = None) -> tuple[Any, Any]:
    name = f"hostile-{next(_names)}"
    cores = []
    for client in (embedded, remote):
        core = client.get_default_project().create_knowledge_bank(
            name, embedding_llm_id=FAKE_MODEL_ID, settings=settings or {}).as_core_knowledge_bank()
        with core.get_writer() as writer:
            writer.add_documents([Document(page_content="kept", metadata=kept or {"source": "ok"})], ids=["kept"])
        cores.append(core)
    return cores[0], cores[1]


@pytest.fixture
def cores(embedded: EmbeddedClient, remote: Any) -> tuple[Any, Any]:
    return _pair(embedded, remote)


def _stored(core: Any, ids: tuple[str, ...] = ("kept", "good", "bad")) -> list[tuple[str, str, str]]:
    return sorted((d.id, d.page_content, json.dumps(d.metadata, sort_keys=True)) for d in core.get_documents(ids))


def _same_refusal(cores: tuple[Any, Any], remote: Any, action: Callable[[Any], Any],
                  expected: type[kb.KBError] = kb.InvalidInputError) -> str:
    """``action`` refused on both clients with the same class and message, nothing sent nor written; the message."""
    local_core, remote_core = cores
    before = _stored(local_core), _stored(remote_core)
    local = outcome(lambda: action(local_core))
    with recording(remote) as sent:
        far = outcome(lambda: action(remote_core))
    assert local[0] != "ok" and issubclass(getattr(kb, local[0], kb.KBError), expected), local
    assert far == local
    assert sent.writes() == [], sent.requests
    assert (_stored(local_core), _stored(remote_core)) == before
    return far[1]


def test_the_issue_case_a_lone_surrogate_in_metadata_through_the_writer(cores: tuple[Any, Any], remote: Any) -> None:
    def write(core: Any) -> None:
        with core.get_writer() as writer:
            writer.as_langchain_vectorstore().add_texts(["fine", "text"], metadatas=[{}, {"source": f"a{SURROGATE}"}],
                                                        ids=["good", "bad"])

    message = _same_refusal(cores, remote, write)
    assert "'bad' (position 1)" in message and "'source'" in message and "surrogate" in message, message


@pytest.mark.parametrize("metadata,fragment", HOSTILE_METADATA.values(), ids=list(HOSTILE_METADATA))
def test_hostile_metadata_is_refused_alike_naming_document_and_key(cores: tuple[Any, Any], remote: Any,
                                                                   metadata: dict, fragment: str) -> None:
    def write(core: Any) -> None:
        with core.get_writer() as writer:
            writer.add_documents([Document(page_content="fine", metadata={"source": "ok"}),
                                  Document(page_content="text", metadata=metadata)], ids=["good", "bad"])

    message = _same_refusal(cores, remote, write)
    assert "'bad'" in message and "position 1" in message and fragment.lower() in message.lower(), message


@pytest.mark.parametrize("text", [f"a{SURROGATE}", "a\x00b"], ids=["surrogate", "NUL"])
def test_hostile_text_is_refused_alike_without_a_writer(cores: tuple[Any, Any], remote: Any, text: str) -> None:
    message = _same_refusal(cores, remote, lambda core: core.as_langchain_vectorstore().add_texts([text], ids=["bad"]))
    assert "'bad' (position 0): page_content" in message


@pytest.mark.parametrize("doc_id", [f"x{SURROGATE}", "x\x00y", "", "i" * 513],
                         ids=["surrogate", "NUL", "empty", "long"])
def test_hostile_ids_are_refused_alike_on_write_get_and_delete(cores: tuple[Any, Any], remote: Any,
                                                              doc_id: str) -> None:
    assert "position 1): id" in _same_refusal(cores, remote, lambda c: c.write_texts(["a", "b"], [{}, {}],
                                                                                       ["good", doc_id]))
    assert "ids[0]" in _same_refusal(cores, remote, lambda c: c.as_langchain_vectorstore().delete([doc_id]))
    assert "ids[1]" in _same_refusal(cores, remote, lambda c: c.get_documents(["kept", doc_id]))

    def delete_in_writer(core: Any) -> None:
        with core.get_writer() as writer:
            writer.delete([doc_id])

    assert "ids[0]" in _same_refusal(cores, remote, delete_in_writer)


def test_duplicate_ids_and_bad_vectors_are_refused_alike(cores: tuple[Any, Any], remote: Any) -> None:
    message = _same_refusal(cores, remote, lambda c: c.as_langchain_vectorstore().add_texts(
        ["a", "b", "c"], ids=["good", "other", "good"]))
    assert "'good' (position 2)" in message and "position 0" in message
    for vector in ([1.0, float("nan"), 0, 0, 0, 0], [float("inf")] * 6):
        message = _same_refusal(cores, remote, lambda c, v=vector: c.as_langchain_vectorstore().add_embeddings(
            [("a", [0.1] * 6), ("b", v)], ids=["good", "bad"]))
        assert "'bad' (position 1): vector has NaN or infinite values" in message, message


def test_dates_numpy_numbers_and_negative_zero_are_stored_alike(cores: tuple[Any, Any]) -> None:
    metadata = {"when": dt.datetime(2026, 1, 2, 3, 4, 5), "day": dt.date(2026, 1, 2), "n": np.int64(7),
                "x": np.float32(0.5), "z": -0.0, "l": [-0.0, 1]}
    for core in cores:
        core.as_langchain_vectorstore().add_texts(["dated"], metadatas=[metadata], ids=["good"])
    local, far = (_stored(core) for core in cores)
    assert far == local
    assert json.loads(dict((i, m) for i, _, m in far)["good"]) == {
        "when": "2026-01-02T03:04:05", "day": "2026-01-02", "n": 7, "x": 0.5, "z": 0.0, "l": [0.0, 1]}


def test_values_json_cannot_hold_are_refused_alike(cores: tuple[Any, Any], remote: Any) -> None:
    for value in ({1, 2}, b"bytes", object()):
        message = _same_refusal(cores, remote, lambda c, v=value: c.as_langchain_vectorstore().add_texts(
            ["a", "b"], metadatas=[{}, {"odd": v}], ids=["good", "bad"]), kb.SchemaError)
        assert "'bad' (position 1)" in message and "'odd'" in message, message


def test_schema_violations_are_refused_alike_before_sending(embedded: EmbeddedClient, remote: Any) -> None:
    cores = _pair(embedded, remote, {"metadata_schema": {"year": "int", "when": "date"}}, kept={"year": 1})
    for metadata in ({"year": "nineteen"}, {"when": dt.time(3, 4)}, {"other": 1}, {"year": 2**70}):
        message = _same_refusal(cores, remote, lambda c, m=metadata: c.as_langchain_vectorstore().add_texts(
            ["a", "b"], metadatas=[{"year": 1}, m], ids=["good", "bad"]))
        assert "'bad' (position 1)" in message, message
    message = _same_refusal(cores, remote, lambda c: c.count({"other": 1}), kb.FilterError)
    assert "not in the metadata schema" in message


def test_hostile_searches_and_counts_are_refused_alike(cores: tuple[Any, Any], remote: Any) -> None:
    cases = [
        (lambda c: c.search(query=f"fox{SURROGATE}", k=2), kb.InvalidInputError, "query holds a lone UTF-16 surrogate"),
        (lambda c: c.search(query="fox\x00", k=2, search_type="keyword"), kb.InvalidInputError, "query holds a NUL"),
        (lambda c: c.search(query="fox", k=2, filter={"source": SURROGATE}), kb.FilterError,
         "filter.source: the value holds a lone UTF-16 surrogate"),
        (lambda c: c.search(query="fox", k=2, filter={"n": float("nan")}), kb.FilterError, "not a finite number"),
        (lambda c: c.count({"n": {"$in": [1, 2**70]}}), kb.FilterError, "64 bits"),
        (lambda c: c.count({f"k{SURROGATE}": 1}), kb.FilterError, "invalid metadata key"),
        (lambda c: c.search(query="fox", k=0), kb.InvalidInputError, "k must be"),
        (lambda c: c.search(query="fox", search_type="mmr", lambda_mult=float("nan")), kb.InvalidInputError,
         "lambda_mult"),
        (lambda c: c.as_langchain_vectorstore().similarity_search("fox", k=2, filter={"$or": SURROGATE}),
         kb.FilterError, "$or"),
    ]
    for action, expected, fragment in cases:
        assert fragment in _same_refusal(cores, remote, action, expected)
    for core in cores:
        assert [r.id for r in core.search(query="kept", k=2)] == ["kept"]  # and both still answer


def test_a_non_finite_query_vector_is_refused_before_sending(cores: tuple[Any, Any], remote: Any) -> None:
    with recording(remote) as sent, pytest.raises(kb.InvalidInputError, match="query vector has NaN"):
        cores[1].search(vector=[float("nan")] * 6, k=2)
    assert sent.requests == []


def test_hostile_settings_and_names_are_refused_alike(embedded: EmbeddedClient, remote: Any,
                                                      cores: tuple[Any, Any]) -> None:
    handles = [client.get_default_project().get_knowledge_bank(core.id) for client, core in zip((embedded, remote),
                                                                                                 cores, strict=True)]
    for bad in ({"note": SURROGATE}, {"note": float("nan")}, {"note": 2**80}, {"note": _deep(MAX_DEPTH + 2)}):
        results = []
        for handle, client in zip(handles, (embedded, remote), strict=True):
            settings = handle.get_settings()
            settings.get_raw().setdefault("search", {}).update(bad)
            if client is remote:
                with recording(remote) as sent:
                    results.append(outcome(settings.save))
                assert sent.requests == []
            else:
                results.append(outcome(settings.save))
            assert "note" not in (handle.get_settings().get_raw().get("search") or {})
        local, far = (message.replace(repr(handle.id), "<id>") for handle, (_, message) in zip(handles, results,
                                                                                             strict=True))
        assert far == local and results[0][0] == results[1][0] == "InvalidInputError" and "settings" in far, results
    for action in (lambda c: c.get_default_project().create_knowledge_bank(f"n{SURROGATE}",
                                                                           embedding_llm_id=FAKE_MODEL_ID),
                   lambda c: c.get_default_project().create_knowledge_bank("fine", embedding_llm_id=FAKE_MODEL_ID,
                                                                           settings={"x": float("inf")}),
                   lambda c: c.get_default_project().create_managed_folder(f"f{SURROGATE}"),
                   lambda c: c.create_project(f"P{SURROGATE}"),
                   lambda c: c.create_project("P_NAMED", name=f"n{SURROGATE}"),
                   lambda c: c.create_project("P_NAMED", name=7)):
        local = outcome(lambda a=action: a(embedded))
        with recording(remote) as sent:
            far = outcome(lambda a=action: a(remote))
        assert far == local and local[0] == "InvalidInputError", (local, far)
        assert sent.requests == []


def test_hostile_folder_paths_and_data_are_refused_before_sending(remote: Any) -> None:
    folder = remote.get_default_project().create_managed_folder(f"files-{next(_names)}")
    with recording(remote) as sent:
        for path in (f"/a{SURROGATE}.txt", "/a\x00.txt", "/../x", ""):
            with pytest.raises(kb.PathError):
                folder.upload_data(path, b"x")
            with pytest.raises(kb.PathError):
                folder.read(path)
        with pytest.raises(kb.InvalidInputError, match="must be bytes"):
            folder.upload_data("/a.txt", f"text{SURROGATE}")  # type: ignore[arg-type]
    assert sent.requests == []
    assert folder.list_paths() == []


def test_hostile_texts_to_embed_and_names_in_urls_are_refused_before_sending(remote: Any) -> None:
    llm = remote.get_default_project().get_llm(FAKE_MODEL_ID)
    with recording(remote) as sent:
        with pytest.raises(kb.InvalidInputError, match="text #1 to embed holds a lone UTF-16 surrogate"):
            llm.embed(["fine", f"bad{SURROGATE}"])
        with pytest.raises(kb.InvalidInputError, match="text #0 to embed is a int"):
            llm.as_langchain_embeddings().embed_documents([3])  # type: ignore[list-item]
        for action in (lambda: remote.get_project(f"P{SURROGATE}"),
                       lambda: remote.get_default_project().get_knowledge_bank(f"id{SURROGATE}")):
            with pytest.raises(kb.InvalidInputError, match="surrogate"):
                action()
    assert sent.requests == []
    assert len(llm.embed(["fine"])[0]) == 6


def test_remote_ingestion_rejects_hostile_rows_by_number_and_refuses_hostile_options(cores: tuple[Any, Any],
                                                                                    remote: Any,
                                                                                    tmp_path: Path) -> None:
    rows = [
        '{"id": "r1", "text": "fine row", "source": "s"}',
        '{"id": "r2", "text": "bad \\ud800 text"}',
        '{"id": "r3\\ud800", "text": "bad id"}',
        '{"id": "r4", "text": "bad metadata", "source": "\\udfff"}',
        '{"id": "r5", "text": "huge int", "n": 123456789012345678901234567890}',
    ]
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    core = cores[1]
    params = {"format": "jsonl", "id_column": "id", "chunk_size": 0, "source": "rows.jsonl"}
    report = core.ingest_file(path, params, progress=False)
    rejected = {r["row"]: r["reason"] for r in report["rejected"]}
    assert sorted(rejected) == [2, 3, 4, 5] and "surrogate" in rejected[2] and "64 bits" in rejected[5], rejected
    assert core.count() == 2
    with recording(remote) as sent, pytest.raises(kb.InvalidInputError, match="ingestion option source holds a lone"):
        core.ingest_file(path, {**params, "source": f"rows{SURROGATE}.jsonl"}, progress=False)
    assert sent.requests == [] and core.count() == 2


def test_what_escapes_the_checks_is_still_a_typed_error(remote: Any) -> None:
    transport = remote.transport
    for body in ({"a": SURROGATE}, {"a": float("nan")}, {"a": dt.time(1)}):
        with recording(remote) as sent, pytest.raises(kb.InvalidInputError, match="cannot be encoded"):
            transport.json("POST", "/v1/projects", json=body)
        assert sent.requests == []


# --- the hostile strategies of tests/test_hostile_input.py, through both clients ---------------------------------


@pytest.fixture(scope="module")
def hypothesis_cores(embedded: EmbeddedClient, remote: Any) -> tuple[Any, Any]:
    return _pair(embedded, remote)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(metadata=st.dictionaries(HOSTILE_TEXT, JSON, max_size=4), text=HOSTILE_TEXT, doc_id=HOSTILE_TEXT)
def test_any_metadata_text_and_id_fares_the_same_on_both_clients(hypothesis_cores: tuple[Any, Any], remote: Any,
                                                                metadata: dict, text: str, doc_id: str) -> None:
    doc_id = doc_id or "empty"
    results = []
    for core in hypothesis_cores:
        before = core.count()

        def write(core: Any = core) -> None:
            with core.get_writer() as writer:
                writer.delete(["neighbour"])
                core.write_texts(["neighbour", text], [{"n": 1}, metadata], ["neighbour", doc_id],
                                 tx=writer.transaction)

        if core is hypothesis_cores[1]:
            with recording(remote) as sent:
                result = outcome(write)
            if result[0] != "ok":
                assert sent.writes() == [], (result, sent.requests)
        else:
            result = outcome(write)
        if result[0] != "ok":
            assert issubclass(getattr(kb, result[0]), kb.InvalidInputError), result
            assert core.count() == before
        results.append((result[0], result[1], _stored(core, (doc_id,)) if result[0] == "ok" else None))
        if result[0] == "ok":
            with core.get_writer() as writer:
                writer.delete([doc_id])
    assert results[0] == results[1]


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(raw=JSON)
def test_any_json_filter_fares_the_same_on_both_clients(hypothesis_cores: tuple[Any, Any], remote: Any,
                                                        raw: object) -> None:
    local = outcome(lambda: hypothesis_cores[0].count(raw))  # type: ignore[arg-type]
    with recording(remote) as sent:
        far = outcome(lambda: hypothesis_cores[1].count(raw))  # type: ignore[arg-type]
    assert far == local
    if far[0] != "ok":
        assert far[0] == "FilterError" and sent.requests == [], (far, sent.requests)


@pytest.mark.parametrize("url,api_key,fragment", [
    ("http://127.0.0.1:9", "kb_caf\u00e9", "api_key"), ("http://127.0.0.1:9", "kb_x\n", "api_key"),
    ("http://127.0.0.1:9", f"kb_{SURROGATE}", "api_key"), ("127.0.0.1:8080", "kb_x", "http://"),
    ("ftp://127.0.0.1", "kb_x", "http://"),
], ids=["non-ascii key", "line break in key", "surrogate in key", "no scheme", "ftp"])
def test_a_bad_key_or_url_is_refused_when_the_client_is_made(url: str, api_key: str, fragment: str) -> None:
    with pytest.raises(kb.InvalidInputError, match=fragment):
        kb.api_client(url=url, api_key=api_key)

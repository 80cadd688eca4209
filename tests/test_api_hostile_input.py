"""Hostile input over real HTTP: every write path answers 4xx with a JSON error naming the document and field
(never a 5xx), and nothing is written."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

import kb
from tests.support.server import ADMIN_KEY, KBServer

HEADERS = {"Authorization": f"Bearer {ADMIN_KEY}", "Content-Type": "application/json"}
DEEP = "{\"a\": " * 40 + "1" + "}" * 40
# httpx's default of 5 s is too short when a neighbouring test (or xdist worker) keeps the machine busy: the first
# write to a fresh service timed out that way, and every test of the module failed at setup.
TIMEOUT = 60


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KBServer]:
    process = KBServer(tmp_path_factory.mktemp("hostile-api-home")).start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def kb_url(server: KBServer) -> str:
    handle = kb.api_client(url=server.url, api_key=ADMIN_KEY).get_default_project().create_knowledge_bank(
        "hostile", embedding_llm_id="custom:fake6")
    url = f"{server.url}/v1/projects/DEFAULT/knowledge-banks/{handle.id}"
    response = httpx.post(f"{url}/documents", headers=HEADERS, timeout=TIMEOUT,
                          content=b'{"documents": [{"id": "kept", "text": "kept", "metadata": {"source": "ok"}}]}')
    assert response.status_code == 200, response.text
    return url


def _state(kb_url: str) -> tuple[int, list]:
    count = httpx.get(f"{kb_url}/count", headers=HEADERS, timeout=TIMEOUT).json()["count"]
    docs = httpx.post(f"{kb_url}/documents/get", headers=HEADERS, timeout=TIMEOUT,
                      json={"ids": ["kept", "good", "bad"]}).json()
    return count, docs


def _refused(response: httpx.Response, *fragments: str) -> str:
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    error = response.json()["error"]
    assert set(error) == {"code", "message"}
    for fragment in fragments:
        assert fragment.lower() in error["message"].lower(), (fragment, error)
    return str(error["message"])


# Raw JSON text of the second document of a batch (the first is fine): (document JSON, fragments of the error).
HOSTILE_DOCUMENTS = {
    "surrogate in metadata": ('{"id": "bad", "text": "t", "metadata": {"source": "\\ud800"}}', ["'bad'", "'source'",
                                                                                                 "surrogate"]),
    "surrogate in a metadata key": ('{"id": "bad", "text": "t", "metadata": {"k\\udc00": 1}}', ["'bad'", "surrogate"]),
    "surrogate in text": ('{"id": "bad", "text": "a\\ud800", "metadata": {}}', ["'bad'", "page_content",
                                                                                 "surrogate"]),
    "surrogate in id": ('{"id": "bad\\ud800", "text": "t"}', ["position 1", "id", "surrogate"]),
    "NUL in text": ('{"id": "bad", "text": "a\\u0000b"}', ["'bad'", "page_content", "NUL"]),
    "NUL in metadata": ('{"id": "bad", "text": "t", "metadata": {"source": "a\\u0000"}}', ["'bad'", "'source'", "NUL"]),
    "NUL in id": ('{"id": "b\\u0000d", "text": "t"}', ["position 1", "NUL"]),
    "integer beyond 64 bits": ('{"id": "bad", "text": "t", "metadata": {"n": 99999999999999999999999}}',
                               ["'bad'", "'n'", "64 bits"]),
    "NaN literal": ('{"id": "bad", "text": "t", "metadata": {"x": NaN}}', ["x"]),
    "Infinity literal": ('{"id": "bad", "text": "t", "metadata": {"x": [1, -Infinity]}}', ["x"]),
    "huge exponent": ('{"id": "bad", "text": "t", "metadata": {"x": 1e999}}', ["x"]),
    "deep nesting": ('{"id": "bad", "text": "t", "metadata": {"x": ' + DEEP + "}}", ["'bad'", "deeper"]),
    "very long key": ('{"id": "bad", "text": "t", "metadata": {"' + "k" * 300 + '": 1}}', ["'bad'", "256"]),
    "very long value": ('{"id": "bad", "text": "t", "metadata": {"v": "' + "x" * 40_000 + '"}}', ["'bad'", "32766"]),
    "duplicate id": ('{"id": "good", "text": "again"}', ["'good'", "position 1", "position 0"]),
}


@pytest.mark.parametrize("document,fragments", HOSTILE_DOCUMENTS.values(), ids=list(HOSTILE_DOCUMENTS))
def test_hostile_documents_get_a_422_naming_the_field_and_nothing_is_written(kb_url: str, document: str,
                                                                              fragments: list[str]) -> None:
    before = _state(kb_url)
    batch = '[{"id": "good", "text": "fine", "metadata": {"source": "ok"}}, ' + document + "]"
    _refused(httpx.post(f"{kb_url}/documents", headers=HEADERS, timeout=TIMEOUT,
                        content=f'{{"documents": {batch}}}'.encode()), *fragments)
    _refused(httpx.post(f"{kb_url}/commits", headers=HEADERS, timeout=TIMEOUT,
                        content=f'{{"clear": true, "deletes": ["kept"], "upserts": {batch}}}'.encode()), *fragments)
    assert _state(kb_url) == before


def test_hostile_ids_in_get_delete_and_commit_deletes(kb_url: str) -> None:
    before = _state(kb_url)
    for path, body in (("documents/get", '{"ids": ["kept", "x\\ud800"]}'),
                       ("documents/delete", '{"ids": ["kept", "x\\ud800"]}'),
                       ("documents/delete", '{"ids": ["kept", "x\\u0000"]}'),
                       ("commits", '{"deletes": ["kept", "\\udfff"], "upserts": []}')):
        _refused(httpx.post(f"{kb_url}/{path}", headers=HEADERS, timeout=TIMEOUT, content=body.encode()), "[1]")
    assert _state(kb_url) == before


@pytest.mark.parametrize("body,fragment", [
    ('{"query": "fox \\ud800", "k": 2}', "query holds a lone UTF-16 surrogate"),
    ('{"query": "fox \\ud800", "k": 2, "search_type": "keyword"}', "query holds a lone UTF-16 surrogate"),
    ('{"query": "fox \\ud800", "k": 2, "search_type": "hybrid"}', "query holds a lone UTF-16 surrogate"),
    ('{"query": "fox\\u0000", "k": 2}', "NUL"),
    ('{"query": "fox", "k": 2, "filter": {"source": "\\ud800"}}', "filter.source"),
    ('{"query": "fox", "k": 2, "filter": {"n": {"$gt": 123456789012345678901234567890}}}', "64 bits"),
], ids=["similarity", "keyword", "hybrid", "NUL", "filter-surrogate", "filter-huge-int"])
def test_hostile_searches_get_a_422_not_a_502(kb_url: str, body: str, fragment: str) -> None:
    _refused(httpx.post(f"{kb_url}/search", headers=HEADERS, timeout=TIMEOUT, content=body.encode()), fragment)


def test_hostile_count_filter(kb_url: str) -> None:
    _refused(httpx.get(f"{kb_url}/count", headers=HEADERS, timeout=TIMEOUT,
                       params={"filter": '{"source": "\\ud800"}'}), "surrogate")


def test_bodies_that_are_not_utf8_get_a_4xx(kb_url: str) -> None:
    before = _state(kb_url)
    for raw in (b'{"documents": [{"id": "bad", "text": "\xff\xfe"}]}',
                b'{"documents": [{"id": "bad", "text": "\xed\xa0\x80"}]}'):  # a surrogate encoded as UTF-8 (CESU)
        response = httpx.post(f"{kb_url}/documents", headers=HEADERS, timeout=TIMEOUT, content=raw)
        assert 400 <= response.status_code < 500 and "error" in response.json(), response.text
    assert _state(kb_url) == before


def test_hostile_settings_get_a_422_and_the_settings_stay(kb_url: str) -> None:
    settings = httpx.get(f"{kb_url}/settings", headers=HEADERS, timeout=TIMEOUT).json()
    for bad in ('"\\ud800"', "NaN", "1e999", "123456789012345678901234567890", DEEP):
        raw = json.dumps({**settings, "search": {"note": "PLACEHOLDER"}}).replace('"PLACEHOLDER"', bad)
        response = httpx.put(f"{kb_url}/settings", headers=HEADERS, timeout=TIMEOUT, content=raw.encode())
        _refused(response)
    assert httpx.get(f"{kb_url}/settings", headers=HEADERS, timeout=TIMEOUT).json() == settings


def test_hostile_ingestion_rows_are_rejected_by_number(kb_url: str) -> None:
    before_count, _ = _state(kb_url)
    body = b"\n".join([b'{"id": "i1", "text": "fine"}', b'{"id": "i2", "text": "bad \\ud800"}',
                       b'{"id": "i3\\u0000", "text": "nul id"}', b'{"id": "i4", "text": "x", "n": 1e999}',
                       b'{"id": "i5", "text": "not utf-8 \xff"}'])
    response = httpx.post(f"{kb_url}/ingest", headers=HEADERS, timeout=TIMEOUT,
                          params={"format": "jsonl", "id_column": "id", "chunk_size": 0}, content=body)
    assert response.status_code == 200, response.text
    report = response.json()
    assert sorted(r["row"] for r in report["rejected"]) == [2, 3, 4, 5], report
    assert httpx.get(f"{kb_url}/count", headers=HEADERS, timeout=TIMEOUT).json()["count"] == before_count + 1
    response = httpx.post(f"{kb_url}/documents/delete", headers=HEADERS, timeout=TIMEOUT, json={"ids": ["i1#0"]})
    assert response.json() == {"deleted": 1}


def test_hostile_folder_paths_get_a_4xx(server: KBServer) -> None:
    folders = f"{server.url}/v1/projects/DEFAULT/folders"
    folder = httpx.post(folders, headers=HEADERS, timeout=TIMEOUT, json={"name": "hostile"}).json()
    base = f"{folders}/{folder['id']}/files"
    for path in ("a%00b.txt", "a%ED%A0%80.txt", "a%FF.txt", "x" * 2000):
        response = httpx.put(f"{base}/{path}", headers=HEADERS, timeout=TIMEOUT, content=b"data")
        assert 400 <= response.status_code < 500 and "error" in response.json(), (path, response.text)
    assert httpx.get(base, headers=HEADERS, timeout=TIMEOUT).json() == []
    _refused(httpx.post(folders, headers=HEADERS, timeout=TIMEOUT, content=b'{"name": "f\\ud800"}'))


def test_texts_to_embed_with_surrogates_get_a_422_not_a_502(server: KBServer) -> None:
    for path, body in (("/v1/embeddings", b'{"model": "custom:fake6", "input": ["fine", "a\\ud800"]}'),
                       ("/v1/projects/DEFAULT/llms/custom:fake6/embeddings", b'{"texts": ["fine", "a\\ud800"]}')):
        _refused(httpx.post(f"{server.url}{path}", headers=HEADERS, timeout=TIMEOUT, content=body),
                 "text #1", "surrogate")

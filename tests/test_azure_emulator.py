"""The Azure AI Search emulator's fidelity, checked against Microsoft's published description of the API.

- the published x-ms-examples' responses validate against the spec subset kept in tests/support/azure_spec
  (the subset says what the published file says);
- the published example requests, sent to the emulator, get answers that validate, with the statuses the
  examples show;
- the validator refuses what breaks the schemas, and the api-key header is enforced.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.azure_search import spec
from tests.support.azure_search_emulator import AzureSearchEmulator
from tests.test_search_quality import rerank_server  # noqa: F401, F811 - the HTTP reranker fixture

EXAMPLES = spec.SPEC_DIR / "examples"
ROUTE_OF = {"SearchIndexSearchDocumentsPost": ("POST", "search"),
            "SearchIndexSearchDocumentsSemanticPost": ("POST", "search"),
            "SearchIndexIndexDocuments": ("POST", "batch"), "SearchIndexGetDocument": ("GET", "lookup")}
HOTEL_FIELDS = [
    {"name": "hotelId", "type": "Edm.String", "key": True, "filterable": True},
    {"name": "docId", "type": "Edm.String", "filterable": True},
    {"name": "title", "type": "Edm.String", "searchable": True},
    {"name": "category", "type": "Edm.String", "searchable": True, "filterable": True, "facetable": True},
    {"name": "description", "type": "Edm.String", "searchable": True},
    {"name": "content", "type": "Edm.String", "searchable": True},
    {"name": "rating", "type": "Edm.Double", "filterable": True, "sortable": True},
    {"name": "descriptionEmbedding", "type": "Collection(Edm.Single)", "searchable": True, "dimensions": 5,
     "vectorSearchProfile": "profile"},
]


def example(name: str) -> dict[str, Any]:
    return json.loads((EXAMPLES / f"{name}.json").read_text())


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AzureSearchEmulator]:
    server = AzureSearchEmulator(tmp_path_factory.mktemp("azure-emulator")).start()
    yield server
    server.stop()


class Service:
    def __init__(self, emulator: AzureSearchEmulator) -> None:
        self.emulator = emulator
        self.http = httpx.Client(base_url=emulator.url, headers={"api-key": emulator.api_key},
                                 params={"api-version": "2024-07-01"}, timeout=10)

    def create_index(self, name: str, fields: list[dict[str, Any]], key: str) -> None:
        fields = [{**f, "key": f["name"] == key} for f in fields]
        body = {"name": name, "fields": fields,
                "vectorSearch": {"profiles": [{"name": "profile", "algorithm": "hnsw"}],
                                 "algorithms": [{"name": "hnsw", "kind": "hnsw",
                                                 "hnswParameters": {"metric": "cosine"}}]},
                "semantic": {"configurations": [{"name": "my-semantic-config", "prioritizedFields": {
                    "titleField": {"fieldName": "title"}, "prioritizedContentFields": [{"fieldName": "content"}]}}]}}
        if not any(f["name"] == "content" for f in fields):
            del body["semantic"]
        answer = self.http.put(f"/indexes('{name}')", json=body)
        assert answer.status_code == 201, answer.text
        assert spec.response_errors("PUT", "index", 201, answer.json()) == []


@pytest.fixture
def service(emulator: AzureSearchEmulator) -> Iterator[Service]:
    emulator.reset()
    yield Service(emulator)
    assert emulator.violations() == []


@pytest.mark.parametrize("name", sorted(ROUTE_OF))
def test_published_example_responses_validate_against_the_kept_spec(name: str) -> None:
    method, route = ROUTE_OF[name]
    document = example(name)
    for status, response in document["responses"].items():
        assert spec.response_errors(method, route, int(status), response["body"]) == [], (name, status)
    body = document["parameters"].get("searchRequest") or document["parameters"].get("batch")
    if body is not None:
        assert spec.request_errors(method, route, body) == [], name


def test_published_search_request_gets_a_valid_answer(service: Service) -> None:
    service.create_index("myindex", HOTEL_FIELDS, key="hotelId")
    docs = [{"@search.action": "upload", "hotelId": str(i), "category": c, "description": d, "rating": r,
             "descriptionEmbedding": v} for i, (c, d, r, v) in enumerate([
                 ("Luxury", "nice hotels by the sea", 4.8, [0.1, 0.07, 0.08, 0.15, 0.12]),
                 ("Economy", "a nice cheap motel", 4.2, [0.9, 0.1, 0.0, 0.0, 0.1]),
                 ("Budget", "hotels near the airport", 3.1, [0.1, 0.07, 0.08, 0.15, 0.11])])]
    assert service.http.post("/indexes('myindex')/docs/search.index", json={"value": docs}).status_code == 200
    request = example("SearchIndexSearchDocumentsPost")["parameters"]["searchRequest"]
    answer = service.http.post("/indexes('myindex')/docs/search.post.search", json=request)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert spec.response_errors("POST", "search", 200, body) == []
    assert [r["hotelId"] for r in body["value"]] == ["0", "1"]  # rating gt 4.0, ordered by rating desc
    assert body["@odata.count"] == 2 and set(body["value"][0]) == {"@search.score", "hotelId", "category",
                                                                   "description"}


def test_published_semantic_request_gets_answers_and_captions(service: Service) -> None:
    service.create_index("myindex2", HOTEL_FIELDS, key="hotelId")
    docs = [{"@search.action": "upload", "hotelId": "4123", "title": "Earth Atmosphere",
             "content": "Fog is a cloud on the ground. This is how clouds form: moist air rises and cools."},
            {"@search.action": "upload", "hotelId": "7", "title": "Volcanoes",
             "content": "Lava flows downhill. This is how lava cools."}]
    service.http.post("/indexes('myindex2')/docs/search.index", json={"value": docs}).raise_for_status()
    request = example("SearchIndexSearchDocumentsSemanticPost")["parameters"]["searchRequest"]
    answer = service.http.post("/indexes('myindex2')/docs/search.post.search", json=request)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert spec.response_errors("POST", "search", 200, body) == []
    first = body["value"][0]
    assert first["hotelId"] == "4123" and first["@search.rerankerScore"] > body["value"][1]["@search.rerankerScore"]
    assert "<em>form</em>" in first["@search.captions"][0]["highlights"]
    assert [a["key"] for a in body["@search.answers"]] == ["4123"]


def test_published_batch_gets_the_published_per_document_statuses(service: Service) -> None:
    service.create_index("indexdocumentsexample", [f for f in HOTEL_FIELDS if f["name"] in
                                                   ("docId", "title", "description")], key="docId")
    document = example("SearchIndexIndexDocuments")
    answer = service.http.post("/indexes('indexdocumentsexample')/docs/search.index",
                               json=document["parameters"]["batch"])
    assert answer.status_code == 207  # on an empty index, the merge of document 2 fails: the published 207
    assert spec.response_errors("POST", "batch", 207, answer.json()) == []
    expected = [(r["key"], r["status"], r["statusCode"]) for r in document["responses"]["207"]["body"]["value"]]
    assert [(r["key"], r["status"], r["statusCode"]) for r in answer.json()["value"]] == expected


def test_published_lookup_gets_the_published_document(service: Service) -> None:
    service.create_index("getdocumentexample", HOTEL_FIELDS[1:], key="docId")
    published = example("SearchIndexGetDocument")
    service.http.post("/indexes('getdocumentexample')/docs/search.index", json={"value": [
        {"@search.action": "upload", **published["responses"]["200"]["body"], "rating": 3.0}]}).raise_for_status()
    select = ",".join(published["parameters"]["$select"])
    answer = service.http.get("/indexes('getdocumentexample')/docs('1')", params={"$select": select})
    assert answer.status_code == 200
    assert answer.json() == published["responses"]["200"]["body"]
    missing = service.http.get("/indexes('getdocumentexample')/docs('nope')")
    assert missing.status_code == 404 and spec.response_errors("GET", "lookup", 404, missing.json()) == []


def test_requests_that_break_the_schema_are_refused_and_recorded(emulator: AzureSearchEmulator) -> None:
    emulator.reset()
    http = Service(emulator).http
    bad_action = http.post("/indexes('x')/docs/search.index", json={"value": [{"@search.action": "replace"}]})
    bad_top = http.post("/indexes('x')/docs/search.post.search", json={"search": "a", "top": "ten"})
    no_fields = http.put("/indexes('y')", json={"name": "y"})
    assert [r.status_code for r in (bad_action, bad_top, no_fields)] == [400, 400, 400]
    assert "@search.action" in bad_action.json()["error"]["message"]
    assert {v["route"] for v in emulator.violations()} == {"batch", "search", "index"}
    emulator.reset()


def test_api_key_and_api_version_are_enforced(emulator: AzureSearchEmulator) -> None:
    url = f"{emulator.url}/indexes"
    assert httpx.get(url, params={"api-version": "2024-07-01"}).status_code == 401
    assert httpx.get(url, params={"api-version": "2024-07-01"}, headers={"api-key": "wrong"}).status_code == 403
    old = httpx.get(url, params={"api-version": "2023-11-01"}, headers={"api-key": emulator.api_key})
    assert old.status_code == 400 and "api-version" in old.json()["error"]["message"]


def test_spec_files_carry_their_notice() -> None:
    notice = (spec.SPEC_DIR / "NOTICE").read_text()
    assert "Azure/azure-rest-api-specs" in notice and "MIT" in notice
    assert Path(spec.SPEC_DIR / "examples" / "SOURCES").exists()


def test_the_semantic_ranker_is_configurable(tmp_path: Path, rerank_server: str) -> None:  # noqa: F811
    """The default local ranker scores query-term coverage; an HTTP reranker (here: term density) replaces it."""
    docs = [{"@search.action": "upload", "hotelId": "short", "content": "coffee"},
            {"@search.action": "upload", "hotelId": "long", "content": "coffee beans are roasted in a drum for hours"}]
    request = {"search": "coffee beans", "queryType": "semantic", "semanticConfiguration": "my-semantic-config"}
    orders = []
    for reranker_url in (None, rerank_server):
        server = AzureSearchEmulator(tmp_path, reranker_url=reranker_url).start()
        try:
            service = Service(server)
            service.create_index("ranked", HOTEL_FIELDS, key="hotelId")
            service.http.post("/indexes('ranked')/docs/search.index", json={"value": docs}).raise_for_status()
            answer = service.http.post("/indexes('ranked')/docs/search.post.search", json=request).json()
            orders.append([r["hotelId"] for r in answer["value"]])
            assert server.violations() == []
        finally:
            server.stop()
    assert orders == [["long", "short"], ["short", "long"]]


def test_published_create_index_request_is_accepted_and_answered_validly(service: Service) -> None:
    index = json.loads((EXAMPLES / "SearchServiceCreateIndex.request.json").read_text())["parameters"]["index"]
    assert spec.request_errors("POST", "indexes", index) == []  # the hand-transcribed service schema takes it
    created = service.http.post("/indexes", json=index)
    assert created.status_code == 201, created.text
    assert spec.response_errors("POST", "indexes", 201, created.json()) == []
    assert [f["name"] for f in created.json()["fields"]] == [f["name"] for f in index["fields"]]
    again = service.http.post("/indexes", json=index)
    assert again.status_code == 409
    listed = service.http.get("/indexes").json()
    assert "hotels" in {i["name"] for i in listed["value"]}
    assert spec.response_errors("GET", "indexes", 200, listed) == []
    assert service.http.delete("/indexes('hotels')").status_code == 204
    assert service.http.delete("/indexes('hotels')").status_code == 404

"""The REST endpoints the console added, over real HTTP: whoami, browsing documents, ingestion jobs, evaluation,
and the console's static files (served without a key, while every datum behind them needs one)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from tests.support.server import KBServer

pytest_plugins = ["tests.support.remote_pair"]  # server, http


@pytest.fixture(scope="module")
def kb_url(http: httpx.Client) -> str:
    created = http.post("/v1/projects/DEFAULT/knowledge-banks", json={
        "name": "browse", "embedding_llm_id": "custom:fake6", "settings": {"metadata_schema": {"n": "int"}}})
    assert created.status_code == 201, created.text
    url = f"/v1/projects/DEFAULT/knowledge-banks/{created.json()['id']}"
    docs = [{"id": f"d{n:02d}", "text": f"document number {n}", "metadata": {"n": n}} for n in range(12)]
    assert http.post(f"{url}/documents", json={"documents": docs}).status_code == 200
    return url


def _error(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    return response.json()["error"]["message"]


def test_console_is_static_and_needs_no_key_but_the_data_does(server: KBServer) -> None:
    index = httpx.get(server.url + "/")
    assert index.status_code == 200 and "text/html" in index.headers["content-type"]
    assert "/console/app.js" in index.text and "http" not in index.text.replace("http-equiv", "")  # no CDN
    assert "default-src 'self'" in index.headers["content-security-policy"]
    for asset in ("app.js", "api.js", "ui.js", "pages.js", "kb_pages.js", "style.css"):
        assert httpx.get(f"{server.url}/console/{asset}").status_code == 200
    assert httpx.get(f"{server.url}/console/../keys.sqlite").status_code == 404
    _error(httpx.get(server.url + "/v1/whoami"), 401, "unauthenticated")
    _error(httpx.get(server.url + "/v1/projects/DEFAULT/jobs"), 401, "unauthenticated")


def test_whoami(server: KBServer, http: httpx.Client) -> None:
    assert http.get("/v1/whoami").json() == {"key_id": "bootstrap", "name": "bootstrap admin", "admin": True,
                                             "roles": {}, "auth": True}
    reader = server.keys().create("r", roles={"DEFAULT": "reader"})
    me = httpx.get(server.url + "/v1/whoami", headers={"Authorization": f"Bearer {reader}"}).json()
    assert me["admin"] is False and me["roles"] == {"DEFAULT": "reader"} and me["name"] == "r"


def test_browse_documents(http: httpx.Client, kb_url: str) -> None:
    page = http.get(f"{kb_url}/documents", params={"offset": 5, "limit": 3}).json()
    assert page["total"] == 12 and page["offset"] == 5
    assert [d["id"] for d in page["documents"]] == ["d05", "d06", "d07"]
    assert page["documents"][0] == {"id": "d05", "text": "document number 5", "metadata": {"n": 5}}
    filtered = http.get(f"{kb_url}/documents", params={"filter": json.dumps({"n": {"$gte": 10}})}).json()
    assert filtered["total"] == 2 and [d["id"] for d in filtered["documents"]] == ["d10", "d11"]
    assert http.get(f"{kb_url}/documents", params={"offset": 50}).json() == {"total": 12, "offset": 50,
                                                                             "documents": []}
    assert "colour" in _error(http.get(f"{kb_url}/documents", params={"filter": '{"colour": 1}'}), 422,
                              "invalid_filter")
    assert "JSON" in _error(http.get(f"{kb_url}/documents", params={"filter": "{"}), 422, "invalid_input")
    _error(http.get(f"{kb_url}/documents", params={"limit": 0}), 422, "invalid_request")
    _error(http.get(f"{kb_url}/documents", params={"limit": 100000}), 422, "invalid_input")


def _wait_job(http: httpx.Client, job_id: str) -> dict:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job = http.get(f"/v1/projects/DEFAULT/jobs/{job_id}").json()
        if job["state"] in ("succeeded", "failed"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish")


def test_ingestion_job(server: KBServer, http: httpx.Client, tmp_path: Path) -> None:
    kb = http.post("/v1/projects/DEFAULT/knowledge-banks", json={
        "name": "jobs", "embedding_llm_id": "custom:fake6", "settings": {"metadata_schema": {"topic": "string"}}})
    url = f"/v1/projects/DEFAULT/knowledge-banks/{kb.json()['id']}"
    folder = http.post("/v1/projects/DEFAULT/folders", json={"name": "drop"}).json()
    rows = [{"id": f"r{n}", "text": f"row {n} " * 50, "topic": "t"} for n in range(30)]
    rows.append({"id": "bad", "text": "wrong type", "topic": 7})
    body = "".join(json.dumps(r) + "\n" for r in rows).encode()
    assert http.put(f"/v1/projects/DEFAULT/folders/{folder['id']}/files/in/rows.jsonl", content=body).status_code == 201

    started = http.post(f"{url}/ingest-jobs", json={"folder": "drop", "path": "/in/rows.jsonl", "id_column": "id",
                                                     "chunk_size": 100, "chunk_overlap": 0, "batch_rows": 10,
                                                     "commit_every": 20})
    assert started.status_code == 202, started.text
    assert started.json()["state"] in ("queued", "running") and started.json()["target"]["path"] == "/in/rows.jsonl"
    job = _wait_job(http, started.json()["id"])
    assert job["state"] == "succeeded", job
    report = job["report"]
    assert report["rows_read"] == 31 and report["rows_written"] == 30 and report["rows_rejected"] == 1
    assert report["commits"] >= 2 and job["progress"]["commits"] == report["commits"]  # progress at each commit
    assert http.get(f"{url}/count").json()["count"] == report["chunks_written"] > 30
    assert started.json()["id"] in [j["id"] for j in http.get("/v1/projects/DEFAULT/jobs").json()]

    # refused up front (4xx), never a job that fails later
    _error(http.post(f"{url}/ingest-jobs", json={"folder": "drop", "path": "/missing.jsonl"}), 404, "not_found")
    _error(http.post(f"{url}/ingest-jobs", json={"folder": "nope", "path": "/in/rows.jsonl"}), 404, "not_found")
    _error(http.post(f"{url}/ingest-jobs", json={"folder": "drop", "path": "/../../keys.sqlite"}), 422,
           "invalid_path")
    _error(http.post(f"{url}/ingest-jobs", json={"folder": "drop", "path": "/in/rows.jsonl", "chunk_size": 10,
                                                 "chunk_overlap": 20}), 422, "invalid_input")
    http.put(f"/v1/projects/DEFAULT/folders/{folder['id']}/files/notes.txt", content=b"plain text")
    assert "format" in _error(http.post(f"{url}/ingest-jobs", json={"folder": "drop", "path": "/notes.txt"}), 422,
                              "invalid_input")
    _error(http.get("/v1/projects/DEFAULT/jobs/nope"), 404, "not_found")
    reader = server.keys().create("r2", roles={"DEFAULT": "reader"})
    _error(httpx.post(f"{server.url}{url}/ingest-jobs", json={"folder": "drop", "path": "/in/rows.jsonl"},
                      headers={"Authorization": f"Bearer {reader}"}), 403, "forbidden")

    # a job that fails while running ends "failed" with the error, and nothing of it is committed
    before = http.get(f"{url}/count").json()["count"]
    http.put(f"/v1/projects/DEFAULT/folders/{folder['id']}/files/broken.jsonl", content=b'{"id": "x", "nope": 1}\n')
    failed = _wait_job(http, http.post(f"{url}/ingest-jobs", json={
        "folder": folder["id"], "path": "/broken.jsonl", "max_rejected": 0}).json()["id"])
    assert failed["state"] == "failed" and failed["error"]["code"] and failed["report"] is None
    assert http.get(f"{url}/count").json()["count"] == before


def test_evaluation(http: httpx.Client, kb_url: str) -> None:
    queries = "\n".join(json.dumps({"_id": f"q{n}", "text": f"document number {n}"}) for n in (1, 2, 3)) + "\n"
    qrels = "query-id\tcorpus-id\tscore\nq1\td01\t1\nq2\td02\t1\n"
    out = http.post(f"{kb_url}/evaluate", json={"queries": queries, "qrels": qrels, "search_types": ["keyword"]})
    assert out.status_code == 200, out.text
    body = out.json()
    assert body["metrics"] == ["ndcg@10", "recall@100", "mrr@10"] and body["queries"] == 3
    assert body["judged_queries"] == 2 and list(body["results"]) == ["keyword"]
    assert body["results"]["keyword"]["recall@100"] == 1.0  # both targets are among the 12 documents
    assert "qrels:1" in _error(http.post(f"{kb_url}/evaluate", json={"queries": queries, "qrels": "q1\td01\n"}),
                               422, "invalid_input")
    assert "queries:1" in _error(http.post(f"{kb_url}/evaluate", json={"queries": "nope\n", "qrels": qrels}),
                                 422, "invalid_input")
    assert "relevance" in _error(http.post(f"{kb_url}/evaluate", json={"queries": queries, "qrels": "x\ty\t1\n"}),
                                 422, "invalid_input")
    _error(http.post(f"{kb_url}/evaluate", json={"queries": queries, "qrels": qrels, "search_types": ["magic"]}),
           422, "invalid_request")


def _key(server: KBServer, role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.keys().create(role, roles={'DEFAULT': role})}"}


def test_create_project_needs_a_global_admin(server: KBServer, http: httpx.Client) -> None:
    created = http.post("/v1/projects", json={"key": "RESEARCH_2", "name": "Research"})
    assert created.status_code == 201, created.text
    assert created.json() == {"key": "RESEARCH_2", "name": "Research"}
    assert {"key": "RESEARCH_2", "name": "Research"} in http.get("/v1/projects").json()
    assert "already exists" in _error(http.post("/v1/projects", json={"key": "RESEARCH_2"}), 409, "already_exists")
    assert "letters, digits or underscores" in _error(http.post("/v1/projects", json={"key": "bad key!"}), 422,
                                                      "invalid_input")
    _error(http.post("/v1/projects", json={"key": "X", "colour": "red"}), 422, "invalid_request")
    for role in ("reader", "writer", "admin"):  # a project's admin is not a global admin
        refused = httpx.post(f"{server.url}/v1/projects", json={"key": f"BY_{role.upper()}"},
                             headers=_key(server, role))
        assert "global admin" in _error(refused, 403, "forbidden")
    assert not {"BY_READER", "BY_WRITER", "BY_ADMIN"} & {p["key"] for p in http.get("/v1/projects").json()}


@pytest.fixture()
def settings_kb(http: httpx.Client) -> str:
    created = http.post("/v1/projects/DEFAULT/knowledge-banks", json={
        "name": "settings", "embedding_llm_id": "custom:fake6", "settings": {"metadata_schema": {"n": "int"}}})
    url = f"/v1/projects/DEFAULT/knowledge-banks/{created.json()['id']}"
    docs = [{"id": f"d{n}", "text": f"solar panel number {n} " + "filler " * n, "metadata": {"n": n}}
            for n in range(6)]
    assert http.post(f"{url}/documents", json={"documents": docs}).status_code == 200
    yield url
    http.delete(url)


def test_patch_settings_changes_only_what_it_names(http: httpx.Client, settings_kb: str) -> None:
    url = settings_kb
    before = http.get(f"{url}/settings").json()
    # similarity, 4 results: the defaults before any search setting
    plain = http.post(f"{url}/search", json={"query": "solar panel"}).json()["results"]
    assert len(plain) == 4 and set(plain[0]["scores"]) == {"dense"}
    assert "topic" in _error(http.post(f"{url}/search", json={"query": "solar", "filter": {"topic": "t"}}), 422,
                             "invalid_filter")
    topical = {"documents": [{"id": "d9", "text": "solar topic", "metadata": {"n": 9, "topic": "t"}}]}
    _error(http.post(f"{url}/documents", json=topical), 422, "schema_violation")

    changed = http.patch(f"{url}/settings", json={
        "metadata_schema": {"n": "int", "topic": "string"},
        "search": {"default_search_type": "keyword", "default_k": 2, "fusion": {"method": "rrf"}}})
    assert changed.status_code == 200, changed.text
    stored = http.get(f"{url}/settings").json()
    assert stored == changed.json()
    assert stored["metadata_schema"] == {"n": "int", "topic": "string"}
    assert stored["search"] == {"default_search_type": "keyword", "default_k": 2, "fusion": {"method": "rrf"}}
    assert {k: v for k, v in stored.items() if k not in ("metadata_schema", "search")} == \
        {k: v for k, v in before.items() if k not in ("metadata_schema", "search")}

    # effective at once: a search that names neither gets keyword and 2; one that names them gets what it asks
    defaulted = http.post(f"{url}/search", json={"query": "solar panel"}).json()["results"]
    assert len(defaulted) == 2 and set(defaulted[0]["scores"]) == {"keyword"}
    asked = http.post(f"{url}/search", json={"query": "solar panel", "search_type": "similarity", "k": 3}).json()
    assert len(asked["results"]) == 3 and set(asked["results"][0]["scores"]) == {"dense"}
    assert len(http.post(f"{url}/search", json={"query": "solar", "k": 5}).json()["results"]) == 5
    hybrid = http.post(f"{url}/search", json={"query": "solar panel", "search_type": "hybrid", "k": 1}).json()
    assert hybrid["results"][0]["score"] <= 2 / 61  # rrf: at most 1/(60+1) from each list
    assert http.post(f"{url}/documents", json=topical).status_code == 200
    only = http.post(f"{url}/search", json={"query": "solar", "filter": {"topic": "t"}, "k": 5}).json()["results"]
    assert [hit["id"] for hit in only] == ["d9"]
    http.post(f"{url}/documents/delete", json={"ids": ["d9"]})

    # null resets a section; the others stay
    reset = http.patch(f"{url}/settings", json={"search": None}).json()
    assert reset["search"] == {} and reset["metadata_schema"] == {"n": "int", "topic": "string"}
    assert len(http.post(f"{url}/search", json={"query": "solar panel"}).json()["results"]) == 4


def test_images_folder_setting(http: httpx.Client, settings_kb: str) -> None:
    folder = http.post("/v1/projects/DEFAULT/folders", json={"name": "pictures"}).json()
    ref = f"DEFAULT.{folder['id']}"
    assert http.patch(f"{settings_kb}/settings", json={"images_folder": ref}).json()["images_folder"] == ref
    hit = http.post(f"{settings_kb}/search", json={"query": "solar", "k": 1}).json()["results"][0]
    assert hit["images"] == []  # no image references in these documents, but the folder is set
    _error(http.patch(f"{settings_kb}/settings", json={"images_folder": "DEFAULT.nope"}), 404, "not_found")
    assert http.get(f"{settings_kb}/settings").json()["images_folder"] == ref
    assert http.patch(f"{settings_kb}/settings", json={"images_folder": None}).json()["images_folder"] is None
    http.delete(f"/v1/projects/DEFAULT/folders/{folder['id']}")


@pytest.mark.parametrize(("change", "status", "code", "words"), [
    ({"search": {"fusion": {"method": "magic"}}}, 422, "invalid_input", "magic"),
    ({"search": {"fusion": {"weight": 3}}}, 422, "invalid_input", "weight"),
    ({"search": {"fusion": "rrf"}}, 422, "invalid_input", "search.fusion must be an object"),
    ({"search": {"defualt_k": 3}}, 422, "invalid_input", "defualt_k"),
    ({"search": {"default_k": 0}}, 422, "invalid_input", "default_k"),
    ({"search": {"default_k": 5000}}, 422, "invalid_input", "KB_MAX_K"),
    ({"search": {"default_k": "4"}}, 422, "invalid_input", "default_k"),
    ({"search": {"default_search_type": "magic"}}, 422, "invalid_input", "magic"),
    ({"search": {"default_search_type": "similarity_score_threshold"}}, 422, "invalid_input", "default_search_type"),
    ({"search": {"default_search_type": "semantic_hybrid"}}, 422, "invalid_input", "reranker"),
    ({"search": {"reranker": {"type": "magic"}}}, 422, "invalid_input", "magic"),
    ({"search": {"reranker": {"type": "http", "url": "ftp://x"}}}, 422, "invalid_input", "url"),
    ({"search": {"reranker": {"type": "http", "url": "http://127.0.0.1:9/rerank", "timeout": "soon"}}}, 422,
     "invalid_input", "soon"),
    ({"search": {"reranker": {"type": "cross-encoder", "path": "/nowhere"}}}, 422, "invalid_input", "/nowhere"),
    ({"metadata_schema": {"n": "integer"}}, 422, "schema_violation", "integer"),
    ({"metadata_schema": {"n": "string"}}, 422, "invalid_input", "metadata key 'n' is int in this non-empty"),
    ({"store": {"index": {"type": "HNSW"}}}, 422, "invalid_input", "cannot change"),
    ({"embedding_llm_id": "local:all-MiniLM-L6-v2"}, 422, "invalid_input", "non-empty"),
    ({"embedding_llm_id": None}, 422, "invalid_input", "cannot be unset"),
    ({"embedding_llm_id": "custom:nope"}, 404, "unknown_model", "nope"),
    ({"keyword": {"index": False}}, 422, "invalid_input", "keyword index"),
    ({"store": {"password": "***"}}, 422, "invalid_input", "masked secret"),
    ({"colour": "red"}, 422, "invalid_request", "colour"),
])
def test_refused_settings_change_nothing(http: httpx.Client, settings_kb: str, change: dict, status: int,
                                         code: str, words: str) -> None:
    before = http.get(f"{settings_kb}/settings").json()
    message = _error(http.patch(f"{settings_kb}/settings", json=change), status, code)
    assert words in message, message
    assert http.get(f"{settings_kb}/settings").json() == before


def test_put_checks_search_settings_too(http: httpx.Client, settings_kb: str) -> None:
    settings = http.get(f"{settings_kb}/settings").json()
    settings["search"] = {"fusion": {"normalisation": "magic"}}
    assert "magic" in _error(http.put(f"{settings_kb}/settings", json=settings), 422, "invalid_input")


def test_put_answers_with_secrets_masked(http: httpx.Client, settings_kb: str) -> None:
    """PUT answers as GET and PATCH do: a secret saved is never sent back."""
    settings = http.get(f"{settings_kb}/settings").json()
    settings["keyword"] = {**(settings.get("keyword") or {}), "token": "s3cret-value"}
    answered = http.put(f"{settings_kb}/settings", json=settings)
    assert answered.status_code == 200, answered.text
    assert answered.json()["keyword"]["token"] == "***" and "s3cret-value" not in answered.text
    assert http.get(f"{settings_kb}/settings").json()["keyword"]["token"] == "***"


def test_only_admins_change_settings(server: KBServer, http: httpx.Client, settings_kb: str) -> None:
    before = http.get(f"{settings_kb}/settings").json()
    for role in ("reader", "writer"):
        headers = _key(server, role)
        assert httpx.get(f"{server.url}{settings_kb}/settings", headers=headers).status_code == 200
        refused = httpx.patch(f"{server.url}{settings_kb}/settings", headers=headers,
                              json={"search": {"default_k": 2}})
        assert "admin role" in _error(refused, 403, "forbidden")
        _error(httpx.put(f"{server.url}{settings_kb}/settings", headers=headers, json=before), 403, "forbidden")
    assert http.get(f"{settings_kb}/settings").json() == before
    project_admin = httpx.patch(f"{server.url}{settings_kb}/settings", headers=_key(server, "admin"),
                                json={"search": {"default_k": 2}})
    assert project_admin.status_code == 200 and project_admin.json()["search"] == {"default_k": 2}


def test_create_checks_search_settings(http: httpx.Client) -> None:
    before = http.get("/v1/projects/DEFAULT/knowledge-banks").json()
    refused = http.post("/v1/projects/DEFAULT/knowledge-banks", json={
        "name": "broken", "embedding_llm_id": "custom:fake6", "settings": {"search": {"fusion": {"method": "magic"}}}})
    assert "magic" in _error(refused, 422, "invalid_input")
    assert http.get("/v1/projects/DEFAULT/knowledge-banks").json() == before
    created = http.post("/v1/projects/DEFAULT/knowledge-banks", json={
        "name": "keyword-first", "embedding_llm_id": "custom:fake6",
        "settings": {"search": {"default_search_type": "keyword", "default_k": 1}}})
    url = f"/v1/projects/DEFAULT/knowledge-banks/{created.json()['id']}"
    http.post(f"{url}/documents", json={"documents": [{"id": "a", "text": "red apple"}, {"id": "b", "text": "red"}]})
    hits = http.post(f"{url}/search", json={"query": "red apple"}).json()["results"]
    assert [h["id"] for h in hits] == ["a"] and set(hits[0]["scores"]) == {"keyword"}
    http.delete(url)

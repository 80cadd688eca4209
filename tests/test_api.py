"""The REST service over real HTTP: the whole API through the remote client, auth, limits and 4xx paths."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from langchain_core.documents import Document

import kb
from kb.remote import RemoteAuthError, RemoteClient, RemoteForbiddenError
from tests.support.server import ADMIN_KEY, KBServer

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KBServer]:
    process = KBServer(tmp_path_factory.mktemp("api-home"), env={"KB_MAX_K": "50", "KB_MAX_BATCH": "100",
                                                                  "KB_MAX_BODY_BYTES": "200000"}).start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def admin(server: KBServer) -> RemoteClient:
    return kb.api_client(url=server.url, api_key=ADMIN_KEY)


@pytest.fixture(scope="module")
def project_keys(server: KBServer, admin: RemoteClient) -> dict[str, str]:
    """Projects A and B, and a key per role on A plus a writer key on B."""
    admin.create_project("PROJ_A")
    admin.create_project("PROJ_B")
    store = server.keys()
    return {role: store.create(f"{role} of A", roles={"PROJ_A": role}) for role in ("reader", "writer", "admin")} | {
        "b_writer": store.create("writer of B", roles={"PROJ_B": "writer"})}


def _url(server: KBServer, path: str) -> str:
    return server.url + path


def test_health_and_readiness(server: KBServer) -> None:
    assert httpx.get(_url(server, "/healthz")).json() == {"status": "ok"}
    ready = httpx.get(_url(server, "/readyz")).json()
    assert ready["status"] == "ready" and ready["dependencies"]["embedding_model"] == {"state": "loaded"}
    catalog = ready["dependencies"]["catalog"]
    assert catalog["state"] == "up" and not catalog["shared"] and catalog["database"].endswith("catalog.sqlite")
    spec = httpx.get(_url(server, "/openapi.json")).json()
    assert "/v1/projects/{project_key}/knowledge-banks/{kb_id}/search" in spec["paths"]


def test_remote_client_mirrors_the_embedded_api(admin: RemoteClient) -> None:
    project = admin.get_default_project()
    assert "custom:fake6" in [llm.id for llm in project.list_llms(purpose="TEXT_EMBEDDING_EXTRACTION")]
    vectors = project.get_llm("custom:fake6").new_embeddings().add_text("hello").execute().get_embeddings()
    assert len(vectors) == 1 and len(vectors[0]) == 6
    folder = project.create_managed_folder("images")
    folder.upload_file("/page1.png", FIXTURES / "images" / "page1.png")
    assert folder.list_paths() == ["/page1.png"]
    handle = project.create_knowledge_bank("remote-papers", embedding_llm_id="custom:fake6")
    assert [(i.id, i.name) for i in project.list_knowledge_banks()] == [(handle.id, "remote-papers")]
    settings = project.get_knowledge_bank(handle.id).get_settings()
    settings.set_metadata_schema({"source": "string", "start_index": "int"})
    settings.set_images_folder(f"{folder.project_key}.{folder.get_id()}")
    settings.save()
    assert handle.get_settings().get_metadata_schema() == {"source": "string", "start_index": "int"}
    core = handle.as_core_knowledge_bank()
    with core.get_writer() as writer:
        assert Path(writer.folder_path).is_dir()
        doc = (writer.get_metadata_formatter().with_retrieval_content(image_paths=["/page1.png"])
               .format_metadata(Document(page_content="solar panels", metadata={"source": "guide", "start_index": 1})))
        writer.as_langchain_vectorstore().add_documents([doc, Document(page_content="bees dance",
                                                                       metadata={"source": "bio"})], ids=["s", "b"])
        assert core.count() == 0  # nothing is sent before the block ends
    assert core.count() == 2
    results = core.search(query="solar panels", k=1)
    assert results[0].id == "s" and results[0].image_paths == ["/page1.png"]
    assert core.get_images(results[0]) == [(FIXTURES / "images" / "page1.png").read_bytes()]
    assert core.count({"source": "bio"}) == 1
    assert [d.id for d in core.as_langchain_retriever(search_type="hybrid", search_kwargs={"k": 1})
            .invoke("bees dance")] == ["b"]
    with pytest.raises(kb.SchemaError, match="start_index"):
        core.as_langchain_vectorstore().add_documents([Document(page_content="x", metadata={"start_index": "one"})])
    with pytest.raises(kb.FilterError, match="colour"):
        core.search(query="x", filter={"colour": "red"})


def test_remote_writer_exception_sends_nothing(admin: RemoteClient) -> None:
    core = admin.get_default_project().create_knowledge_bank("atomic", embedding_llm_id="custom:fake6") \
        .as_core_knowledge_bank()
    core.as_langchain_vectorstore().add_texts(["kept"], ids=["k"])
    with pytest.raises(RuntimeError):
        with core.get_writer() as writer:
            writer.clear()
            writer.as_langchain_vectorstore().add_texts(["lost"], ids=["l"])
            raise RuntimeError("boom")
    assert core.count() == 1
    with core.get_writer() as writer:
        writer.clear()
        writer.as_langchain_vectorstore().add_texts(["new"], ids=["n"])
    assert [d.id for d in core.as_langchain_vectorstore().get_by_ids(["k", "n"])] == ["n"]


def test_documents_endpoints(server: KBServer, admin: RemoteClient) -> None:
    handle = admin.get_default_project().create_knowledge_bank("docs", embedding_llm_id="custom:fake6")
    base = f"/v1/projects/DEFAULT/knowledge-banks/{handle.id}"
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    docs = [{"id": f"d{i}", "text": f"text {i}", "metadata": {"n": i}} for i in range(6)]
    docs.append({"id": "v", "text": "with vector", "vector": [1, 0, 0, 0, 0, 0]})
    assert httpx.post(_url(server, base + "/documents"), json={"documents": docs}, headers=headers).status_code == 200
    got = httpx.post(_url(server, base + "/documents/get"), json={"ids": ["d2", "zz", "d1"]}, headers=headers).json()
    assert [d["id"] for d in got] == ["d2", "d1"]
    hits = httpx.post(_url(server, base + "/search"), json={"vector": [1, 0, 0, 0, 0, 0], "k": 1},
                      headers=headers).json()["results"]
    assert hits[0]["id"] == "v" and hits[0]["score"] == pytest.approx(1.0, abs=1e-5)
    deleted = httpx.post(_url(server, base + "/documents/delete"), json={"filter": {"n": {"$gte": 4}}},
                         headers=headers).json()
    assert deleted == {"deleted": 2}
    assert httpx.get(_url(server, base + "/count"), headers=headers).json() == {"count": 5}
    commit = {"clear": True, "upserts": [{"id": "only", "text": "only one"}]}
    assert httpx.post(_url(server, base + "/commits"), json=commit, headers=headers).json()["cleared"] is True
    assert httpx.get(_url(server, base + "/count"), headers=headers).json() == {"count": 1}
    assert httpx.post(_url(server, base + "/clear"), headers=headers).status_code == 200
    assert httpx.get(_url(server, base + "/count"), headers=headers).json() == {"count": 0}


@pytest.mark.parametrize("body,status,code", [
    ({"query": "x", "search_type": "psychic"}, 422, "invalid_request"),
    ({"query": "x", "k": 51}, 422, "invalid_input"),
    ({"query": "x", "filter": {"n": {"$regex": "a"}}}, 422, "invalid_filter"),
    ({"query": "x", "filter": {"$and": []}}, 422, "invalid_filter"),
    ({"vector": [1, 2, 3]}, 422, "invalid_input"),
    ({"query": "x", "search_type": "hybrid", "diversity": True}, 422, "unsupported_search"),
    ({"query": "x", "search_type": "semantic_hybrid"}, 422, "unsupported_search"),
    ({}, 422, "invalid_input"),
    ({"query": "x", "unknown": 1}, 422, "invalid_request"),
    ({"query": "x", "search_type": "hybrid", "normalisation": "tmm"}, 422, "invalid_request"),
])
def test_search_errors_are_clear_4xx(server: KBServer, admin: RemoteClient, body: dict, status: int,
                                     code: str) -> None:
    handle = next((i for i in admin.get_default_project().list_knowledge_banks() if i.name == "errors"), None)
    kb_id = handle.id if handle else admin.get_default_project().create_knowledge_bank(
        "errors", embedding_llm_id="custom:fake6").id
    admin.get_default_project().get_knowledge_bank(kb_id).as_core_knowledge_bank().as_langchain_vectorstore() \
        .add_texts(["some text"], ids=["t"])
    response = httpx.post(_url(server, f"/v1/projects/DEFAULT/knowledge-banks/{kb_id}/search"), json=body,
                          headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code and response.json()["error"]["message"]


def test_hybrid_results_carry_a_fused_score_in_0_1_and_each_list_s_score(server: KBServer,
                                                                         admin: RemoteClient) -> None:
    handle = admin.get_default_project().create_knowledge_bank("fused", embedding_llm_id="custom:fake6")
    store = handle.as_core_knowledge_bank().as_langchain_vectorstore()
    store.add_texts(["error ERR_QUOTA_EXCEEDED_7 in the body", "a quiet page"], ids=["err", "quiet"])
    url = _url(server, f"/v1/projects/DEFAULT/knowledge-banks/{handle.id}/search")
    for normalisation in (None, "bounded"):
        body = {"query": "ERR_QUOTA_EXCEEDED_7", "k": 2, "search_type": "hybrid",
                **({"normalisation": normalisation} if normalisation else {})}
        hits = httpx.post(url, json=body, headers={"Authorization": f"Bearer {ADMIN_KEY}"}).json()["results"]
        assert all(0.0 <= h["score"] <= 1.0 and h["scores"]["fused"] == h["score"] for h in hits)
        stages = {h["id"]: set(h["scores"]) for h in hits}  # the fake embeddings are noise: no order asserted
        assert stages == {"err": {"fused", "dense", "keyword"}, "quiet": {"fused", "dense"}}


def test_limits_and_bad_bodies(server: KBServer, admin: RemoteClient) -> None:
    kb_id = admin.get_default_project().create_knowledge_bank("limits", embedding_llm_id="custom:fake6").id
    base = _url(server, f"/v1/projects/DEFAULT/knowledge-banks/{kb_id}")
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    big = httpx.post(base + "/documents", content=b"x" * 300_000,
                     headers={**headers, "content-type": "application/json"})
    assert big.status_code == 413 and "KB_MAX_BODY_BYTES" in big.json()["error"]["message"]
    many = {"documents": [{"text": f"t{i}"} for i in range(101)]}
    assert httpx.post(base + "/documents", json=many, headers=headers).status_code == 422
    bad_utf8 = httpx.post(base + "/documents", content=b'{"documents": [{"text": "\xff\xfe"}]}',
                          headers={**headers, "content-type": "application/json"})
    assert bad_utf8.status_code in (400, 422)
    nan = httpx.post(base + "/documents", content=b'{"documents": [{"text": "a", "vector": [NaN,1,1,1,1,1]}]}',
                     headers={**headers, "content-type": "application/json"})
    assert nan.status_code == 422
    first = httpx.post(base + "/documents", json={"documents": [{"id": "ok", "text": "a"}]}, headers=headers)
    assert first.status_code == 200
    wrong_dim = httpx.post(base + "/documents", json={"documents": [{"id": "ok2", "text": "b"},
                                                                    {"text": "a", "vector": [1.0, 2.0]}]},
                           headers=headers)
    assert wrong_dim.status_code == 422 and "dimensions" in wrong_dim.json()["error"]["message"]
    assert httpx.get(base + "/count", headers=headers).json() == {"count": 1}  # nothing half-written
    missing = httpx.get(_url(server, "/v1/projects/DEFAULT/knowledge-banks/nope"), headers=headers)
    assert missing.status_code == 404 and "nope" in missing.json()["error"]["message"]
    traversal = httpx.put(_url(server, "/v1/projects/DEFAULT/folders/x/files/..%2F..%2Fetc%2Fpasswd"),
                          content=b"x", headers=headers)
    assert traversal.status_code in (404, 422)
    bad_type = httpx.post(_url(server, "/v1/projects/DEFAULT/knowledge-banks"), headers=headers,
                          json={"name": "x", "vector_store_type": "PINECONE"})
    assert bad_type.status_code == 422 and "PINECONE" in bad_type.json()["error"]["message"]


def test_path_traversal_in_folders(server: KBServer, admin: RemoteClient) -> None:
    folder = admin.get_default_project().create_managed_folder("uploads")
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    base = _url(server, f"/v1/projects/DEFAULT/folders/{folder.id}/files")
    for path in ("/..%2F..%2Fescape.txt", "/a/%2E%2E/%2E%2E/escape.txt"):
        response = httpx.put(base + path, content=b"x", headers=headers)
        assert response.status_code in (404, 422), (path, response.text)
    long_name = "/" + "%C3%A9" * 128  # 256 bytes of UTF-8 in one name: past the file system's NAME_MAX
    for method in ("GET", "PUT", "DELETE"):
        response = httpx.request(method, base + long_name, content=b"x" if method == "PUT" else None,
                                 headers=headers)
        assert response.status_code == 422 and "255 bytes" in response.json()["error"]["message"], response.text
    assert folder.list_paths() == []


def test_auth_matrix(server: KBServer, admin: RemoteClient, project_keys: dict[str, str]) -> None:
    base = _url(server, "/v1/projects/PROJ_A/knowledge-banks")
    assert httpx.get(base).status_code == 401
    assert httpx.get(base, headers={"Authorization": "Bearer kb_nope_wrongwrongwrongwrong"}).status_code == 401
    assert httpx.get(base, headers={"Authorization": "Bearer garbage"}).json()["error"]["code"] == "unauthenticated"

    def call(role: str, method: str, path: str, **kwargs: object) -> int:
        headers = {"Authorization": f"Bearer {project_keys[role]}"}
        return httpx.request(method, _url(server, path), headers=headers, **kwargs).status_code  # type: ignore[arg-type]

    create = {"json": {"name": "secret", "embedding_llm_id": "custom:fake6"}}
    assert call("reader", "POST", "/v1/projects/PROJ_A/knowledge-banks", **create) == 403
    assert call("writer", "POST", "/v1/projects/PROJ_A/knowledge-banks", **create) == 403
    assert call("admin", "POST", "/v1/projects/PROJ_A/knowledge-banks", **create) == 201
    kb_id = admin.get_project("PROJ_A").list_knowledge_banks()[0].id
    docs = {"json": {"documents": [{"id": "1", "text": "hello"}]}}
    search = {"json": {"query": "hello"}}
    path = f"/v1/projects/PROJ_A/knowledge-banks/{kb_id}"
    assert call("reader", "POST", path + "/documents", **docs) == 403
    assert call("writer", "POST", path + "/documents", **docs) == 200
    assert call("reader", "POST", path + "/search", **search) == 200
    assert call("writer", "DELETE", path) == 403
    settings = {"embedding_llm_id": "x", "vector_store_type": "FAISS"}
    assert call("reader", "PUT", path + "/settings", json=settings) == 403
    # a key of another project learns nothing: 403 for every route, never the data or a 404
    for method, route, kwargs in [("GET", "/v1/projects/PROJ_A", {}),
                                  ("GET", "/v1/projects/PROJ_A/knowledge-banks", {}),
                                  ("POST", path + "/search", search), ("GET", path + "/count", {}),
                                  ("POST", path + "/documents/get", {"json": {"ids": ["1"]}}),
                                  ("GET", path + "/settings", {}), ("GET", "/v1/projects/PROJ_A/folders", {}),
                                  ("GET", "/v1/projects/PROJ_A/knowledge-banks/doesnotexist", {})]:
        assert call("b_writer", method, route, **kwargs) == 403, route
    listed = httpx.get(_url(server, "/v1/projects"), headers={"Authorization": f"Bearer {project_keys['b_writer']}"})
    assert [p["key"] for p in listed.json()] == ["PROJ_B"]
    with pytest.raises(RemoteForbiddenError):
        kb.api_client(url=server.url, api_key=project_keys["b_writer"]).get_project("PROJ_A")
    with pytest.raises(RemoteAuthError):
        kb.api_client(url=server.url, api_key="kb_x_wrongwrongwrongwrong").list_projects()


def test_openai_compatible_embeddings_with_the_openai_client(server: KBServer) -> None:
    import openai

    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=ADMIN_KEY)
    response = client.embeddings.create(model="custom:fake6", input=["alpha", "beta"])
    assert [d.index for d in response.data] == [0, 1] and len(response.data[0].embedding) == 6
    direct = kb.api_client(url=server.url, api_key=ADMIN_KEY).get_default_project().get_llm("custom:fake6")
    assert response.data[1].embedding == pytest.approx(direct.embed(["beta"])[0])
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="openai:nope:model", input="x")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="bad").embeddings.create(model="custom:fake6", input="x")


def test_auth_off_only_when_asked(tmp_path: Path) -> None:
    process = KBServer(tmp_path / "home", auth=False).start()
    try:
        assert httpx.get(f"{process.url}/v1/projects").status_code == 200
    finally:
        process.stop()


def test_ingestion_endpoint(server: KBServer, admin: RemoteClient, tmp_path: Path) -> None:
    kb_id = admin.get_default_project().create_knowledge_bank("ingested", embedding_llm_id="custom:fake6").id
    lines = [{"id": f"r{i}", "text": f"row number {i}", "tag": "t"} for i in range(30)] + [{"id": "bad"}]
    body = "\n".join(__import__("json").dumps(r) for r in lines).encode()
    url = _url(server, f"/v1/projects/DEFAULT/knowledge-banks/{kb_id}/ingest?format=jsonl&id_column=id")
    report = httpx.post(url, content=body, headers={"Authorization": f"Bearer {ADMIN_KEY}"}).json()
    assert (report["rows_written"], report["rows_rejected"]) == (30, 1)
    assert report["rejected"][0]["row"] == 31
    again = httpx.post(url, content=body, headers={"Authorization": f"Bearer {ADMIN_KEY}"}).json()
    assert again["chunks_written"] == 0 and again["rows_skipped"] == 30
    missing_format = httpx.post(url.split("?")[0], content=body, headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert missing_format.status_code == 422


def test_quick_searches_under_concurrency_see_commits_and_settings(server: KBServer, admin: RemoteClient) -> None:
    """Vector searches run on the event loop, with cached handles: concurrent clients get correct answers,
    a commit is visible to the next search, and saved settings (a new schema) take effect at once."""
    from concurrent.futures import ThreadPoolExecutor

    handle = admin.get_default_project().create_knowledge_bank("quick", embedding_llm_id="custom:fake6")
    base = _url(server, f"/v1/projects/DEFAULT/knowledge-banks/{handle.id}")
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    axes = [[1.0 if j == i else 0.0 for j in range(6)] for i in range(6)]
    docs = [{"id": f"axis{i}", "text": f"axis {i}", "metadata": {"axis": i}, "vector": v} for i, v in enumerate(axes)]
    assert httpx.post(base + "/documents", json={"documents": docs}, headers=headers).status_code == 200

    def nearest(i: int) -> str:
        with httpx.Client(headers=headers) as http:
            answer = http.post(base + "/search", json={"vector": axes[i % 6], "k": 1})
            assert answer.status_code == 200, answer.text
            return answer.json()["results"][0]["id"]

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(nearest, range(96))) == [f"axis{i % 6}" for i in range(96)]
    moved = {"id": "axis0", "text": "moved", "vector": axes[3]}
    assert httpx.post(base + "/documents", json={"documents": [moved]}, headers=headers).status_code == 200
    hits = httpx.post(base + "/search", json={"vector": axes[3], "k": 2}, headers=headers).json()["results"]
    assert {h["id"] for h in hits} == {"axis0", "axis3"}
    filtered = httpx.post(base + "/search", json={"vector": axes[3], "k": 6, "filter": {"axis": 3}},
                          headers=headers).json()["results"]
    assert [h["id"] for h in filtered] == ["axis3"]
    settings = httpx.get(base + "/settings", headers=headers).json()
    settings["metadata_schema"] = {"axis": "int"}
    assert httpx.put(base + "/settings", json=settings, headers=headers).status_code == 200
    wrong = httpx.post(base + "/search", json={"vector": axes[3], "k": 1, "filter": {"axis": "three"}},
                       headers=headers)
    assert wrong.status_code == 422 and "axis" in wrong.json()["error"]["message"]  # the new schema applies

"""Several service processes on one ``$KB_HOME`` (two servers, and ``kb serve --workers 2``): what one does the
other sees on its next request, and writers in different processes take turns."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.kb_serve import KBServe, connect_stub_model
from tests.support.openai_embeddings_server import EmbeddingsServer
from tests.support.server import ADMIN_KEY, KBServer

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[KBServer, KBServer]]:
    home = tmp_path_factory.mktemp("shared-home")
    first = KBServer(home).start()
    second = KBServer(home)
    second.log = home / "server-2.log"
    second.start()
    yield first, second
    first.stop()
    second.stop()


def _kb(server: KBServer, name: str, **settings: object) -> str:
    response = httpx.post(f"{server.url}/v1/projects/DEFAULT/knowledge-banks", headers=ADMIN,
                          json={"name": name, "embedding_llm_id": "custom:fake6", **settings})
    assert response.status_code == 201, response.text
    return f"/v1/projects/DEFAULT/knowledge-banks/{response.json()['id']}"


def _docs(prefix: str, n: int, **metadata: object) -> dict:
    return {"documents": [{"id": f"{prefix}{i}", "text": f"{prefix} text {i}", "metadata": dict(metadata)}
                          for i in range(n)]}


def test_commits_and_deletions_through_one_are_seen_by_the_other_at_once(servers: tuple[KBServer, KBServer]) -> None:
    a, b = servers
    path = _kb(a, "shared-docs")
    assert httpx.get(f"{b.url}{path}/count", headers=ADMIN).json() == {"count": 0}  # b opens the store now
    assert httpx.post(f"{a.url}{path}/documents", headers=ADMIN, json=_docs("x", 10, group="g")).status_code == 200
    assert httpx.get(f"{b.url}{path}/count", headers=ADMIN).json() == {"count": 10}
    hits = httpx.post(f"{b.url}{path}/search", headers=ADMIN, json={"query": "x text 3", "k": 10}).json()["results"]
    assert len(hits) == 10
    assert httpx.post(f"{a.url}{path}/documents/delete", headers=ADMIN, json={"ids": ["x0", "x1"]}).json() == \
        {"deleted": 2}
    assert httpx.get(f"{b.url}{path}/count", headers=ADMIN).json() == {"count": 8}
    for search_type in ("similarity", "keyword", "hybrid"):
        found = httpx.post(f"{b.url}{path}/search", headers=ADMIN,
                           json={"query": "x text 0", "k": 10, "search_type": search_type}).json()["results"]
        assert {"x0", "x1"}.isdisjoint(r["id"] for r in found), search_type
    assert httpx.post(f"{a.url}{path}/documents/delete", headers=ADMIN, json={"filter": {"group": "g"}}).json() == \
        {"deleted": 8}
    assert httpx.get(f"{b.url}{path}/count", headers=ADMIN).json() == {"count": 0}
    assert httpx.post(f"{b.url}{path}/clear", headers=ADMIN).status_code == 200
    assert httpx.delete(f"{a.url}{path}", headers=ADMIN).status_code == 204
    gone = httpx.get(f"{b.url}{path}/count", headers=ADMIN)
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "not_found"


def test_settings_saved_through_one_apply_in_the_other_at_once(servers: tuple[KBServer, KBServer]) -> None:
    a, b = servers
    path = _kb(a, "shared-settings")
    assert httpx.post(f"{b.url}{path}/documents", headers=ADMIN, json=_docs("s", 2, source=1)).status_code == 200
    settings = httpx.get(f"{a.url}{path}/settings", headers=ADMIN).json()
    settings["metadata_schema"] = {"source": "string"}
    saved = httpx.put(f"{a.url}{path}/settings", headers=ADMIN, json=settings)
    assert saved.status_code == 200, saved.text
    assert httpx.get(f"{b.url}{path}/settings", headers=ADMIN).json()["metadata_schema"] == {"source": "string"}
    refused = httpx.post(f"{b.url}{path}/documents", headers=ADMIN, json=_docs("t", 1, source=5))
    assert refused.status_code == 422 and "'source'" in refused.json()["error"]["message"]
    assert httpx.post(f"{b.url}{path}/search", headers=ADMIN,
                      json={"query": "s", "k": 1, "filter": {"other": 1}}).status_code == 422  # b filters by it
    settings["keyword"] = {"index": False}
    assert httpx.put(f"{a.url}{path}/settings", headers=ADMIN, json=settings).status_code == 422  # non-empty KB


def test_writers_in_two_processes_take_turns(servers: tuple[KBServer, KBServer]) -> None:
    a, b = servers
    path = _kb(a, "shared-writers")
    errors: list[str] = []

    def write(server: KBServer, prefix: str) -> None:
        with httpx.Client(headers=ADMIN, timeout=60) as http:
            for batch in range(12):
                body = {"clear": False, "deletes": [f"{prefix}{batch - 1}-0"] if batch else [],
                        "upserts": _docs(f"{prefix}{batch}-", 5)["documents"]}
                response = http.post(f"{server.url}{path}/commits", json=body)
                if response.status_code != 200:
                    errors.append(response.text)

    threads = [threading.Thread(target=write, args=(server, prefix)) for server, prefix in ((a, "a"), (b, "b"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    # each commit replaced one document of its writer's previous batch: nothing lost, nothing doubled
    for server in servers:
        assert httpx.get(f"{server.url}{path}/count", headers=ADMIN).json() == {"count": 2 * (12 * 5 - 11)}
    got = httpx.post(f"{b.url}{path}/documents/get", headers=ADMIN,
                     json={"ids": ["a0-0", "a0-1", "b11-0", "a11-4"]}).json()
    assert sorted(d["id"] for d in got) == ["a0-1", "a11-4", "b11-0"]


def test_kb_serve_with_two_workers_shares_everything(tmp_path: Path) -> None:
    embeddings = EmbeddingsServer().start()
    home = tmp_path / "home"
    model = connect_stub_model(home, embeddings)
    serve = KBServe(home, workers=2).start()
    try:
        created = httpx.post(f"{serve.url}/v1/projects/DEFAULT/knowledge-banks", headers=ADMIN,
                             json={"name": "two-workers", "embedding_llm_id": model})
        path = f"{serve.url}/v1/projects/DEFAULT/knowledge-banks/{created.json()['id']}"
        for round_ in range(6):  # fresh connections land on either worker; each answer reflects the last write
            assert httpx.post(f"{path}/documents", headers=ADMIN, json=_docs(f"r{round_}-", 3)).status_code == 200
            for _ in range(4):
                assert httpx.get(f"{path}/count", headers=ADMIN).json() == {"count": 3 * (round_ + 1)}
        settings = httpx.get(f"{path}/settings", headers=ADMIN).json()
        settings["search"] = {"fusion": {"method": "rrf", "rank_constant": 7}}
        assert httpx.put(f"{path}/settings", headers=ADMIN, json=settings).status_code == 200
        for _ in range(6):
            assert httpx.get(f"{path}/settings", headers=ADMIN).json()["search"] == settings["search"]
        assert httpx.post(f"{path}/documents/delete", headers=ADMIN, json={"ids": ["r0-0"]}).json() == {"deleted": 1}
        for _ in range(6):
            assert httpx.post(f"{path}/documents/get", headers=ADMIN, json={"ids": ["r0-0"]}).json() == []
    finally:
        serve.stop()
        embeddings.stop()

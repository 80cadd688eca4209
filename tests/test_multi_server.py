"""Several ``kb serve`` processes over one PostgreSQL catalog and one Elasticsearch node, as an operator runs them.

Two servers with separate ``$KB_HOME``s on loopback ports, one shared ``KB_DATABASE_URL`` (upgraded first with
``kb db upgrade``, as the deployment guide says) and one shared ``KB_FOLDERS_ROOT``. What one server changes
in the catalog (knowledge banks, settings, keys, folders) the other serves; settings and key changes reach it
within a second (the catalog's version, polled every 0.2 s). Elasticsearch knowledge banks keep their commit
point in the same database, each server caching committed generations (LISTEN/NOTIFY): a write acknowledged
through A is searched through B within a second. ``/readyz`` names the catalog when it is down.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.chroma_server import ChromaServer
from tests.support.deployment import Deployment
from tests.support.http_checks import ADMIN
from tests.support.http_checks import ok as _ok
from tests.support.kb_serve import STUB_MODEL, KBServe

INVALIDATION_BUDGET = 1.0  # seconds: the bound for a change to reach every server


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    running = Deployment(tmp_path_factory.mktemp("multi-server"))
    try:
        yield running.start()
    finally:
        running.stop()


def _kbs(server: KBServe, project: str = "DEFAULT") -> str:
    return f"{server.url}/v1/projects/{project}/knowledge-banks"



def _until(check: Any, budget: float) -> float:
    """Seconds until ``check()`` is true, polling; fails past ``budget``."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < budget, f"not seen within {budget} s"
        time.sleep(0.02)
    return time.monotonic() - started


def test_a_knowledge_bank_created_on_a_is_listed_written_searched_and_deleted_on_b(deployment: Deployment) -> None:
    a, b = deployment.servers
    created = _ok(httpx.post(_kbs(a), headers=ADMIN, json={
        "name": "manual", "embedding_llm_id": STUB_MODEL, "vector_store_type": "ELASTICSEARCH",
        "settings": {"connection": "es", "metadata_schema": {"n": "int"}}}), 201)
    assert created["id"] in [k["id"] for k in _ok(httpx.get(_kbs(b), headers=ADMIN))]
    base = f"{_kbs(b)}/{created['id']}"
    texts = ["Solar panels turn sunlight into electricity.", "Honeybees dance to say where flowers are.",
             "The error code E1042 means the disk is full."]
    written = _ok(httpx.post(f"{base}/documents", headers=ADMIN, timeout=60, json={
        "documents": [{"id": f"d{i}", "text": t, "metadata": {"n": i}} for i, t in enumerate(texts)]}))
    assert written["ids"] == ["d0", "d1", "d2"]
    hits = _ok(httpx.post(f"{base}/search", headers=ADMIN, timeout=60,
                          json={"query": "E1042", "k": 1, "search_type": "keyword"}))["results"]
    assert hits[0]["id"] == "d2"
    similar = _ok(httpx.post(f"{base}/search", headers=ADMIN, timeout=60, json={"query": texts[1], "k": 1}))
    assert similar["results"][0]["id"] == "d1"
    _ok(httpx.delete(base, headers=ADMIN, timeout=60), 204)
    assert created["id"] not in [k["id"] for k in _ok(httpx.get(_kbs(a), headers=ADMIN))]
    assert httpx.get(f"{_kbs(a)}/{created['id']}", headers=ADMIN).status_code == 404
    gone = httpx.get(f"{deployment.es.url}/multi-*/_search", params={"q": "E1042"}).json()
    assert gone.get("hits", {}).get("total", {}).get("value", 0) == 0


def test_settings_saved_on_a_are_used_by_b_within_a_second(deployment: Deployment) -> None:
    a, b = deployment.servers
    kb_id = _ok(httpx.post(_kbs(a), headers=ADMIN, json={
        "name": "tuned", "embedding_llm_id": STUB_MODEL, "vector_store_type": "ELASTICSEARCH",
        "settings": {"connection": "es", "search": {"default_k": 1}}}), 201)["id"]
    _ok(httpx.post(f"{_kbs(b)}/{kb_id}/documents", headers=ADMIN, timeout=60,
                   json={"documents": [{"id": f"d{i}", "text": f"note number {i}"} for i in range(5)]}))

    def found_on_b() -> int:
        return len(_ok(httpx.post(f"{_kbs(b)}/{kb_id}/search", headers=ADMIN, json={"query": "note"}))["results"])

    assert found_on_b() == 1  # B has the knowledge bank's settings cached now
    for default_k in (3, 2, 4):
        settings = _ok(httpx.get(f"{_kbs(a)}/{kb_id}/settings", headers=ADMIN))
        settings["search"]["default_k"] = default_k
        _ok(httpx.put(f"{_kbs(a)}/{kb_id}/settings", headers=ADMIN, json=settings))
        seen = _until(lambda k=default_k: found_on_b() == k, INVALIDATION_BUDGET)
        print(f"default_k={default_k} saved on A, used by B after {seen * 1000:.0f} ms")


def test_a_write_acknowledged_through_a_is_searched_through_b_within_a_second(deployment: Deployment) -> None:
    a, b = deployment.servers
    kb_id = _ok(httpx.post(_kbs(a), headers=ADMIN, json={
        "name": "fresh", "embedding_llm_id": STUB_MODEL, "vector_store_type": "ELASTICSEARCH",
        "settings": {"connection": "es"}}), 201)["id"]

    def ids_on_b() -> set[str]:
        found = _ok(httpx.post(f"{_kbs(b)}/{kb_id}/search", headers=ADMIN, timeout=30,
                               json={"query": "report", "k": 50, "search_type": "keyword"}))["results"]
        return {hit["id"] for hit in found}

    assert ids_on_b() == set()  # B has the knowledge bank open and its generation cached
    for round_number in range(3):
        _ok(httpx.post(f"{_kbs(a)}/{kb_id}/documents", headers=ADMIN, timeout=60, json={"documents": [
            {"id": f"r{round_number}", "text": f"report number {round_number}"}]}))
        expected = {f"r{n}" for n in range(round_number + 1)}
        seen = _until(lambda e=expected: ids_on_b() == e, INVALIDATION_BUDGET)
        print(f"write {round_number} acknowledged by A, searched through B after {seen * 1000:.0f} ms")
    _ok(httpx.delete(f"{_kbs(b)}/{kb_id}", headers=ADMIN, timeout=60), 204)


@pytest.mark.parametrize("store", ["ELASTICSEARCH", "CHROMA"])
def test_a_search_makes_no_database_round_trip(deployment: Deployment, store: str,
                                               request: pytest.FixtureRequest) -> None:
    """Settings, key and committed generation all come from B's caches: PostgreSQL's own statement log shows
    only the background polls (the catalog's version, the commit listener's keep-alive) while B searches.
    A Chroma-server knowledge bank's keyword search reads B's own cache of it (stores/chroma/shared.py)."""
    import re

    from sqlalchemy import create_engine, text

    a, b = deployment.servers
    connection = "es" if store == "ELASTICSEARCH" else request.getfixturevalue("chroma_connection")
    kb_id = _ok(httpx.post(_kbs(a), headers=ADMIN, json={
        "name": f"quiet-{store}", "embedding_llm_id": STUB_MODEL, "vector_store_type": store,
        "settings": {"connection": connection}}), 201)["id"]
    search = f"{_kbs(b)}/{kb_id}/search"
    _ok(httpx.post(f"{_kbs(a)}/{kb_id}/documents", headers=ADMIN, timeout=60,
                   json={"documents": [{"id": f"q{i}", "text": f"quiet note {i}"} for i in range(5)]}))
    for _ in range(3):  # B opens the knowledge bank, caches its settings, the key and the generation
        _ok(httpx.post(search, headers=ADMIN, json={"query": "quiet", "k": 5, "search_type": "keyword"}))
    admin = create_engine(deployment.postgres.url("postgres"), isolation_level="AUTOCOMMIT")

    def log_statements(value: str) -> None:
        with admin.connect() as conn:
            conn.execute(text(f"ALTER SYSTEM SET log_statement = '{value}'"))
            conn.execute(text("SELECT pg_reload_conf()"))
        time.sleep(0.5)  # every backend takes the new setting at its next command

    log_statements("all")
    try:
        start = deployment.postgres.log.stat().st_size
        for _ in range(50):
            found = _ok(httpx.post(search, headers=ADMIN, json={"query": "quiet", "k": 5, "search_type": "keyword"}))
            assert len(found["results"]) == 5
        logged = deployment.postgres.log.read_bytes()[start:].decode(errors="replace")
    finally:
        log_statements("none")
        admin.dispose()
    statements = re.findall(r"(?:statement|execute [^:]*): (.*)", logged)
    # the polls, their transactions, and what SQLAlchemy asks a new connection (a pool may replace one meanwhile)
    # and the job runner's claim poll (a queued job looked for once a second)
    background = ("select catalog_state.version", "select 1", "begin", "rollback", ";", "show ", "select pg_catalog",
                  "select current_schema", "listen kb_commit", "select jobs.id")
    per_search = [s for s in statements if not s.strip().lower().startswith(background)]
    assert statements and not per_search, per_search[:10]  # the polls ran (the log works), nothing else did
    _ok(httpx.delete(f"{_kbs(a)}/{kb_id}", headers=ADMIN, timeout=60), 204)


def test_a_key_created_on_a_works_on_b_and_once_revoked_is_refused_within_a_second(deployment: Deployment) -> None:
    a, b = deployment.servers
    created = deployment.kb("keys", "create", "--name", "temp", "--role", "DEFAULT=reader", home=a.home)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    headers = {"Authorization": f"Bearer {key}"}
    assert httpx.get(_kbs(b), headers=headers).status_code == 200  # at once: an id B never saw is read
    assert httpx.post(_kbs(b), headers=headers, json={"name": "x"}).status_code == 403  # its role holds on B
    listed = {k["name"]: k for k in json.loads(deployment.kb("keys", "list", home=a.home).stdout)}
    revoked = deployment.kb("keys", "revoke", listed["temp"]["id"], home=a.home)
    assert revoked.returncode == 0, revoked.stderr
    seen = _until(lambda: httpx.get(_kbs(b), headers=headers).status_code == 401, INVALIDATION_BUDGET)
    print(f"key revoked on A, refused by B after {seen * 1000:.0f} ms")
    assert httpx.get(_kbs(a), headers=headers).status_code == 401


def test_one_disk_stores_are_refused_naming_the_store_types_that_work(deployment: Deployment) -> None:
    a, _ = deployment.servers
    for store, settings in (("FAISS", {}), ("CHROMA", {})):
        refused = httpx.post(_kbs(a), headers=ADMIN, json={"name": f"local-{store}", "embedding_llm_id": STUB_MODEL,
                                                           "vector_store_type": store, "settings": settings})
        assert refused.status_code == 422, refused.text
        message = refused.json()["error"]["message"]
        assert message.endswith("use one of ELASTICSEARCH, AZURE_AI_SEARCH, or CHROMA with a connection to a "
                                "Chroma server"), message
    assert not [k for k in _ok(httpx.get(_kbs(a), headers=ADMIN)) if k["name"].startswith("local-")]


def test_a_managed_folder_made_on_a_is_shared_with_b_under_the_folders_root(deployment: Deployment) -> None:
    a, b = deployment.servers
    folder = _ok(httpx.post(f"{a.url}/v1/projects/DEFAULT/folders", headers=ADMIN, json={"name": "drop"}), 201)
    files = f"/v1/projects/DEFAULT/folders/{folder['id']}/files"
    _ok(httpx.put(f"{a.url}{files}/guide.txt", headers=ADMIN, content=b"shared text"), 201)
    assert _ok(httpx.get(f"{b.url}{files}", headers=ADMIN)) == ["/guide.txt"]
    assert httpx.get(f"{b.url}{files}/guide.txt", headers=ADMIN).content == b"shared text"
    assert (deployment.folders / "DEFAULT" / folder["id"] / "guide.txt").read_bytes() == b"shared text"
    assert not any(a.home.glob("projects/*/folders/*")) and not any(b.home.glob("projects/*/folders/*"))


def test_while_the_catalog_database_is_down_cached_searches_answer_and_the_rest_gets_503(
        deployment: Deployment) -> None:
    a, b = deployment.servers
    ready = _ok(httpx.get(f"{b.url}/readyz"))
    assert ready["status"] == "ready" and ready["dependencies"]["catalog"]["state"] == "up"
    assert ready["dependencies"]["catalog"]["shared"] and "postgres" in ready["dependencies"]["catalog"]["database"]
    kb_id = _ok(httpx.post(_kbs(a), headers=ADMIN, json={
        "name": "steady", "embedding_llm_id": STUB_MODEL, "vector_store_type": "ELASTICSEARCH",
        "settings": {"connection": "es"}}), 201)["id"]
    search = f"{_kbs(b)}/{kb_id}/search"
    _ok(httpx.post(f"{_kbs(b)}/{kb_id}/documents", headers=ADMIN, timeout=60,
                   json={"documents": [{"id": "s1", "text": "steady state under an outage"}]}))
    assert _ok(httpx.post(search, headers=ADMIN, json={"query": "outage", "k": 1}))["results"][0]["id"] == "s1"
    deployment.postgres.shut_down()
    try:
        for _ in range(5):  # B has this knowledge bank's settings and the key cached: no database needed
            answer = httpx.post(search, headers=ADMIN, timeout=30, json={"query": "outage", "k": 1})
            assert answer.status_code == 200 and answer.json()["results"][0]["id"] == "s1", answer.text
        listed = httpx.get(_kbs(b), headers=ADMIN, timeout=30)  # needs the catalog
        assert listed.status_code == 503, listed.text
        assert listed.headers["Retry-After"] == "2" and listed.json()["error"]["code"] == "catalog_unavailable"
        unknown_key = httpx.get(_kbs(a), headers={"Authorization": "Bearer kb_notcached_" + "x" * 20}, timeout=30)
        assert unknown_key.status_code == 503, unknown_key.text
        for server in (a, b):  # out of rotation, saying why
            not_ready = httpx.get(f"{server.url}/readyz", timeout=30)
            assert not_ready.status_code == 503 and not_ready.headers["Retry-After"] == "2", not_ready.text
            body = not_ready.json()
            assert body["status"] == "unavailable" and body["down"] == ["catalog"], body
            assert body["dependencies"]["catalog"]["state"] == "down" and body["dependencies"]["catalog"]["error"]
            assert body["dependencies"]["embedding_model"] == {"state": "loaded"}
    finally:
        deployment.postgres.start_again()
    back = _until(lambda: httpx.get(f"{a.url}/readyz", timeout=30).status_code == 200, 20.0)
    print(f"catalog back: A ready again after {back * 1000:.0f} ms")
    recovered = _until(lambda: httpx.get(_kbs(b), headers=ADMIN, timeout=30).status_code == 200, 20.0)
    print(f"catalog back: B answers again after {recovered * 1000:.0f} ms")
    assert kb_id in [k["id"] for k in _ok(httpx.get(_kbs(a), headers=ADMIN, timeout=30))]
    _ok(httpx.delete(f"{_kbs(a)}/{kb_id}", headers=ADMIN, timeout=60), 204)  # writes to the catalog work again


# --- a knowledge bank on a Chroma server (stores/chroma/shared.py) ---------------------------------------


@pytest.fixture(scope="module")
def chroma_live(deployment: Deployment, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChromaServer]:
    """A real ``chroma run`` server, saved in the shared catalog as the connection ``chroma-live``."""
    from kb.catalog import Catalog

    server = ChromaServer(tmp_path_factory.mktemp("multi-chroma") / "data").start()
    catalog = Catalog(deployment.url)
    catalog.save_connection("chroma-live", "chroma", {"url": server.url})
    catalog.close()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def chroma_connection(chroma_live: ChromaServer) -> str:
    return "chroma-live"


def _scifact(count: int) -> list[dict[str, Any]]:
    """The first ``count`` abstracts of SciFact (read in place), as documents with metadata to filter on."""
    documents = []
    with open("/work/shared/datasets/scifact/corpus.jsonl", encoding="utf-8") as corpus:
        for n, line in zip(range(count), corpus, strict=False):
            row = json.loads(line)
            documents.append({"id": f"sf{row['_id']}", "text": f"{row['title']} {row['text']}"[:2000],
                              "metadata": {"n": n, "title": row["title"], "long": len(row["text"]) > 1200}})
    return documents


def test_a_chroma_server_knowledge_bank_is_served_alike_by_both_servers(deployment: Deployment,
                                                                        chroma_connection: str) -> None:
    a, b = deployment.servers
    kb_id = _ok(httpx.post(_kbs(a), headers=ADMIN, json={
        "name": "chroma-shared", "embedding_llm_id": STUB_MODEL, "vector_store_type": "CHROMA",
        "settings": {"connection": chroma_connection}}), 201)["id"]
    documents = _scifact(60)
    _ok(httpx.post(f"{_kbs(a)}/{kb_id}/documents", headers=ADMIN, timeout=120, json={"documents": documents}))
    searches = [
        {"query": documents[7]["text"], "k": 5},  # the stub model is not semantic: a document's own text
        {"query": "anisotropy", "k": 5, "search_type": "keyword"},
        {"query": "T cell response to vaccine", "k": 5, "search_type": "hybrid"},
        {"query": "cancer mortality", "k": 5, "filter": {"long": True}},
        {"query": "protein", "k": 5, "search_type": "keyword", "filter": {"n": {"$lt": 30}}},
        {"query": "gene expression", "k": 4, "search_type": "hybrid", "filter": {"n": {"$gte": 10}}},
    ]

    def answers(server: KBServe) -> list[list[tuple[str, float]]]:
        found = []
        for body in searches:
            hits = _ok(httpx.post(f"{_kbs(server)}/{kb_id}/search", headers=ADMIN, timeout=60, json=body))["results"]
            found.append([(hit["id"], round(hit["score"], 4)) for hit in hits])
        return found

    on_a = answers(a)
    assert all(on_a) and answers(b) == on_a
    assert on_a[0][0][0] == documents[7]["id"]
    assert "sf4983" in {hit for hit, _ in on_a[1]}  # the abstract that says "anisotropy"
    assert {hit for hit, _ in on_a[3]} <= {d["id"] for d in documents if d["metadata"]["long"]}
    count = _ok(httpx.get(f"{_kbs(b)}/{kb_id}/count", headers=ADMIN,
                          params={"filter": json.dumps({"long": True})}))["count"]
    assert count == sum(d["metadata"]["long"] for d in documents)

    def keyword_ids(server: KBServe, query: str) -> set[str]:
        found = _ok(httpx.post(f"{_kbs(server)}/{kb_id}/search", headers=ADMIN, timeout=30,
                               json={"query": query, "k": 10, "search_type": "keyword"}))["results"]
        return {hit["id"] for hit in found}

    for round_number in range(3):  # writes through B, seen through A within a second
        _ok(httpx.post(f"{_kbs(b)}/{kb_id}/documents", headers=ADMIN, timeout=60, json={"documents": [
            {"id": f"code{round_number}", "text": f"fault code ZX{round_number}Q7 in the assay log"}]}))
        seen = _until(lambda r=round_number: keyword_ids(a, f"ZX{r}Q7") == {f"code{r}"}, INVALIDATION_BUDGET)
        print(f"Chroma write {round_number} acknowledged by B, searched through A after {seen * 1000:.0f} ms")
    _ok(httpx.post(f"{_kbs(a)}/{kb_id}/documents/delete", headers=ADMIN, timeout=60, json={"ids": ["code0"]}))
    _until(lambda: keyword_ids(b, "ZX0Q7") == set(), INVALIDATION_BUDGET)
    assert answers(a) == answers(b)
    _ok(httpx.delete(f"{_kbs(b)}/{kb_id}", headers=ADMIN, timeout=60), 204)
    assert httpx.get(f"{_kbs(a)}/{kb_id}", headers=ADMIN).status_code == 404


def _chroma_kb(deployment: Deployment, connection: str, name: str) -> str:
    a, _ = deployment.servers
    return _ok(httpx.post(_kbs(a), headers=ADMIN, json={
        "name": name, "embedding_llm_id": STUB_MODEL, "vector_store_type": "CHROMA",
        "settings": {"connection": connection}}), 201)["id"]


def _committed_generation(deployment: Deployment, kb_id: str) -> int:
    from sqlalchemy import create_engine, select

    from stores.commit_point.schema import kb_commit

    engine = create_engine(deployment.url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(select(kb_commit.c.generation).where(kb_commit.c.kb == kb_id)).scalar_one())
    finally:
        engine.dispose()


def test_chroma_writers_through_both_servers_at_once_never_both_commit(deployment: Deployment,
                                                                        chroma_connection: str) -> None:
    import threading

    a, b = deployment.servers
    kb_id = _chroma_kb(deployment, chroma_connection, "chroma-writers")
    acked: list[str] = []
    failures: list[str] = []

    def write(server: KBServe, name: str) -> None:
        for n in range(5):
            doc_id = f"{name}{n}"
            response = httpx.post(f"{_kbs(server)}/{kb_id}/documents", headers=ADMIN, timeout=120, json={
                "documents": [{"id": doc_id, "text": f"entry {doc_id} written through server {name}"}]})
            (acked if response.status_code == 200 else failures).append(doc_id if response.status_code == 200
                                                                        else response.text)

    threads = [threading.Thread(target=write, args=(server, name)) for server, name in ((a, "a"), (b, "b"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert not failures and len(acked) == 10, failures  # the second writer waited for the lease, not refused
    assert _committed_generation(deployment, kb_id) == 10  # ten commits, each its own generation
    for server in (a, b):
        found = _ok(httpx.post(f"{_kbs(server)}/{kb_id}/search", headers=ADMIN, timeout=60,
                               json={"query": "entry written through server", "k": 20, "search_type": "keyword"}))
        assert sorted(hit["id"] for hit in found["results"]) == sorted(acked)
    _ok(httpx.delete(f"{_kbs(a)}/{kb_id}", headers=ADMIN, timeout=60), 204)


def test_a_chroma_writer_killed_mid_write_is_rolled_back_by_the_next_writer(deployment: Deployment,
                                                                            chroma_live: ChromaServer,
                                                                            tmp_path: Path) -> None:
    """A third server dies by SIGKILL once its documents are in Chroma, before its commit; B's next write waits
    for the dead writer's lease to lapse (5 s here, KB_WRITER_LEASE_SECONDS), removes what it left in Chroma, and
    commits."""
    import chromadb

    a, b = deployment.servers
    kb_id = _chroma_kb(deployment, "chroma-live", "chroma-killed")
    _ok(httpx.post(f"{_kbs(a)}/{kb_id}/documents", headers=ADMIN, timeout=60,
                   json={"documents": [{"id": f"kept{i}", "text": f"kept record {i}"} for i in range(3)]}))
    doomed = KBServe(tmp_path / "home-c", workers=1,
                     env={**deployment.env(), "KB_FAULT_POINT": "store_records_written",
                          "KB_WRITER_LEASE_SECONDS": "5"}).start()
    try:
        with pytest.raises(httpx.TransportError):  # the server died answering
            httpx.post(f"{_kbs(doomed)}/{kb_id}/documents", headers=ADMIN, timeout=60,
                       json={"documents": [{"id": f"lost{i}", "text": f"lost record {i}"} for i in range(4)]})
    finally:
        doomed.stop()
    started = time.monotonic()
    _ok(httpx.post(f"{_kbs(b)}/{kb_id}/documents", headers=ADMIN, timeout=120,
                   json={"documents": [{"id": "after", "text": "record after the crash"}]}))
    waited = time.monotonic() - started
    print(f"B's write after the SIGKILLed writer took {waited:.1f} s (the dead writer's lease lapses in 5 s)")
    assert waited < 30  # the dead server's own lease length, not the default
    expected = ["after", "kept0", "kept1", "kept2"]
    for server in (a, b):
        found = _ok(httpx.post(f"{_kbs(server)}/{kb_id}/search", headers=ADMIN, timeout=60,
                               json={"query": "record", "k": 20, "search_type": "keyword"}))
        assert sorted(hit["id"] for hit in found["results"]) == expected
    client = chromadb.HttpClient(host="127.0.0.1", port=chroma_live.port)
    physical = sum(c.count() for c in client.list_collections() if kb_id.lower() in c.name.lower())
    assert physical == len(expected)  # the dead writer's four records were removed from Chroma
    _ok(httpx.delete(f"{_kbs(a)}/{kb_id}", headers=ADMIN, timeout=60), 204)

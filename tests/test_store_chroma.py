"""The Chroma driver, embedded and against a real `chroma run` server: conformance, filters, generations,
faults, several processes, and the LangChain ``Chroma`` a Chroma knowledge bank hands out."""

from __future__ import annotations

import itertools
import random
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import chromadb
import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from langchain_chroma import Chroma
from langchain_core.documents import Document
from langchain_core.vectorstores import VectorStore
from langchain_tests.integration_tests import VectorStoreIntegrationTests

import kb
from kb_base.filters import And, Comparison, Not, Or, matches, parse_filter
from stores.base import Record, StoreContext
from stores.chroma.codec import Inexpressible, to_where
from stores.chroma.store import ChromaStore
from tests.conformance.store_suite import _FILTERS, StoreConformanceSuite, StoreFactory, records, unit
from tests.conftest import FAKE_MODEL_ID
from tests.support.chroma_server import ChromaServer
from tests.support.openai_embeddings_server import free_port

ROOT = Path(__file__).resolve().parent.parent
_ids = itertools.count()


def physical_count(store: ChromaStore) -> int:
    collection = store.live_collection()
    return 0 if collection is None else int(collection.count())


# --- the shared conformance suite, in both modes (no filter is refused: see test_inexpressible_filters) ---


class TestChromaEmbeddedConformance(StoreConformanceSuite):
    @pytest.fixture
    def store_factory(self, tmp_path: Path) -> StoreFactory:
        return lambda: ChromaStore(StoreContext("embedded", tmp_path))


class TestChromaServerConformance(StoreConformanceSuite):
    @pytest.fixture
    def store_factory(self, tmp_path: Path, chroma_server: ChromaServer) -> StoreFactory:
        kb_id = f"srv{next(_ids)}"
        return lambda: ChromaStore(StoreContext(kb_id, tmp_path, connection={"url": chroma_server.url}))


# --- filters -----------------------------------------------------------------------------------


def test_filter_translation() -> None:
    assert to_where(parse_filter({"$not": {"$and": [{"a": 1}, {"b": {"$in": [1, "x", True]}}]}})) == {
        "$or": [{"a": {"$ne": 1.0}}, {"$and": [{"b": {"$nin": [1.0]}}, {"b": {"$nin": ["x"]}},
                                               {"b": {"$nin": [True]}}]}]}
    assert to_where(parse_filter({"#tag": "x"})) == {"__kb_k:#tag": {"$eq": "x"}}
    for raw, reason in [({"d": {"$gte": "2024-01-01"}}, "order strings"), ({"$not": {"a": {"$gt": 1}}}, "negate"),
                        ({"a": 2**60 + 1}, "exactly")]:
        with pytest.raises(Inexpressible, match=reason):
            to_where(parse_filter(raw))


_POOL: list[Any] = [-3, -1, 0, 1, 2, 3, -1.5, 0.0, 2.5, "x", "y", "z", True, False, ["x"], {"x": 1}, None]


@pytest.fixture(scope="module")
def filter_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[ChromaStore, list[dict[str, Any]]]:
    rng = random.Random(99)
    metadata = [{k: rng.choice(_POOL) for k in ("a", "b", "c") if rng.random() < 0.7} for _ in range(40)]
    store = ChromaStore(StoreContext("filters", tmp_path_factory.mktemp("filters")))
    store.upsert([Record(f"m{i}", f"t{i}", m, unit(i)) for i, m in enumerate(metadata)])
    return store, metadata


def cannot_express_in_where(flt: Any, negated: bool = False) -> bool:
    """Chroma's where cannot order strings, nor negate an ordering (it would lose missing keys)."""
    if isinstance(flt, Not):
        return cannot_express_in_where(flt.clause, not negated)
    if isinstance(flt, And | Or):
        return any(cannot_express_in_where(c, negated) for c in flt.clauses)
    assert isinstance(flt, Comparison)
    return flt.op in ("$gt", "$gte", "$lt", "$lte") and (negated or isinstance(flt.value, str))


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(raw=_FILTERS)
def test_similarity_filters_match_reference_semantics(filter_store: tuple[ChromaStore, list[dict[str, Any]]],
                                                      raw: dict[str, Any]) -> None:
    """Both ways a filtered similarity runs (ids from the metadata columns; Chroma's where) agree with the
    reference; lists, dicts and null act as a missing key; where refuses exactly what it cannot express."""
    store, metadata = filter_store
    flt = parse_filter(raw)
    expected = {f"m{i}" for i, m in enumerate(metadata) if matches(flt, m)}
    assert {h.record.id for h in store.similarity(unit(0), 40, flt)} == expected, raw
    store.id_query_limit = 0  # every filter through Chroma's where
    try:
        assert {h.record.id for h in store.similarity(unit(0), 40, flt)} == expected, raw
        assert not cannot_express_in_where(flt) or not expected, f"where answered what it cannot express: {raw}"
    except kb.FilterError:
        assert cannot_express_in_where(flt), f"refused a filter where can express: {raw}"
    finally:
        del store.id_query_limit


def test_inexpressible_filters_are_answered_exactly(tmp_path: Path) -> None:
    dates = ["2023-12-31", "2024-01-01", "2024-02-15", None, "2024-06-30", 20240701]
    data = [Record(f"d{i}", f"report number {i}", {"date": d, "n": i} if d is not None else {"n": i}, unit(i))
            for i, d in enumerate(dates)]
    store = ChromaStore(StoreContext("dates", tmp_path))
    store.upsert(data)
    for raw in [{"date": {"$gte": "2024-01-01"}}, {"$not": {"n": {"$gt": 2}}},
                {"$or": [{"date": {"$lt": "2024-01-01"}}, {"n": 5}]}]:
        flt = parse_filter(raw)
        expected = {r.id for r in data if matches(flt, r.metadata)}
        assert {h.record.id for h in store.similarity(unit(0), 10, flt)} == expected, raw
        assert {h.record.id for h in store.keyword("report", 10, flt)} == expected, raw
        assert store.count(flt) == len(expected)
    assert [h.record.id for h in store.similarity(unit(4), 1, parse_filter({"date": {"$gt": "2024-03"}}))] == ["d4"]
    store.id_query_limit = 1  # more matches than a query may name: where if it can, else a clear refusal
    assert [h.record.id for h in store.similarity(unit(1), 6, parse_filter({"n": {"$in": [1, 3]}}))] == ["d1", "d3"]
    with pytest.raises(kb.FilterError, match="cannot order strings.*matches 3 records.*narrow it"):
        store.similarity(unit(0), 10, parse_filter({"date": {"$gte": "2024-01-01"}}))


def test_metadata_chroma_cannot_hold_round_trips_or_is_refused(tmp_path: Path) -> None:
    store = ChromaStore(StoreContext("meta", tmp_path))
    odd = {"#hash": 1, "$dollar": "d", "__kb_id": "mine", "": "empty", "chroma:document": "c", "tags": ["a", "b"],
           "nested": {"x": [1, None]}, "nothing": None, "big": 2**53, "neg": -(2**53)}
    store.upsert([Record("odd", "text", odd, unit(1)), Record("plain", "text", {"tags": "a"}, unit(2))])
    assert store.get(["odd"])[0].metadata == odd
    assert {h.record.id for h in store.similarity(unit(1), 5, parse_filter({"#hash": 1}))} == {"odd"}
    assert {h.record.id for h in store.similarity(unit(1), 5, parse_filter({"tags": "a"}))} == {"plain"}
    assert {h.record.id for h in store.similarity(unit(1), 5, parse_filter({"tags": {"$ne": "a"}}))} == {"odd"}
    with pytest.raises(kb.InvalidInputError, match=r"'huge'.*2\^53"):
        store.upsert([Record("x", "t", {"huge": 2**53 + 1}, unit(3))])
    assert store.count() == 2


# --- generations ----------------------------------------------------------------------------------


def test_readers_skip_pending_writes_that_crowd_the_top(tmp_path: Path) -> None:
    store = ChromaStore(StoreContext("crowd", tmp_path))
    data = records(20)
    store.upsert(data)
    expected = [r.id for r in sorted(data, key=lambda r: -float(np.dot(r.vector, unit(5))))[:5]]
    with store.begin() as tx:
        rng = np.random.default_rng(0)
        tx.upsert([Record(f"new-{i}", "t", {}, unit(5) + 0.01 * rng.normal(size=8).astype(np.float32))
                   for i in range(30)])  # 30 near-copies of the query, ranked above every committed record
        tx.upsert([Record("doc-5", "first", {}, unit(400))])  # doc-5 retired in the writer's view only
        tx.upsert([Record("doc-5", "replaced", {}, unit(500))])  # and replaced again in the same transaction
        assert [h.record.id for h in store.similarity(unit(5), 5)] == expected
        assert store.get(["doc-5"])[0].text == "text 5 v1"
        assert tx.similarity(unit(5), 1)[0].record.id.startswith("new-") and tx.get(["doc-5"])[0].text == "replaced"
    assert store.similarity(unit(5), 1)[0].record.id.startswith("new-") and store.count() == 50
    assert store.similarity(unit(500), 1)[0].record.text == "replaced"
    assert physical_count(store) == 51  # the first doc-5 stays one commit for readers that raced the commit


def test_replaced_records_and_old_collections_are_deleted_one_commit_later(tmp_path: Path,
                                                                            chroma_server: ChromaServer) -> None:
    store = ChromaStore(StoreContext("vacuum", tmp_path, connection={"url": chroma_server.url}))
    for version in range(3):
        store.upsert(records(5, tag=f"v{version}"))
    assert store.count() == 5 and physical_count(store) == 10  # 5 live + 5 kept for readers of the previous commit
    store.upsert(records(1, start=100))
    assert physical_count(store) == 6
    first = store.live_collection().name
    store.clear()
    store.upsert(records(2, start=200))  # a commit later, the collection cleared away is gone
    names = {c.name for c in chromadb.HttpClient(host="127.0.0.1", port=chroma_server.port).list_collections()}
    assert first not in names and store.live_collection().name in names


def test_clear_and_a_failed_first_write_allow_a_new_dimension(tmp_path: Path) -> None:
    store = ChromaStore(StoreContext("dims", tmp_path))
    with pytest.raises(RuntimeError):
        with store.begin() as tx:
            tx.upsert([Record("a", "t", {}, np.ones(4, dtype=np.float32))])
            raise RuntimeError("abandon the first write")
    store.upsert(records(3))  # 8 dimensions, into a collection that never saw 4
    store.clear()  # e.g. before changing the knowledge bank's embedding model
    store.upsert([Record("wide", "t", {}, np.ones(16, dtype=np.float32))])
    assert store.dimension == 16 and store.similarity(np.ones(16, dtype=np.float32), 1)[0].record.id == "wide"


def test_crashed_writer_leaves_nothing_visible(tmp_path: Path) -> None:
    store = ChromaStore(StoreContext("crash", tmp_path))
    store.upsert(records(3))
    tx = store.begin()
    tx.upsert(records(2, start=10))
    tx.upsert([Record("doc-1", "replaced", {}, unit(1))])
    tx.delete(["doc-0"])
    tx.conn.close()  # the process dies: no commit, no rollback; the kernel drops the lock
    tx.lock.close()
    reopened = ChromaStore(StoreContext("crash", tmp_path))
    assert sorted(reopened.ids_where(None)) == ["doc-0", "doc-1", "doc-2"]
    assert reopened.get(["doc-1"])[0].text == "text 1 v1"
    assert {h.record.id for h in reopened.similarity(unit(10), 3)} == {"doc-0", "doc-1", "doc-2"}
    with reopened.begin() as again:  # removes the dead writer's records and marks first
        again.upsert(records(1, start=20))
    assert sorted(reopened.ids_where(None)) == ["doc-0", "doc-1", "doc-2", "doc-20"]
    assert physical_count(reopened) == 4 and reopened.get(["doc-1"])[0].text == "text 1 v1"


def test_a_crashed_clear_leaves_no_collection_behind(tmp_path: Path, chroma_server: ChromaServer) -> None:
    store = ChromaStore(StoreContext("crashclear", tmp_path, connection={"url": chroma_server.url}))
    store.upsert(records(3))
    tx = store.begin()
    tx.clear()
    tx.upsert(records(1, start=50))
    pending = tx.collection
    tx.conn.close()
    tx.lock.close()
    client = chromadb.HttpClient(host="127.0.0.1", port=chroma_server.port)
    assert pending in {c.name for c in client.list_collections()}
    store.upsert(records(1, start=60))
    assert pending not in {c.name for c in client.list_collections()}
    assert sorted(store.ids_where(None)) == ["doc-0", "doc-1", "doc-2", "doc-60"]


_SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {root!r})
    from pathlib import Path
    from stores.base import StoreContext
    from stores.chroma.store import ChromaStore
    from tests.conformance.store_suite import records, unit
    store = ChromaStore(StoreContext("shared", Path({folder!r})))
    {action}
""")


def _in_another_process(folder: Path, action: str) -> str:
    script = _SCRIPT.format(root=str(ROOT), folder=str(folder), action=action)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                          timeout=120).stdout.strip()


def test_embedded_store_shared_by_processes(tmp_path: Path) -> None:
    """A long-lived embedded client does not see another process's vectors by itself; kb reopens it."""
    store = ChromaStore(StoreContext("shared", tmp_path))
    store.upsert(records(3))
    assert store.similarity(unit(1), 1)[0].record.id == "doc-1"  # this process's client is loaded now
    _in_another_process(tmp_path, "store.upsert(records(3, start=10)); store.delete(['doc-0'])")
    assert store.similarity(unit(11), 1)[0].record.id == "doc-11"
    assert store.get(["doc-0"]) == [] and store.count() == 5
    store.upsert(records(1, start=20))  # written on top of the other process's commit, not over it
    found = _in_another_process(tmp_path, "print(store.count(), *(store.similarity(unit(i), 1)[0].record.id "
                                          "for i in (1, 11, 20)))")
    assert found.split() == ["6", "doc-1", "doc-11", "doc-20"]


# --- a Chroma server that fails ------------------------------------------------------------------


def test_server_killed_mid_write_is_a_clear_error_and_a_retry_completes(tmp_path: Path) -> None:
    server = ChromaServer(tmp_path / "data").start()
    store = ChromaStore(StoreContext("flaky", tmp_path, connection={"url": server.url}))
    try:
        store.upsert(records(5))
        write = [*records(2, tag="v2"), *records(600, start=5)]  # replaces doc-0, doc-1; adds two batches
        with pytest.raises(kb.StoreUnavailableError, match="127.0.0.1"):
            with store.begin() as tx:
                tx.upsert(write[:300])
                server.kill()
                tx.upsert(write[300:])
        with pytest.raises(kb.StoreUnavailableError, match=server.url):
            store.similarity(unit(1), 3)
        server.start()  # same port, same data
        assert store.count() == 5 and store.get(["doc-0"])[0].metadata["tag"] == "v1"
        assert store.similarity(unit(7), 1)[0].record.id != "doc-7"
        for _ in range(2):  # the retry, and a retry of the retry: no duplicates either way
            with store.begin() as tx:
                tx.upsert(write)
        assert store.count() == 605 and store.get(["doc-0"])[0].metadata["tag"] == "v2"
        assert store.similarity(unit(7), 1)[0].record.id == "doc-7"
        store.upsert(records(1, start=1000))  # vacuums what the retries replaced
        assert physical_count(store) == 606
    finally:
        server.stop()


def test_frozen_server_times_out_with_a_clear_error(tmp_path: Path, chroma_server: ChromaServer) -> None:
    store = ChromaStore(StoreContext("frozen", tmp_path, connection={"url": chroma_server.url, "timeout": 1}))
    store.upsert(records(3))
    chroma_server.pause()
    try:
        started = time.monotonic()
        with pytest.raises(kb.StoreUnavailableError, match="Timeout"):
            store.similarity(unit(1), 1)
        assert time.monotonic() - started < 10
    finally:
        chroma_server.resume()
    assert store.similarity(unit(1), 1)[0].record.id == "doc-1"


def test_down_server_and_deleted_collection_are_clear_errors(tmp_path: Path, chroma_server: ChromaServer) -> None:
    nobody = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(kb.StoreUnavailableError, match=nobody):
        ChromaStore(StoreContext("down", tmp_path / "a", connection={"url": nobody})).upsert(records(1))
    store = ChromaStore(StoreContext("gone", tmp_path / "b", connection={"url": chroma_server.url}))
    store.upsert(records(2))
    chromadb.HttpClient(host="127.0.0.1", port=chroma_server.port).delete_collection(store.live_collection().name)
    with pytest.raises(kb.StoreUnavailableError, match="deleted outside kb"):
        store.similarity(unit(1), 1)
    with pytest.raises(kb.StoreUnavailableError, match="no_such_db.*tenant and database"):
        ChromaStore(StoreContext("nodb", tmp_path / "c", connection={"url": chroma_server.url,
                                                                     "database": "no_such_db"})).upsert(records(1))
    with pytest.raises(kb.InvalidInputError, match="timeout"):
        ChromaStore(StoreContext("bad", tmp_path / "d", connection={"url": chroma_server.url, "timeout": "soon"}))


def test_knowledge_banks_with_the_same_id_on_one_server_stay_apart(tmp_path: Path,
                                                                    chroma_server: ChromaServer) -> None:
    first = ChromaStore(StoreContext("same", tmp_path / "one", connection={"url": chroma_server.url}))
    second = ChromaStore(StoreContext("same", tmp_path / "two", connection={"url": chroma_server.url}))
    first.upsert(records(3))
    second.upsert(records(2, start=10))
    second.clear()
    assert sorted(first.ids_where(None)) == ["doc-0", "doc-1", "doc-2"]
    assert first.similarity(unit(1), 1)[0].record.id == "doc-1" and second.count() == 0


def test_store_of_the_first_format_is_migrated(tmp_path: Path) -> None:
    store = ChromaStore(StoreContext("Legacy", tmp_path))
    store.upsert(records(4))
    # Rewind it to the first format: metadata only in Chroma, one collection named after the KB id.
    store.live_collection().modify(name="kb-legacy")
    store.close()
    db = sqlite3.connect(tmp_path / "chroma-store" / "chroma-meta.sqlite")
    db.execute("ALTER TABLE records DROP COLUMN metadata")
    db.execute("DELETE FROM meta WHERE key IN ('collection', 'collection_base', 'drops', 'dirty')")
    db.commit()
    db.close()
    reopened = ChromaStore(StoreContext("Legacy", tmp_path))
    assert reopened.count(parse_filter({"even": True})) == 2
    assert reopened.similarity(unit(3), 1)[0].record.metadata == {"i": 3, "tag": "v1", "even": False}
    reopened.upsert(records(1, start=9))
    assert reopened.count() == 5 and reopened.live_collection().name == "kb-legacy"


# --- the knowledge bank's LangChain Chroma ----------------------------------------------------------


class TestChromaKnowledgeBankStandard(VectorStoreIntegrationTests):
    """langchain-tests against the vector store a Chroma knowledge bank hands out (a langchain_chroma.Chroma)."""

    @pytest.fixture
    def vectorstore(self, client: kb.EmbeddedClient) -> Iterator[VectorStore]:
        handle = client.get_default_project().create_knowledge_bank(
            f"chroma-{next(_ids)}", embedding_llm_id=FAKE_MODEL_ID, vector_store_type="CHROMA")
        core = handle.as_core_knowledge_bank()
        with core.get_writer() as writer:
            store = writer.as_langchain_vectorstore()
            assert isinstance(store, Chroma)
            yield store


@pytest.fixture(scope="module")
def rerank_url() -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "uvicorn", "tests.support.rerank_server:app", "--host",
                                "127.0.0.1", "--port", str(port), "--log-level", "warning"], cwd=ROOT)
    url = f"http://127.0.0.1:{port}/v1/rerank"
    try:
        for _ in range(100):
            try:
                httpx.post(url, json={"query": "a", "documents": ["a"]}, timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(10)


@pytest.mark.parametrize("mode", ["embedded", "server"])
def test_chroma_knowledge_bank_through_langchain(client: kb.EmbeddedClient, chroma_server: ChromaServer,
                                                 rerank_url: str, mode: str) -> None:
    settings: dict[str, Any] = {"search": {"reranker": {"type": "http", "url": rerank_url, "model": "overlap"}}}
    if mode == "server":
        client.create_connection("chroma", "chroma", {"url": chroma_server.url})
        settings["connection"] = "chroma"
    core = client.get_default_project().create_knowledge_bank(
        f"chroma-kb-{mode}", embedding_llm_id=FAKE_MODEL_ID, vector_store_type="CHROMA",
        settings=settings).as_core_knowledge_bank()
    store = core.as_langchain_vectorstore()
    assert isinstance(store, Chroma)
    texts = ["espresso coffee crema", "coffee beans roasted", "marathon runners train", "solar panels"]
    store.add_texts(texts, metadatas=[{"n": i, "date": f"2024-0{i + 1}-01"} for i in range(4)],
                    ids=[f"t{i}" for i in range(4)])
    assert store._collection.name == core.driver.live_collection().name and store._collection.count() == 4
    exact = store.similarity_search_by_vector(core.langchain_embeddings().embed_query(texts[2]), k=1)
    assert exact[0].id == "t2"
    for search_type, kwargs in [("similarity", {}), ("mmr", {"fetch_k": 4}), ("keyword", {}), ("hybrid", {}),
                                ("semantic_hybrid", {}), ("similarity_score_threshold", {"score_threshold": -1.0})]:
        docs = core.as_langchain_retriever(search_type=search_type, search_kwargs={"k": 2, **kwargs}).invoke("coffee")
        assert len(docs) == 2 and all(isinstance(d, Document) for d in docs), search_type
    semantic = core.as_langchain_retriever(search_type="semantic_hybrid", search_kwargs={"k": 2}).invoke("coffee beans")
    assert [d.id for d in semantic] == ["t1", "t0"]  # the reranker's order: term overlap
    threshold = core.as_langchain_retriever(search_type="similarity_score_threshold",
                                            search_kwargs={"k": 4, "score_threshold": 1.1}).invoke("coffee")
    assert threshold == []  # cosine never exceeds 1
    assert {d.id for d in store.keyword_search("coffee", k=5)} == {"t0", "t1"}
    assert [d.id for d in store.keyword_search("coffee", k=5, filter={"date": {"$gte": "2024-02-01"}})] == ["t1"]
    got = store.get(where={"n": {"$gte": 2}}, include=["metadatas"])
    assert got["ids"] == ["t2", "t3"] and got["metadatas"][0] == {"n": 2, "date": "2024-03-01"}
    store.update_documents(["t3"], [Document(page_content="solar coffee", metadata={"n": 3})])
    assert {d.id for d in store.keyword_search("coffee", k=5)} == {"t0", "t1", "t3"}
    with pytest.raises(kb.UnsupportedSearchError, match="deleted with the knowledge bank"):
        store.delete_collection()
    assert core.count() == 4

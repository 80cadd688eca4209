"""The Chroma driver, embedded and against a real `chroma run` server: conformance, LangChain, faults."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_chroma import Chroma
from langchain_core.vectorstores import VectorStore
from langchain_tests.integration_tests import VectorStoreIntegrationTests

import kb
from kb.filters import And, Comparison, Not, Or
from stores.base import StoreContext
from stores.chroma_store import ChromaStore, to_where
from tests.conformance.store_suite import StoreConformanceSuite, StoreFactory, records, unit
from tests.conftest import FAKE_MODEL_ID
from tests.support.chroma_server import ChromaServer

_ids = itertools.count()


def chroma_may_refuse(flt: Any, negated: bool = False) -> bool:
    """Chroma cannot order strings, nor negate an ordering exactly (missing keys)."""
    if isinstance(flt, Not):
        return chroma_may_refuse(flt.clause, not negated)
    if isinstance(flt, And | Or):
        return any(chroma_may_refuse(c, negated) for c in flt.clauses)
    assert isinstance(flt, Comparison)
    ordering = flt.op in ("$gt", "$gte", "$lt", "$lte")
    return ordering and (negated or isinstance(flt.value, str))


@pytest.fixture(scope="module")
def chroma_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChromaServer]:
    server = ChromaServer(tmp_path_factory.mktemp("chroma-server") / "data").start()
    yield server
    server.stop()


class TestChromaEmbeddedConformance(StoreConformanceSuite):
    def may_refuse(self, flt: Any) -> bool:
        return chroma_may_refuse(flt)

    @pytest.fixture
    def store_factory(self, tmp_path: Path) -> StoreFactory:
        return lambda: ChromaStore(StoreContext("embedded", tmp_path))


class TestChromaServerConformance(StoreConformanceSuite):
    def may_refuse(self, flt: Any) -> bool:
        return chroma_may_refuse(flt)

    @pytest.fixture
    def store_factory(self, tmp_path: Path, chroma_server: ChromaServer) -> StoreFactory:
        kb_id = f"srv{next(_ids)}"
        return lambda: ChromaStore(StoreContext(kb_id, tmp_path, connection={"url": chroma_server.url}))


def test_filter_translation() -> None:
    from kb.filters import parse_filter

    assert to_where(parse_filter({"$not": {"$and": [{"a": 1}, {"b": {"$in": [1, "x"]}}]}})) == {
        "$or": [{"a": {"$ne": 1}}, {"$and": [{"b": {"$nin": [1]}}, {"b": {"$nin": ["x"]}}]}]}
    with pytest.raises(kb.FilterError, match="order strings"):
        to_where(parse_filter({"a": {"$gt": "m"}}))
    with pytest.raises(kb.FilterError, match="negated"):
        to_where(parse_filter({"$not": {"a": {"$gt": 1}}}))


def test_crashed_writer_leaves_nothing_visible(tmp_path: Path) -> None:
    store = ChromaStore(StoreContext("crash", tmp_path))
    store.upsert(records(3))
    tx = store.begin()
    tx.upsert(records(2, start=10))
    tx.delete(["doc-0"])
    # a crash: the process dies without commit or rollback (the lock goes with it)
    tx.conn.close()
    tx.lock.close()
    reopened = ChromaStore(StoreContext("crash", tmp_path))
    assert sorted(reopened.ids_where(None)) == ["doc-0", "doc-1", "doc-2"]
    with reopened.begin() as again:  # cleans the leftovers of the dead writer
        again.upsert(records(1, start=20))
    assert sorted(reopened.ids_where(None)) == ["doc-0", "doc-1", "doc-2", "doc-20"]
    assert reopened.call("count") == 4  # no orphan physical records


def test_server_down_is_a_clear_error_and_a_retry_completes(tmp_path: Path) -> None:
    server = ChromaServer(tmp_path / "data").start()
    store = ChromaStore(StoreContext("flaky", tmp_path, connection={"url": server.url}))
    store.upsert(records(5))
    server.stop()
    with pytest.raises(kb.StoreUnavailableError, match="127.0.0.1"):
        store.upsert(records(5, start=5))
    with pytest.raises(kb.StoreUnavailableError):
        store.similarity(unit(1), 3)
    restarted = ChromaServer(tmp_path / "data")
    restarted.port, restarted.url = server.port, server.url
    restarted.start()
    try:
        store.upsert(records(5, start=5))
        store.upsert(records(5, start=5))  # retried: no duplicates
        assert store.count() == 10 and store.similarity(unit(7), 1)[0].record.id == "doc-7"
    finally:
        restarted.stop()


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


def test_chroma_knowledge_bank_search_types(client: kb.EmbeddedClient) -> None:
    core = client.get_default_project().create_knowledge_bank(
        "chroma-kb", embedding_llm_id=FAKE_MODEL_ID, vector_store_type="CHROMA").as_core_knowledge_bank()
    texts = ["espresso coffee crema", "coffee beans roasted", "marathon runners train", "solar panels"]
    core.as_langchain_vectorstore().add_texts(texts, metadatas=[{"n": i} for i in range(4)],
                                              ids=[f"t{i}" for i in range(4)])
    for search_type in ("similarity", "mmr", "keyword", "hybrid"):
        docs = core.as_langchain_retriever(search_type=search_type, search_kwargs={"k": 2}).invoke("coffee")
        assert len(docs) == 2, search_type
    assert {d.id for d in core.as_langchain_vectorstore().keyword_search("coffee", k=5)} == {"t0", "t1"}
    assert [d.id for d in core.as_langchain_vectorstore().keyword_search("coffee", k=5, filter={"n": 1})] == ["t1"]
    assert isinstance(core.as_langchain_vectorstore(), Chroma)

"""The Azure AI Search driver against the local emulator of the service's REST API (tests/support/azure_search).

No Azure service is reachable from here: the real SDK talks HTTP to an emulator process that validates every
request and response against Microsoft's published OpenAPI description (tests/support/azure_spec).
"""

from __future__ import annotations

import asyncio
import itertools
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from langchain_community.vectorstores.azuresearch import AzureSearch
from langchain_core.vectorstores import VectorStore
from langchain_tests.integration_tests import VectorStoreIntegrationTests

import kb
from kb_base.errors import StoreError, StoreUnavailableError
from kb_base.filters import Comparison, Filter, Not
from stores.azure_search.filters import EXACT_INT
from stores.azure_search.store import AzureSearchStore
from stores.base import Record, StoreContext
from stores.generations import NEVER
from tests.conformance.store_suite import StoreConformanceSuite, StoreFactory, records, unit
from tests.conftest import FAKE_MODEL_ID
from tests.support.azure_search_emulator import AzureSearchEmulator
from tests.support.openai_embeddings_server import free_port

_ids = itertools.count()


def connection(emulator: AzureSearchEmulator, **extra: Any) -> dict[str, Any]:
    return {"endpoint": emulator.url, "api_key": emulator.api_key, "index_prefix": "t-",
            "api_version": "2024-07-01", "retry_backoff_factor": 0.05, **extra}


def _big_int(flt: Filter | None) -> bool:
    if isinstance(flt, Comparison):
        values = flt.value if isinstance(flt.value, tuple) else (flt.value,)
        return any(isinstance(v, int) and not isinstance(v, bool) and abs(v) > EXACT_INT for v in values)
    if isinstance(flt, Not):
        return _big_int(flt.clause)
    return flt is not None and any(_big_int(c) for c in flt.clauses)


class TestAzureSearchConformance(StoreConformanceSuite):
    def may_refuse(self, flt: Any) -> bool:
        return _big_int(flt)  # integers Edm.Double cannot hold exactly; the property test draws none

    @pytest.fixture
    def store_factory(self, tmp_path: Path, emulator: AzureSearchEmulator) -> StoreFactory:
        kb_id = f"conf{next(_ids)}"
        return lambda: AzureSearchStore(StoreContext(kb_id, tmp_path, connection=connection(emulator)))


# --- faults: throttling, unavailability, partial batches, an unreachable endpoint ------------------------------


def _requests_since(emulator: AzureSearchEmulator, start: int, route: str) -> list[int]:
    return [r["status"] for r in emulator.requests()[start:] if r["route"] == route]


def _store(tmp_path: Path, emulator: AzureSearchEmulator, **extra: Any) -> AzureSearchStore:
    return AzureSearchStore(StoreContext(f"fault{next(_ids)}", tmp_path, connection=connection(emulator, **extra)))


def test_throttling_is_retried_after_retry_after(tmp_path: Path, emulator: AzureSearchEmulator) -> None:
    store = _store(tmp_path, emulator)
    start = len(emulator.requests())
    emulator.fault(status=429, times=2, retry_after=1, route="batch")
    started = time.monotonic()
    store.upsert(records(5))
    assert time.monotonic() - started >= 2.0  # the SDK waited the Retry-After of each 429
    assert _requests_since(emulator, start, "batch")[:3] == [429, 429, 200]
    assert store.count() == 5


def test_unavailable_service_is_retried_then_reported(tmp_path: Path, emulator: AzureSearchEmulator) -> None:
    store = _store(tmp_path, emulator, retry_total=2)
    store.upsert(records(3))
    start = len(emulator.requests())
    emulator.fault(status=503, times=2, route="search")
    assert store.count() == 3  # two 503s, then an answer
    assert _requests_since(emulator, start, "search")[:3] == [503, 503, 200]
    emulator.fault(status=503, times=3, route="search")  # more than the retry policy allows
    with pytest.raises(StoreUnavailableError, match="503"):
        store.count()
    assert store.count() == 3


def test_partial_batch_failures_are_retried(tmp_path: Path, emulator: AzureSearchEmulator) -> None:
    store = _store(tmp_path, emulator)
    start = len(emulator.requests())
    emulator.fault(partial=2, times=1)
    store.upsert(records(6))
    assert _requests_since(emulator, start, "batch")[:2] == [207, 200]  # only the two failed documents again
    assert sorted(store.ids_where(None)) == [f"doc-{i}" for i in range(6)]


def test_partial_failures_that_persist_fail_the_write_and_leave_nothing(tmp_path: Path,
                                                                        emulator: AzureSearchEmulator) -> None:
    store = _store(tmp_path, emulator, document_retries=1)
    store.upsert(records(2))
    emulator.fault(partial=1, times=2)
    with pytest.raises(StoreError, match="rejected 1 of 3 documents"):
        store.upsert(records(3, start=10))
    assert sorted(store.ids_where(None)) == ["doc-0", "doc-1"]  # nothing of the failed write is visible
    store.upsert(records(3, start=10))  # and the next writer writes it whole
    assert store.count() == 5


def test_batches_stay_within_the_service_limits(tmp_path: Path, emulator: AzureSearchEmulator) -> None:
    store = _store(tmp_path, emulator)
    start = len(emulator.requests())
    store.upsert([Record(f"d{i}", "x", {}, unit(i)) for i in range(2500)])
    assert _requests_since(emulator, start, "batch") == [200, 200, 200]  # 1000 + 1000 + 500
    assert store.count() == 2500
    assert _batch_sizes([{"k": "x" * 900_000}] * 40) == [18, 18, 4]  # 16 MB per request


def _batch_sizes(documents: list[dict[str, Any]]) -> list[int]:
    from stores.azure_search.client import _batches

    return [len(b) for b in _batches(documents)]


def test_unreachable_endpoint_names_the_endpoint(tmp_path: Path) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(StoreUnavailableError, match=re.escape(endpoint)):
        AzureSearchStore(StoreContext("gone", tmp_path, connection={"endpoint": endpoint, "api_key": "k",
                                                                     "retry_total": 1, "retry_backoff_factor": 0.01}))


# --- knowledge banks on Azure AI Search ----------------------------------------------------------------------


@pytest.fixture
def az_client(client: kb.EmbeddedClient, emulator: AzureSearchEmulator) -> kb.EmbeddedClient:
    client.create_connection("az", "azure-ai-search", connection(emulator), replace=True)
    return client


def _azure_core(client: kb.EmbeddedClient, name: str) -> Any:
    return client.get_default_project().create_knowledge_bank(
        name, embedding_llm_id=FAKE_MODEL_ID, vector_store_type="AZURE_AI_SEARCH",
        settings={"connection": "az"}).as_core_knowledge_bank()


TEXTS = ["espresso coffee crema", "coffee beans roasted slowly", "marathon runners train daily",
         "solar panels make power", "how coffee beans are roasted: slowly, in a drum"]


def test_search_types_on_an_azure_knowledge_bank(az_client: kb.EmbeddedClient, emulator: AzureSearchEmulator) -> None:
    core = _azure_core(az_client, "az-search")
    start = len(emulator.requests())
    core.as_langchain_vectorstore().add_texts(TEXTS, metadatas=[{"n": i, "kind": "drink" if i in (0, 1, 4) else "x"}
                                                                for i in range(5)], ids=[f"t{i}" for i in range(5)])
    for search_type in ("similarity", "mmr", "keyword", "hybrid", "semantic_hybrid"):
        assert len(core.search(query="coffee", k=2, search_type=search_type)) == 2, search_type
    assert {r.id for r in core.search(query="coffee", k=5, search_type="keyword")} == {"t0", "t1", "t4"}
    hybrid = core.search(query="roasted coffee beans", k=3, search_type="hybrid", filter={"kind": "drink"})
    assert {r.id for r in hybrid} <= {"t0", "t1", "t4"} and set(hybrid[0].scores) == {"fused"}
    semantic = core.search(query="how are coffee beans roasted", k=3, search_type="semantic_hybrid")
    assert semantic[0].id == "t4" and semantic[0].scores["rerank"] >= semantic[1].scores["rerank"]
    assert "<em>roasted</em>" in semantic[0].metadata["KB_SEMANTIC_CAPTIONS"][0]["highlights"]
    assert semantic[0].metadata["KB_SEMANTIC_ANSWERS"][0]["text"]
    with pytest.raises(kb.UnsupportedSearchError, match="diversity"):
        core.search(query="coffee", k=2, search_type="hybrid", diversity=True)
    with pytest.raises(kb.UnsupportedSearchError, match="fuses hybrid results itself"):
        core.search(query="coffee", k=2, search_type="hybrid", fusion="linear")
    searches = _requests_since(emulator, start, "search")
    assert searches and set(searches) == {200}


def test_knowledge_bank_index_lifecycle(az_client: kb.EmbeddedClient, emulator: AzureSearchEmulator) -> None:
    project = az_client.get_default_project()
    schema = {"source": "string", "year": "int", "ok": "bool", "day": "date"}
    handle = project.create_knowledge_bank("az-life", embedding_llm_id=FAKE_MODEL_ID,
                                           vector_store_type="AZURE_AI_SEARCH",
                                           settings={"connection": "az", "metadata_schema": schema})
    index = handle.as_core_knowledge_bank().driver.index
    assert index in _index_names(emulator)  # created with the knowledge bank
    definition = httpx.get(f"{emulator.url}/indexes('{index}')", params={"api-version": "2024-07-01"},
                           headers={"api-key": emulator.api_key}).json()
    fields = {f["name"]: f for f in definition["fields"]}
    assert {n: fields[n]["type"] for n in ("m_source_s", "m_year_n", "m_ok_b", "m_day_s")} == {
        "m_source_s": "Edm.String", "m_year_n": "Edm.Double", "m_ok_b": "Edm.Boolean", "m_day_s": "Edm.String"}
    assert fields["m_year_n"]["filterable"] and "vector" not in fields  # the vector field comes with a dimension
    handle.delete()
    assert index not in _index_names(emulator)  # and deleted with it


def _index_names(emulator: AzureSearchEmulator) -> set[str]:
    answer = httpx.get(f"{emulator.url}/indexes", params={"api-version": "2024-07-01"},
                       headers={"api-key": emulator.api_key})
    return {i["name"] for i in answer.json()["value"]}


def test_azure_store_type_without_a_connection_is_a_clear_error(client: kb.EmbeddedClient) -> None:
    with pytest.raises(kb.InvalidInputError, match="needs a store connection"):
        client.get_default_project().create_knowledge_bank("az-none", embedding_llm_id=FAKE_MODEL_ID,
                                                           vector_store_type="AZURE_AI_SEARCH")
    assert [k for k in client.get_default_project().list_knowledge_banks()] == []


# --- LangChain: langchain-community's AzureSearch, routed through kb ------------------------------------------


class TestAzureSearchWriterStandard(VectorStoreIntegrationTests):
    """langchain-tests' suite on the AzureSearch instance a writer hands out (staged, read-your-writes)."""

    @pytest.fixture
    def vectorstore(self, az_client: kb.EmbeddedClient) -> Iterator[VectorStore]:
        handle = az_client.get_default_project().create_knowledge_bank(
            f"az-{next(_ids)}", embedding_llm_id=FAKE_MODEL_ID, vector_store_type="AZURE_AI_SEARCH",
            settings={"connection": "az"})
        with handle.as_core_knowledge_bank().get_writer() as writer:
            store = writer.as_langchain_vectorstore()
            assert isinstance(store, AzureSearch)
            yield store


class TestAzureSearchCoreStandard(VectorStoreIntegrationTests):
    """The same suite on ``core.as_langchain_vectorstore()``: every write its own atomic commit."""

    @pytest.fixture
    def vectorstore(self, az_client: kb.EmbeddedClient) -> Iterator[VectorStore]:
        store = _azure_core(az_client, f"az-{next(_ids)}").as_langchain_vectorstore()
        assert isinstance(store, AzureSearch)
        yield store


def test_reference_calls_on_azure(az_client: kb.EmbeddedClient) -> None:
    """The reference's Azure AI Search examples, call for call."""
    core = _azure_core(az_client, "az-reference")
    core.as_langchain_vectorstore().add_texts(TEXTS, ids=[f"t{i}" for i in range(5)])
    query = "how are coffee beans roasted"
    for search_type in ("similarity", "hybrid", "semantic_hybrid"):
        assert len(core.as_langchain_retriever(search_type=search_type).invoke(query)) == 4
        assert len(core.as_langchain_vectorstore().as_retriever(search_type=search_type).invoke(query)) == 4
    vs = core.as_langchain_vectorstore()
    assert len(vs.similarity_search(query)) == 4
    assert {d.id for d in vs.hybrid_search(query, k=5)} == {f"t{i}" for i in range(5)}
    semantic = vs.semantic_hybrid_search(query, k=3)
    assert semantic[0].id == "t4" and semantic[0].metadata["KB_SEMANTIC_CAPTIONS"]
    [(doc, score, rerank)] = vs.semantic_hybrid_search_with_score_and_rerank(query, k=1)
    assert doc.id == "t4" and 0 < score < 1 and rerank == pytest.approx(4.0)
    assert [d.id for d in vs.similarity_search(query, k=2, search_type="semantic_hybrid")][0] == "t4"
    assert len(core.as_langchain_retriever(search_type="mmr", search_kwargs={"k": 2}).invoke(query)) == 2
    with pytest.raises(kb.InvalidInputError, match="OData"):
        vs.hybrid_search(query, filters="kb_gen ge 0")
    hybrid = [d.id for d, _ in vs.hybrid_search_with_score(query, k=3)]
    assert [d.id for d, _ in asyncio.run(vs.ahybrid_search_with_score(query, k=3))] == hybrid
    assert [d.id for d, _, _ in asyncio.run(vs.asemantic_hybrid_search_with_score_and_rerank(query, k=1))] == ["t4"]
    assert len(asyncio.run(vs.avector_search(query, k=3))) == 3
    assert len(vs.similarity_search_with_relevance_scores(query, k=3)) == 3
    assert len(vs.max_marginal_relevance_search_with_score(query, k=2, fetch_k=5)) == 2
    with pytest.raises(kb.UnsupportedSearchError, match="diversity"):
        vs.hybrid_max_marginal_relevance_search_with_score(query, k=2)


def _raw_count(emulator: AzureSearchEmulator, index: str, odata: str) -> int:
    answer = httpx.post(f"{emulator.url}/indexes('{index}')/docs/search.post.search",
                        params={"api-version": "2024-07-01"}, headers={"api-key": emulator.api_key},
                        json={"search": "*", "filter": odata, "count": True, "top": 0})
    return int(answer.json()["@odata.count"])


def test_a_dead_writer_leaves_nothing_visible_and_the_next_writer_cleans_up(tmp_path: Path,
                                                                            emulator: AzureSearchEmulator) -> None:
    context = StoreContext(f"crash{next(_ids)}", tmp_path, connection=connection(emulator))
    store = AzureSearchStore(context)
    store.upsert(records(3))  # generation 1
    tx = store.begin()
    tx.upsert(records(2, start=10))
    tx.delete(["doc-0"])
    tx.write.close()  # the process dies: no commit, no rollback; the kernel drops the writer lock
    assert sorted(store.ids_where(None)) == ["doc-0", "doc-1", "doc-2"]
    leftovers = f"kb_gen gt 1 or (kb_del gt 1 and kb_del lt {NEVER})"
    assert _raw_count(emulator, store.index, leftovers) == 3  # two new documents and one deletion mark
    restarted = AzureSearchStore(context)  # another process opens the knowledge bank and writes
    with restarted.begin() as write:
        write.upsert(records(1, start=20))
    assert _raw_count(emulator, store.index, "kb_gen gt 2 or kb_del lt " + str(NEVER)) == 0
    assert sorted(restarted.ids_where(None)) == ["doc-0", "doc-1", "doc-2", "doc-20"]


def test_awkward_keys_and_values_filter_exactly(tmp_path: Path, emulator: AzureSearchEmulator) -> None:
    """Quotes, delimiters, unicode, keys that are not identifiers (hashed field names), long $in lists."""
    from kb_base.filters import matches, parse_filter

    metadata = [{"who": "O'Brien", "a.b c": 1, "tag": "x|y"}, {"who": "Zoë", "a.b c": 2.5, "tag": "x,y~^"},
                {"who": "o'brien", "a.b c": True, "tag": "plain"}, {"who": "", "tag": " padded "}]
    store = _store(tmp_path, emulator)
    store.upsert([Record(f"r{i}", "t", m, unit(i)) for i, m in enumerate(metadata)])
    filters = [{"who": "O'Brien"}, {"who": {"$in": ["O'Brien", "Zoë", ""]}}, {"tag": {"$in": ["x|y", "x,y~^"]}},
               {"tag": {"$nin": [" padded ", "plain"]}}, {"a.b c": {"$gte": 1}}, {"a.b c": True},
               {"who": {"$gt": "O"}}, {"$not": {"a.b c": {"$in": [1, 2.5, True]}}}, {"missing": {"$ne": 3}},
               {"who": {"$in": [f"v{i}" for i in range(500)] + ["Zoë"]}}]
    for raw in filters:
        flt = parse_filter(raw)
        expected = sorted(f"r{i}" for i, m in enumerate(metadata) if matches(flt, m))
        assert sorted(store.ids_where(flt)) == expected, raw
    with pytest.raises(kb.FilterError, match="2\\*\\*53"):
        store.count(parse_filter({"a.b c": 2**60}))


def test_a_transaction_whose_write_failed_cannot_commit(tmp_path: Path, emulator: AzureSearchEmulator) -> None:
    store = _store(tmp_path, emulator, document_retries=0)
    store.upsert(records(2))
    tx = store.begin()
    tx.upsert(records(1, start=5))
    emulator.fault(partial=1, times=1)
    with pytest.raises(StoreError, match="rejected"):
        tx.upsert(records(3, start=10))  # two of three documents reached the index
    with pytest.raises(StoreError, match="rolled back"):
        tx.commit()
    assert sorted(store.ids_where(None)) == ["doc-0", "doc-1"]
    assert _raw_count(emulator, store.index, "kb_gen gt 1") == 0  # and nothing of it is left in the index


def test_overlong_filterable_strings_are_refused_clearly(tmp_path: Path, emulator: AzureSearchEmulator) -> None:
    store = _store(tmp_path, emulator)
    with pytest.raises(kb.InvalidInputError, match="'note' is 40000 bytes"):
        store.upsert([Record("big", "t", {"note": "x" * 40000}, unit(1))])
    assert store.count() == 0


def test_entra_id_token_over_tls(tmp_path: Path) -> None:
    """A Microsoft Entra ID access token instead of an API key: a bearer token, which the SDK sends only
    over HTTPS (the emulator serves TLS with a self-signed certificate, trusted through ``ca_bundle``)."""
    server = AzureSearchEmulator(tmp_path, bearer_token="entra-token-for-tests", tls=True).start()
    try:
        settings = {"endpoint": server.url, "azure_ad_token": "entra-token-for-tests",
                    "ca_bundle": str(server.certificate), "retry_total": 1, "retry_backoff_factor": 0.05}
        store = AzureSearchStore(StoreContext("entra", tmp_path, connection=settings))
        store.upsert(records(4))
        assert store.similarity(unit(2), 1)[0].record.id == "doc-2"
        with pytest.raises(StoreUnavailableError, match="refused the credentials"):
            AzureSearchStore(StoreContext("entra2", tmp_path / "other",
                                          connection={**settings, "azure_ad_token": "stolen"}))
        assert server.violations() == []
    finally:
        server.stop()


def test_an_emptied_knowledge_bank_moves_to_another_service(az_client: kb.EmbeddedClient, emulator: AzureSearchEmulator,
                                                            tmp_path: Path) -> None:
    second = AzureSearchEmulator(tmp_path / "second").start()
    try:
        az_client.create_connection("az2", "azure-ai-search", connection(second))
        handle = az_client.get_default_project().create_knowledge_bank(
            "az-move", embedding_llm_id=FAKE_MODEL_ID, vector_store_type="AZURE_AI_SEARCH",
            settings={"connection": "az"})
        core = handle.as_core_knowledge_bank()
        core.as_langchain_vectorstore().add_texts(TEXTS[:2], ids=["a", "b"])
        with core.get_writer() as writer:
            writer.clear()
        settings = handle.get_settings()
        settings.get_raw()["connection"] = "az2"
        settings.save()
        moved = handle.as_core_knowledge_bank()
        index = moved.driver.index
        assert index in _index_names(second)  # the new service gets the index when the driver opens there
        assert moved.search(query="coffee", k=2) == []
        moved.as_langchain_vectorstore().add_texts(TEXTS[2:4], ids=["c", "d"])
        assert sorted(moved.driver.ids_where(None)) == ["c", "d"]
        assert second.violations() == []
    finally:
        second.stop()

"""Hybrid search on FAISS fuses ids and scores first and reads records only for the results it keeps: the
same results as the generic path that reads both candidate lists' records, and a fallback to that path when a
kept record went away in between."""

from __future__ import annotations

import numpy as np
import pytest

from kb.client import EmbeddedClient
from kb.fusion import hybrid_search
from kb_base.search import SearchRequest
from stores.base import StoreReader
from tests.conftest import FAKE_MODEL_ID

WORDS = "solar wind battery grid river dam coal gas turbine panel storage heat pump nuclear tide wave".split()


class GenericOnly(StoreReader):
    """The FAISS driver seen through the generic protocol only (no ranked lists)."""

    def __init__(self, inner: StoreReader) -> None:
        self.inner = inner

    @property
    def dimension(self) -> int | None:
        return self.inner.dimension

    def get(self, ids, with_vectors=False):  # noqa: ANN001, ANN201
        return self.inner.get(ids, with_vectors)

    def count(self, flt=None):  # noqa: ANN001, ANN201
        return self.inner.count(flt)

    def similarity(self, vector, k, flt=None, with_vectors=False):  # noqa: ANN001, ANN201
        return self.inner.similarity(vector, k, flt, with_vectors)

    def keyword(self, query, k, flt=None):  # noqa: ANN001, ANN201
        return self.inner.keyword(query, k, flt)

    def iter_records(self, batch_size=1000, with_vectors=False):  # noqa: ANN001, ANN201
        return self.inner.iter_records(batch_size, with_vectors)

    def ids_where(self, flt):  # noqa: ANN001, ANN201
        return self.inner.ids_where(flt)


@pytest.fixture
def core(client: EmbeddedClient):  # noqa: ANN201
    rng = np.random.default_rng(4)
    handle = client.get_default_project().create_knowledge_bank(
        "energy", embedding_llm_id=FAKE_MODEL_ID, settings={"store": {"index": {"type": "HNSW"}}})
    core = handle.as_core_knowledge_bank()
    with core.get_writer() as writer:
        store = writer.as_langchain_vectorstore()
        texts = [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 12)))) for _ in range(400)]
        store.add_texts(texts, metadatas=[{"n": i % 7} for i in range(400)], ids=[f"d{i}" for i in range(400)])
    return core


@pytest.mark.parametrize("fusion", ["linear", "rrf"])
@pytest.mark.parametrize("filtered", [False, True])
def test_ranked_lists_give_the_generic_results(core, fusion: str, filtered: bool) -> None:  # noqa: ANN001
    ctx = core.search_context()
    driver = core.driver
    for query in ["solar panel storage", "river dam", "heat pump gas", "tide wave nuclear coal"]:
        request = SearchRequest(query=query, k=7, search_type="hybrid", fusion=fusion,
                                filter={"n": {"$lt": 4}} if filtered else None)
        vector = np.asarray(ctx.embed_query(query), dtype=np.float32)
        fast = core.search(request)
        generic = core.search(request, reader=GenericOnly(driver))
        assert [(r.id, r.scores) for r in fast] == [(r.id, r.scores) for r in generic]
        assert [r.metadata for r in fast] == [r.metadata for r in generic]
        assert driver.ranked_lists(vector, query, 50) is not None  # the fast path was available


def test_a_record_deleted_between_lists_and_records_falls_back(core) -> None:  # noqa: ANN001
    ctx = core.search_context()
    query = "solar panel storage"
    vector = np.asarray(ctx.embed_query(query), dtype=np.float32)
    ranked = core.driver.ranked_lists(vector, query, 20)
    top = [doc_id for doc_id, _ in ranked.keyword[:3]]
    assert set(ranked.records(top)) == set(top)
    with core.get_writer() as writer:
        writer.as_langchain_vectorstore().delete([top[0]])
    # from the record cache the lists' snapshot is still served (a rowid's content never changes); once the
    # cache no longer holds it, the deletion shows and the fusion answers from the generic path
    assert set(ranked.records(top)) == set(top)
    core.driver._records.clear()
    assert ranked.records(top) is None
    request = SearchRequest(query=query, k=5, search_type="hybrid")
    results = hybrid_search(core.driver, request, None, lambda checked=False: vector, ctx, keep=5)
    assert top[0] not in [r.id for r in results] and len(results) == 5

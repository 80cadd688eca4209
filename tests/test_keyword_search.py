"""The early-terminating BM25 top-k against exhaustive scoring, the hot-term cache and its generations."""

from __future__ import annotations

import sqlite3

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from stores.keyword.index import KeywordIndex
from stores.keyword.search import PostingsCache, ScoredPostings, exhaustive, top_k


def _term(rng: np.random.Generator, n_docs: int, df: int, idf: float, tie_heavy: bool) -> ScoredPostings:
    docs = np.sort(rng.choice(n_docs, size=df, replace=False)).astype(np.int64)
    # few distinct tfs and lengths make many equal contributions: the rowid tie-break must stay exact
    tfs = rng.integers(1, 3 if tie_heavy else 9, size=df).astype(np.float64)
    lengths = (rng.integers(5, 7, size=df) if tie_heavy else rng.integers(5, 300, size=df)).astype(np.float64)
    return ScoredPostings.build(docs, tfs, lengths, idf, 0.9, 0.4, 80.0)


@settings(max_examples=120, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_terms=st.integers(1, 5), k=st.integers(1, 40),
       tie_heavy=st.booleans(), filtered=st.booleans())
def test_top_k_equals_exhaustive(seed, n_terms, k, tie_heavy, filtered):
    rng = np.random.default_rng(seed)
    n_docs = int(rng.integers(50, 30_000))
    terms = [_term(rng, n_docs, int(rng.integers(1, n_docs)), float(rng.uniform(0.05, 8.0)), tie_heavy)
             for _ in range(n_terms)]
    allowed = np.sort(rng.choice(n_docs, size=int(rng.integers(0, n_docs)), replace=False)) if filtered else None
    got = top_k(terms, k, allowed)
    expected = exhaustive(terms, k, allowed) if allowed is None or allowed.size else []
    assert got == expected  # same rowids in the same order and bit-identical scores


def test_rare_term_settles_in_the_first_round():
    rng = np.random.default_rng(3)
    common = _term(rng, 200_000, 150_000, 0.3, False)
    rare = _term(rng, 200_000, 40, 7.5, False)
    trace: dict[str, int] = {}
    assert top_k([common, rare], 10, trace=trace) == exhaustive([common, rare], 10)
    assert trace == {"settled": 1, "pruned": 0, "exhaustive": 0}


def test_cache_is_bounded_and_keyed_by_state():
    rng = np.random.default_rng(5)
    postings = [_term(rng, 10_000, 1_000, 1.0, False) for _ in range(4)]
    cache = PostingsCache(max_bytes=postings[0].nbytes * 2 + 1)
    loads: list[int] = []

    def loader(i):
        def load():
            loads.append(i)
            return postings[i]
        return load

    for i in range(4):
        cache.get("g1", i, loader(i))
    assert loads == [0, 1, 2, 3]
    cache.get("g1", 3, loader(3))  # still cached (most recent)
    cache.get("g1", 0, loader(0))  # evicted by the byte bound: loaded again
    assert loads == [0, 1, 2, 3, 0]
    cache.get("g2", 0, loader(0))  # another state: nothing of g1 is reused
    assert loads == [0, 1, 2, 3, 0, 0]


def test_cached_search_follows_commits(tmp_path):
    conn = sqlite3.connect(tmp_path / "kw.sqlite")
    index = KeywordIndex()
    index.create(conn)
    index.add(conn, [(1, "red apple pie"), (2, "green apple"), (3, "blue sky")])
    conn.commit()
    first = index.search(conn, "apple", 5, cache_key=1)
    assert [d for d, _ in first] == [2, 1]
    index.remove(conn, [2])
    index.add(conn, [(4, "apple apple apple")])
    conn.commit()
    second = index.search(conn, "apple", 5, cache_key=2)
    assert [d for d, _ in second] == [4, 1]
    assert second == index.search(conn, "apple", 5)  # uncached evaluation agrees
    conn.close()


def test_maxscore_prunes_terms_that_cannot_reach_the_top():
    rng = np.random.default_rng(9)
    rare = _term(rng, 300_000, 5_000, 8.0, True)  # many near-equal best scores: round one cannot settle
    common = [_term(rng, 300_000, 120_000, 0.05, False) for _ in range(3)]
    trace: dict[str, int] = {}
    assert top_k([rare, *common], 10, trace=trace) == exhaustive([rare, *common], 10)
    assert trace == {"settled": 0, "pruned": 1, "exhaustive": 0}


def test_deep_first_round_orders_more_than_the_kept_best():
    rng = np.random.default_rng(12)
    terms = [_term(rng, 50_000, 20_000, float(rng.uniform(0.5, 4.0)), False) for _ in range(3)]
    for k in (700, 3000):  # first-round depth 1400 / 6000: past the 1024 contributions ordered at build
        assert top_k(terms, k) == exhaustive(terms, k)


def test_store_keyword_cache_never_serves_uncommitted_or_stale_postings(client):  # noqa: ANN001
    """Through a FAISS knowledge bank: a writer's own keyword searches see its writes, a rolled-back writer
    leaves no trace in later searches, and a commit is seen at once (the cache is per committed generation)."""
    from tests.conftest import FAKE_MODEL_ID

    core = client.get_default_project().create_knowledge_bank(
        "kw", embedding_llm_id=FAKE_MODEL_ID).as_core_knowledge_bank()
    with core.get_writer() as writer:
        writer.as_langchain_vectorstore().add_texts(["red apple pie", "green apple"], ids=["a", "b"])

    def ids() -> list[str]:
        return [r.id for r in core.search(query="apple", k=5, search_type="keyword")]

    assert ids() == ["b", "a"]  # now cached for this generation
    try:
        with core.get_writer() as writer:
            store = writer.as_langchain_vectorstore()
            store.add_texts(["apple apple apple"], ids=["c"])
            assert [d.id for d in store.keyword_search("apple", k=5)][0] == "c"  # read-your-writes
            raise RuntimeError("roll back")
    except RuntimeError:
        pass
    assert ids() == ["b", "a"]  # nothing of the rolled-back writer, cached or not
    with core.get_writer() as writer:
        store = writer.as_langchain_vectorstore()
        store.add_texts(["apple apple apple"], ids=["c"])
        store.delete(["b"])
    assert ids() == ["c", "a"]

"""The keyword index's ingestion path: document blocks, packed segments, batches buffered by a FAISS writer and
written together, and indexes written by the previous format (kw_docs rows, int64 segments) still served."""

from __future__ import annotations

import random
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from kb_base.errors import StoreError
from stores.base import Record, StoreContext
from stores.faiss.store import FaissStore
from stores.keyword import doc_blocks
from stores.keyword.index import KeywordIndex
from tests.conformance.store_suite import unit
from tests.test_keyword_index import WORDS, assert_same, reference_bm25

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "keyword_index_format2.sqlite"
QUERIES = ["alpha", "beta gamma", "delta alpha zeta", "cafe naive", "omicron pi rho", "mu nu xi kappa"]


@pytest.fixture
def conn(tmp_path):
    connection = sqlite3.connect(tmp_path / "kw.sqlite")
    yield connection
    connection.close()


def random_texts(rng: random.Random, n: int) -> list[str]:
    words = [*WORDS, "café", "naïve", "Über"]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(1, 14))) for _ in range(n)]


def scores(index: KeywordIndex, conn: sqlite3.Connection, queries: list[str]) -> list[list[tuple[int, float]]]:
    return [index.search(conn, query, 10) for query in queries]


def test_an_index_of_the_previous_format_opens_searches_and_changes(tmp_path):
    """fixtures/keyword_index_format2.sqlite was written by the code before blocks and packing (kw_docs rows,
    int64/uint32/uint32 segments, tombstones, merged terms): it reads as it did and takes new writes (its term
    rows become lexicon blocks at open; its segment rows stay, read beside the new bucket rows)."""
    path = tmp_path / "old.sqlite"
    shutil.copy(FIXTURE, path)
    conn = sqlite3.connect(path)
    live = dict(conn.execute("SELECT doc, text FROM fixture_live"))
    assert conn.execute("SELECT COUNT(*) FROM kw_docs").fetchone()[0] == len(live)
    index = KeywordIndex()
    index.create(conn)
    assert {r[0] for r in conn.execute("SELECT DISTINCT packing FROM kw_segments")} == {844}
    assert_same(index, conn, live, QUERIES)
    rng = random.Random(3)
    old_docs = rng.sample(sorted(live), 20)
    index.remove(conn, old_docs)  # kw_docs rows
    for doc in old_docs:
        del live[doc]
    top = max(max(live), conn.execute("SELECT MAX(doc) FROM kw_deleted").fetchone()[0])
    new = dict(zip(range(top + 1, top + 41), random_texts(rng, 40), strict=True))
    index.add(conn, sorted(new.items()))  # a block, a bucket row beside the old segment rows
    live.update(new)
    assert conn.execute("SELECT COUNT(*) FROM kw_doc_blocks").fetchone()[0] == 1
    assert conn.execute("SELECT COUNT(*) FROM kw_buckets").fetchone()[0] == 1  # 17 + 3 words: one bucket
    assert {r[0] for r in conn.execute("SELECT DISTINCT packing FROM kw_segments")} == {844}
    assert_same(index, conn, live, QUERIES)
    gone = [*rng.sample(sorted(new), 10), *rng.sample(sorted(set(live) - set(new)), 10)]
    index.remove(conn, gone)  # from the block and from kw_docs at once
    for doc in gone:
        del live[doc]
    assert_same(index, conn, live, QUERIES)
    stats = dict(conn.execute("SELECT key, value FROM kw_stats"))
    assert stats["docs"] == len(live)
    conn.close()


def test_removing_documents_rewrites_their_block(conn, monkeypatch):
    monkeypatch.setattr(doc_blocks, "DOCS_PER_BLOCK", 8)
    index = KeywordIndex()
    index.create(conn)
    rng = random.Random(8)
    live = dict(zip(range(1, 31), random_texts(rng, 30), strict=True))
    index.add(conn, sorted(live.items()))
    assert [r[0] for r in conn.execute("SELECT first_doc FROM kw_doc_blocks ORDER BY 1")] == [1, 9, 17, 25]
    index.remove(conn, [9, 10, 11, 12, 13, 14, 15, 16])  # a whole block
    index.remove(conn, [1, 30])  # a block's first and another's last
    index.remove(conn, [1, 999])  # again, and one that never existed: nothing changes
    for doc in [*range(9, 17), 1, 30]:
        del live[doc]
    assert conn.execute("SELECT first_doc, last_doc FROM kw_doc_blocks ORDER BY 1").fetchall() == \
        [(2, 8), (17, 24), (25, 29)]
    assert dict(conn.execute("SELECT key, value FROM kw_stats"))["docs"] == len(live)
    assert_same(index, conn, live, QUERIES)


def test_rowids_that_cannot_make_a_block_get_rows(conn):
    """Rowids out of order, or inside an existing block's range, fall back to a kw_docs row each."""
    index = KeywordIndex()
    index.create(conn)
    live = {10: "alpha beta", 20: "beta gamma", 30: "gamma delta"}
    index.add(conn, sorted(live.items()))
    index.add(conn, [(15, "alpha alpha"), (12, "delta")])  # not ascending, and inside 10..30
    live.update({15: "alpha alpha", 12: "delta"})
    assert conn.execute("SELECT COUNT(*) FROM kw_docs").fetchone()[0] == 2
    assert_same(index, conn, live, QUERIES)
    index.remove(conn, [12, 20])
    del live[12], live[20]
    assert_same(index, conn, live, QUERIES)


def test_wide_values_are_packed_wide_and_score_the_same(conn):
    """Frequencies past 255, lengths past 65535 and rowids past 2**32 each widen their array."""
    index = KeywordIndex()
    index.create(conn)
    live = {1: "alpha " * 300 + "beta", 2: "beta gamma", 2**32 + 7: "gamma alpha", 5: "delta " * 70_000 + "alpha"}
    for doc, text in live.items():
        index.add(conn, [(doc, text)])
    # (tfs, lengths) widths per add, see stores.keyword.postings: rowids past 65535 are escaped
    assert sorted(r[0] for r in conn.execute("SELECT packing FROM kw_buckets")) == [11, 11, 22, 44]
    assert [r[0] for r in conn.execute("SELECT escaped FROM kw_buckets ORDER BY seg")][2] == \
        np.array([2**32 + 7, 2**32 + 7], "<i8").tobytes()  # both terms' first (only) rowid, in full
    index.add(conn, [(9, "zeta alpha"), (2**32 + 9, "zeta")])  # a step past 65535, out of a term's rowids
    live.update({9: "zeta alpha", 2**32 + 9: "zeta"})
    assert_same(index, conn, live, ["alpha", "beta", "gamma", "delta alpha", "zeta"])


def test_batches_written_together_score_exactly_as_one_at_a_time(tmp_path):
    """Buffered batches make one row per bucket of terms; the scores are the very same floats as a write per
    batch."""
    rng = random.Random(21)
    texts = random_texts(rng, 300)
    together = sqlite3.connect(tmp_path / "together.sqlite")
    apart = sqlite3.connect(tmp_path / "apart.sqlite")
    index = KeywordIndex()
    for conn in (together, apart):
        index.create(conn)
    batches = [(start, texts[start : start + 70]) for start in range(0, 300, 70)]
    index.write(together, [index.analyse(range(start + 1, start + 1 + len(part)), part) for start, part in batches])
    for start, part in batches:
        index.add(apart, list(zip(range(start + 1, start + 1 + len(part)), part, strict=True)))
    buckets = together.execute("SELECT COUNT(DISTINCT bucket) FROM kw_buckets").fetchone()[0]
    assert together.execute("SELECT COUNT(*) FROM kw_buckets").fetchone()[0] == buckets
    assert apart.execute("SELECT COUNT(*) FROM kw_buckets").fetchone()[0] > buckets
    queries = [*QUERIES, "alpha beta gamma delta epsilon", "über cafe"]
    assert scores(index, together, queries) == scores(index, apart, queries)
    assert scores(index, together, queries)[0]  # the queries do match
    live = dict(zip(range(1, 301), texts, strict=True))
    assert_same(index, together, live, queries)


# --- through a FAISS writer: buffered analyses, read-your-writes, replacements, rollback, failure ----------------


@pytest.fixture(params=["threads", "inline"])
def analysis_on(request, monkeypatch):
    """Every writer test both ways: batches analysed on helper threads, and small ones on the caller's."""
    from stores.keyword import pending as pending_keywords

    monkeypatch.setattr(pending_keywords, "_THREAD_AT", 1 if request.param == "threads" else 10**9)
    return request.param


def recs(texts: dict[str, str]) -> list[Record]:
    return [Record(doc_id, text, {}, unit(i)) for i, (doc_id, text) in enumerate(texts.items())]


def keyword_ids(reader, query: str) -> list[str]:
    return [hit.record.id for hit in reader.keyword(query, 10)]


def test_a_writer_sees_its_own_buffered_keywords_and_replaces_them(tmp_path, analysis_on):
    store = FaissStore(StoreContext("kb", tmp_path))
    with store.begin() as tx:
        tx.upsert(recs({"a": "alpha beta", "b": "gamma"}))
        tx.upsert(recs({"c": "alpha alpha alpha"}))
        assert keyword_ids(tx, "alpha") == ["c", "a"]  # buffered batches are written before a read
        tx.upsert(recs({"d": "delta"}))
        tx.upsert(recs({"a": "zeta"}))  # replaces a document still buffered
        assert tx.delete(["d"]) == 1  # deletes one still buffered
        tx.upsert(recs({"e": "alpha epsilon"}))
    assert keyword_ids(store, "alpha") == ["c", "e"]
    assert keyword_ids(store, "zeta") == ["a"]
    assert keyword_ids(store, "delta") == [] and keyword_ids(store, "beta") == []
    tx = store.begin()
    tx.upsert(recs({"f": "alpha omega"}))
    tx.rollback()
    assert keyword_ids(store, "alpha") == ["c", "e"]


def test_many_batches_in_one_transaction_match_the_reference(tmp_path, monkeypatch, analysis_on):
    from stores.faiss import transaction as faiss_transaction

    monkeypatch.setattr(faiss_transaction, "PENDING_KEYWORD_DOCUMENTS", 50)  # some writes mid-transaction
    rng = random.Random(4)
    texts = {f"doc-{i}": text for i, text in enumerate(random_texts(rng, 400))}
    store = FaissStore(StoreContext("kb", tmp_path))
    items = list(texts.items())
    with store.begin() as tx:
        for start in range(0, 400, 37):
            tx.upsert([Record(doc_id, text, {}, unit(start + j))
                       for j, (doc_id, text) in enumerate(items[start : start + 37])])
    reopened = FaissStore(StoreContext("kb", tmp_path))
    conn = sqlite3.connect(tmp_path / "store" / "store.sqlite")
    rowid_of = {doc_id: rowid for rowid, doc_id in conn.execute("SELECT rowid, id FROM records")}
    conn.close()
    live = {rowid_of[doc_id]: text for doc_id, text in texts.items()}
    for query in QUERIES:
        got = [(hit.record.id, hit.score) for hit in reopened.keyword(query, 7)]
        expected = reference_bm25(live, query, 7)
        id_of = {rowid: doc_id for doc_id, rowid in rowid_of.items()}
        assert [doc for doc, _ in got] == [id_of[d] for d, _ in expected], query
        assert np.allclose([s for _, s in got], [s for _, s in expected])


def test_a_failed_analysis_refuses_the_commit_and_writes_nothing(tmp_path, analysis_on):
    store = FaissStore(StoreContext("kb", tmp_path))
    store.upsert(recs({"kept": "alpha"}))

    def broken(self, rowids, texts):
        raise MemoryError("no memory for the analysis")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(KeywordIndex, "analyse", broken)
        tx = store.begin()
        tx.upsert(recs({"new": "alpha beta"}))
        with pytest.raises(MemoryError):
            tx.commit()
        tx.rollback()
    reopened = FaissStore(StoreContext("kb", tmp_path))
    assert reopened.count() == 1 and keyword_ids(reopened, "alpha") == ["kept"]
    with pytest.raises(StoreError):  # and a writer whose buffered write failed cannot commit later either
        with reopened.begin() as tx:
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(KeywordIndex, "analyse", broken)
                tx.upsert(recs({"x": "beta"}))
                with pytest.raises(MemoryError):
                    tx.delete(["kept"])  # writes the buffer first: fails
            tx.commit()
    assert FaissStore(StoreContext("kb", tmp_path)).count() == 1


def test_documents_without_terms_are_counted_and_removable(conn):
    index = KeywordIndex()
    index.create(conn)
    index.write(conn, [index.analyse([1, 2], ["the a an", ""]), index.analyse([3], ["alpha beta"])])
    assert dict(conn.execute("SELECT key, value FROM kw_stats"))["docs"] == 3
    assert_same(index, conn, {1: "the a an", 2: "", 3: "alpha beta"}, ["alpha", "the"])
    index.remove(conn, [1, 3])
    assert dict(conn.execute("SELECT key, value FROM kw_stats"))["docs"] == 1
    assert index.search(conn, "alpha", 3) == []
    index.write(conn, [index.analyse([4], [""]), index.analyse([5, 6], ["the", "   "])])  # no postings at all
    index.add(conn, [(7, "of and")])
    assert dict(conn.execute("SELECT key, value FROM kw_stats"))["docs"] == 5
    assert index.search(conn, "the", 3) == []


def test_a_writer_of_texts_without_terms_commits(tmp_path, analysis_on):
    store = FaissStore(StoreContext("kb", tmp_path))
    store.upsert([Record(f"r{i}", "" if i % 2 else "the", {}, unit(i)) for i in range(300)])
    assert store.count() == 300 and keyword_ids(store, "the") == []


def test_a_rejected_batch_leaves_no_postings(tmp_path, analysis_on):
    """The analysis starts before the records are checked: a batch refused after that is never written."""
    from kb_base.errors import InvalidInputError

    store = FaissStore(StoreContext("kb", tmp_path))
    with store.begin() as tx:
        tx.upsert(recs({"a": "alpha"}))
        bad = [Record(f"b{i}", "beta", {}, unit(i) * np.float32("nan")) for i in range(300)]
        with pytest.raises(InvalidInputError):
            tx.upsert(bad)
        tx.upsert(recs({"c": "gamma beta"}))
    assert store.count() == 2
    assert keyword_ids(store, "beta") == ["c"] and keyword_ids(store, "alpha") == ["a"]
    conn = sqlite3.connect(tmp_path / "store" / "store.sqlite")
    assert dict(conn.execute("SELECT key, value FROM kw_stats"))["docs"] == 2
    conn.close()

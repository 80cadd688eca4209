"""Narrow keyword bytes: document blocks' term ids in uint16 when they fit (format 3), and whole indexes against a
brute-force BM25: bucket rows (format 4) beside segment rows of the earlier formats (2-3), read, changed and
merged like a fresh index. The bucket rows' own encoding is tested in test_keyword_buckets.py."""

from __future__ import annotations

import random
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from kb_base.errors import StoreError
from stores.keyword import doc_blocks
from stores.keyword import index as keyword_index
from stores.keyword import postings as keyword_postings
from stores.keyword.index import KeywordIndex
from tests.test_keyword_index import WORDS, assert_same, reference_bm25, within_tiered_bound
from tests.test_keyword_ingest import QUERIES, random_texts


@pytest.fixture
def conn(tmp_path):
    connection = sqlite3.connect(tmp_path / "kw.sqlite")
    yield connection
    connection.close()


def block_term_bytes(conn: sqlite3.Connection) -> list[tuple[int, int, int]]:
    """(first_doc, bytes of term ids, term ids) per block."""
    rows = conn.execute("SELECT first_doc, term_ids, counts FROM kw_doc_blocks ORDER BY first_doc").fetchall()
    return [(first, len(terms), int(np.frombuffer(counts, "<u4").sum())) for first, terms, counts in rows]


# --- document blocks ---------------------------------------------------------------------------------------------


def test_block_term_ids_are_two_bytes_while_every_id_fits(conn, monkeypatch):
    monkeypatch.setattr(doc_blocks, "DOCS_PER_BLOCK", 8)
    index = KeywordIndex()
    index.create(conn)
    live = dict(zip(range(1, 21), random_texts(random.Random(2), 20), strict=True))
    index.add(conn, sorted(live.items()))
    blocks = block_term_bytes(conn)
    assert len(blocks) == 3 and all(size == 2 * ids for _, size, ids in blocks)
    # the index's term ids past 65535: a block holding one of them is int32, the others stay uint16
    conn.execute("UPDATE kw_stats SET value = 70000 WHERE key = 'next_term'")
    later = {21: "alpha beta", 22: "brandnewterm alpha", 23: "gamma"}  # 'brandnewterm' gets id 70000
    index.add(conn, sorted(later.items()))
    live.update(later)
    assert block_term_bytes(conn)[-1][1:] == (4 * 5, 5)
    assert_same(index, conn, live, [*QUERIES, "brandnewterm", "alpha beta"])
    index.remove(conn, [3, 22, 23])  # rewrites a uint16 block and the int32 one (now all below 65536)
    for doc in (3, 22, 23):
        del live[doc]
    assert [size == 2 * ids for _, size, ids in block_term_bytes(conn)] == [True] * 4
    assert_same(index, conn, live, [*QUERIES, "brandnewterm", "alpha beta"])
    assert dict(conn.execute("SELECT key, value FROM kw_stats"))["docs"] == len(live)


def test_int32_blocks_written_before_still_undo_their_documents(conn):
    """A block as format 2 wrote it (int32 term ids) removes its documents as before, beside uint16 blocks."""
    index = KeywordIndex()
    index.create(conn)
    rng = random.Random(6)
    live = dict(zip(range(1, 31), random_texts(rng, 30), strict=True))
    index.add(conn, sorted(live.items()))
    ((first, docs, lengths, counts, terms),) = conn.execute(
        "SELECT first_doc, docs, lengths, counts, term_ids FROM kw_doc_blocks").fetchall()
    assert len(terms) == 2 * int(np.frombuffer(counts, "<u4").sum())
    wide = np.frombuffer(terms, "<u2").astype("<i4").tobytes()
    conn.execute("UPDATE kw_doc_blocks SET term_ids = ? WHERE first_doc = ?", (wide, first))
    more = dict(zip(range(31, 41), random_texts(rng, 10), strict=True))
    index.add(conn, sorted(more.items()))  # a uint16 block beside the int32 one
    live.update(more)
    gone = [2, 5, 17, 30, 33, 40]
    index.remove(conn, gone)
    for doc in gone:
        del live[doc]
    assert_same(index, conn, live, QUERIES)
    stats = dict(conn.execute("SELECT key, value FROM kw_stats"))
    assert stats["docs"] == len(live)
    fresh = sqlite3.connect(":memory:")
    index.create(fresh)
    index.add(fresh, sorted(live.items()))
    for query in QUERIES:
        assert [d for d, _ in index.search(conn, query, 10)] == [d for d, _ in index.search(fresh, query, 10)]


def test_a_block_whose_term_ids_match_no_width_is_a_store_error(conn):
    index = KeywordIndex()
    index.create(conn)
    index.add(conn, [(1, "alpha beta"), (2, "gamma")])
    conn.execute("UPDATE kw_doc_blocks SET term_ids = x'010203'")
    with pytest.raises(StoreError, match="3 bytes for 3 ids"):
        index.remove(conn, [1])


# --- whole indexes: brute-force BM25, and rows of the earlier widths beside the new ones ---------------------------


def as_format2(conn: sqlite3.Connection) -> None:
    """Rewrite every postings row as format 2 wrote it: a kw_segments row per term and bucket row (int64 / uint32
    / uint32, packing 844, no base), the bucket rows gone; document blocks' term ids int32."""
    conn.execute("CREATE TABLE IF NOT EXISTS kw_segments (term_id INTEGER NOT NULL, seg INTEGER NOT NULL, "
                 "docs BLOB NOT NULL, tfs BLOB NOT NULL, lengths BLOB NOT NULL, packing INTEGER NOT NULL DEFAULT 844, "
                 "doc_base INTEGER NOT NULL DEFAULT 0)")
    conn.execute("CREATE UNIQUE INDEX IF NOT EXISTS kw_segments_term ON kw_segments (term_id, seg)")
    for seg, *row in conn.execute("SELECT seg, terms, bounds, gaps, escapes, escaped, tfs, lengths, packing "
                                  "FROM kw_buckets").fetchall():
        terms, docs, tfs, lengths = keyword_postings._Decoded(*row).everything()
        for term in np.unique(terms).tolist():
            mine = terms == term
            conn.execute("INSERT INTO kw_segments (term_id, seg, docs, tfs, lengths) VALUES (?, ?, ?, ?, ?)",
                         (term, seg, docs[mine].astype("<i8").tobytes(), tfs[mine].astype("<u4").tobytes(),
                          lengths[mine].astype("<u4").tobytes()))
    conn.execute("DELETE FROM kw_buckets")
    for first, terms, counts in conn.execute("SELECT first_doc, term_ids, counts FROM kw_doc_blocks").fetchall():
        if len(terms) == 2 * int(np.frombuffer(counts, "<u4").sum()):
            conn.execute("UPDATE kw_doc_blocks SET term_ids = ? WHERE first_doc = ?",
                         (np.frombuffer(terms, "<u2").astype("<i4").tobytes(), first))


def packings(conn: sqlite3.Connection) -> set[int]:
    """The packings of the segment rows of formats 2-3 left (none once the table is gone)."""
    if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'kw_segments'").fetchone() is None:
        return set()
    return {r[0] for r in conn.execute("SELECT DISTINCT packing FROM kw_segments")}


def escaping(conn: sqlite3.Connection) -> set[bool]:
    """Whether each bucket row escapes some rowid step (a term's first rowid past 65535, a step past it)."""
    return {len(escapes) > 0 for (escapes,) in conn.execute("SELECT escapes FROM kw_buckets")}


@pytest.mark.parametrize("old_rows", ["none", "rewritten midway"])
def test_history_of_batched_writes_removals_and_merges_matches_brute_force(tmp_path, monkeypatch, old_rows):
    """Several batches per write (one combined row per bucket each), removals, merges (MERGE_AT 3), a full
    compaction, rowids jumping past 65535 between and within batches; with ``old_rows``, every row is rewritten
    as format 2's segment rows halfway, and the history goes on over them. Each step: the same top-10 as a
    brute-force BM25, and the very same floats as the same history kept in format 4 throughout."""
    monkeypatch.setattr(keyword_index, "MERGE_AT", 3)
    monkeypatch.setattr(keyword_postings, "BUCKET_BITS", 2)  # 24 words over several buckets
    monkeypatch.setattr(doc_blocks, "DOCS_PER_BLOCK", 16)
    rng = random.Random(31)
    index = KeywordIndex()
    mixed = sqlite3.connect(tmp_path / "mixed.sqlite")
    fresh = sqlite3.connect(tmp_path / "fresh.sqlite")
    for conn in (mixed, fresh):
        index.create(conn)
    live: dict[int, str] = {}
    next_rowid = 1
    queries = [*QUERIES, "alpha beta gamma delta", "café über", "zeta"]
    seen: set[bool] = set()  # whether bucket rows escaped rowid steps
    for step in range(24):
        if live and step % 3 == 2:
            gone = rng.sample(sorted(live), k=min(len(live), rng.randint(1, 25)))
            for conn in (mixed, fresh):
                index.remove(conn, gone)
            for doc in gone:
                del live[doc]
        batches = []
        for _ in range(rng.randint(1, 4)):
            texts = random_texts(rng, rng.randint(1, 30))
            rowids = []
            for _ in texts:
                rowids.append(next_rowid)
                next_rowid += 70_000 if rng.random() < 0.01 else rng.randint(1, 3)
            batches.append((rowids, texts))
            live.update(zip(rowids, texts, strict=True))
        for conn in (mixed, fresh):
            index.write(conn, [index.analyse(rowids, texts) for rowids, texts in batches])
            conn.commit()
        if step == 12 and old_rows != "none":
            as_format2(mixed)
            assert packings(mixed) == {844}
        if step == 13 and old_rows != "none":  # new rows beside format 2's (merges take the old ones in later)
            assert 844 in packings(mixed) and escaping(mixed)
        seen |= escaping(fresh)
        for query in queries:
            got = index.search(mixed, query, 10)
            assert got == index.search(fresh, query, 10), query
            expected = reference_bm25(live, query, 10)
            assert [d for d, _ in got] == [d for d, _ in expected], query
            assert np.allclose([s for _, s in got], [s for _, s in expected]), query
    assert seen == {True, False}  # rows of small steps only, and rows with a step past 65535
    for conn in (mixed, fresh):  # half the documents gone, then every segment rewritten (as past 10k tombstones)
        index.remove(conn, sorted(live)[: len(live) // 2 + 1])
        index._compact_all(conn)
    for doc in sorted(live)[: len(live) // 2 + 1]:
        del live[doc]
    assert packings(mixed) == packings(fresh) == set()  # the old rows are in the buckets, their table gone
    for query in queries:
        assert index.search(mixed, query, 10) == index.search(fresh, query, 10)
        assert [d for d, _ in index.search(fresh, query, 10)] == [d for d, _ in reference_bm25(live, query, 10)]


PACKED_FORMAT2 = Path(__file__).resolve().parent.parent / "fixtures" / "keyword_index_format2_packed.sqlite"


def test_an_index_written_by_format_2_code_reads_changes_and_merges_like_a_fresh_one(tmp_path, monkeypatch):
    """fixtures/keyword_index_format2_packed.sqlite was written by format 2's code (packed segments without
    gaps, int32 blocks, kw_docs rows, tombstones; see its .py): opened, searched, added to, removed from and
    merged, it ranks like a fresh index of the same live texts and like a brute-force BM25."""
    monkeypatch.setattr(keyword_index, "MERGE_AT", 3)
    path = tmp_path / "old.sqlite"
    shutil.copy(PACKED_FORMAT2, path)
    conn = sqlite3.connect(path)
    live = dict(conn.execute("SELECT doc, text FROM fixture_live"))
    assert "doc_base" not in {r[1] for r in conn.execute("PRAGMA table_info(kw_segments)")}
    index = KeywordIndex()
    index.create(conn)
    assert dict(conn.execute("SELECT key, value FROM kw_stats"))["format"] == keyword_index.FORMAT == 4
    assert packings(conn) == {411, 412, 422}  # as format 2 wrote them
    queries = [*QUERIES, "café über", "alpha beta", "zeta eta theta"]

    def check() -> None:
        fresh = sqlite3.connect(":memory:")
        index.create(fresh)
        index.add(fresh, sorted(live.items()))
        for query in queries:
            got, want = index.search(conn, query, 10), index.search(fresh, query, 10)
            assert [d for d, _ in got] == [d for d, _ in want] == [d for d, _ in reference_bm25(live, query, 10)]
            assert np.allclose([s for _, s in got], [s for _, s in want], rtol=1e-12, atol=0)
        assert dict(conn.execute("SELECT key, value FROM kw_stats"))["docs"] == len(live)

    check()
    rng = random.Random(9)
    top = max(max(live), index.highest_tombstone(conn))
    new = dict(zip(range(top + 1, top + 61), random_texts(rng, 60), strict=True))
    index.write(conn, [index.analyse(sorted(new)[:30], [new[d] for d in sorted(new)[:30]]),
                       index.analyse(sorted(new)[30:], [new[d] for d in sorted(new)[30:]])])
    live.update(new)
    assert conn.execute("SELECT COUNT(*) FROM kw_buckets").fetchone()[0] and packings(conn) == {411, 412, 422}
    check()
    gone = [*rng.sample(sorted(new), 10), *rng.sample(sorted(set(live) - set(new)), 25)]
    index.remove(conn, gone)  # from new uint16 blocks, format 2's int32 blocks and kw_docs rows
    for doc in gone:
        del live[doc]
    check()
    for _ in range(3):  # writes of every term: its bucket passes MERGE_AT and is merged, old rows and new as one
        more = dict(zip(range(max(live) + 1, max(live) + 21), random_texts(rng, 20), strict=True))
        index.add(conn, sorted(more.items()))
        live.update(more)
    check()
    assert conn.execute("SELECT COUNT(*) FROM kw_segments").fetchone()[0] == 0  # folded in by the bucket's merge
    index._compact_all(conn)  # every bucket's rows rewritten as one, the old table dropped
    assert {r[0] for r in conn.execute("SELECT DISTINCT seg FROM kw_buckets")} == {0} and packings(conn) == set()
    check()
    conn.close()


def test_a_faiss_knowledge_bank_of_many_commits_ranks_like_brute_force(tmp_path, monkeypatch):
    """Through the FAISS store: transactions of several batches (written together at commit), deletions and
    replacements, terms merged (MERGE_AT 3), reopened. Each commit: top-10 rowids and scores of a brute-force
    BM25 over the live texts; buckets stay within the tiered merge's bound and the blocks use uint16 term ids."""
    from stores.base import Record, StoreContext
    from stores.faiss.store import FaissStore
    from tests.conformance.store_suite import unit

    monkeypatch.setattr(keyword_index, "MERGE_AT", 3)
    rng = random.Random(17)
    store = FaissStore(StoreContext("kb", tmp_path))
    texts: dict[str, str] = {}
    queries = [*QUERIES, "alpha beta gamma delta", "café über", "zeta eta"]
    serial = 0
    for _ in range(8):
        with store.begin() as tx:
            for _ in range(rng.randint(1, 4)):  # batches of one commit
                batch = {f"doc-{serial + i}": text for i, text in enumerate(random_texts(rng, rng.randint(5, 60)))}
                serial += len(batch)
                if texts and rng.random() < 0.5:  # a replacement
                    batch[rng.choice(sorted(texts))] = " ".join(rng.choices(WORDS_AND_MORE, k=6))
                tx.upsert([Record(doc_id, text, {}, unit(i)) for i, (doc_id, text) in enumerate(batch.items())])
                texts.update(batch)
            gone = rng.sample(sorted(texts), k=min(len(texts) // 5, 15))
            assert tx.delete(gone) == len(gone)
            for doc_id in gone:
                del texts[doc_id]
        reopened = FaissStore(StoreContext("kb", tmp_path))
        conn = sqlite3.connect(tmp_path / "store" / "store.sqlite")
        rowid_of = dict(conn.execute("SELECT id, rowid FROM records"))
        conn.close()
        id_of = {rowid: doc_id for doc_id, rowid in rowid_of.items()}
        live = {rowid_of[doc_id]: text for doc_id, text in texts.items()}
        for query in queries:
            got = [(hit.record.id, hit.score) for hit in reopened.keyword(query, 10)]
            expected = reference_bm25(live, query, 10)
            assert [doc for doc, _ in got] == [id_of[d] for d, _ in expected], query
            assert np.allclose([s for _, s in got], [s for _, s in expected]), query
    conn = sqlite3.connect(tmp_path / "store" / "store.sqlite")
    within_tiered_bound(conn, 3)
    assert all(len(terms) == 2 * int(np.frombuffer(counts, "<u4").sum())
               for terms, counts in conn.execute("SELECT term_ids, counts FROM kw_doc_blocks"))
    conn.close()


WORDS_AND_MORE = [*WORDS, "café", "naïve", "Über", "omega"]

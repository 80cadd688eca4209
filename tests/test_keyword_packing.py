"""Narrow keyword bytes (index format 3): document blocks' term ids in uint16 when they fit, and segment rowids as
uint16 gaps after the row's first rowid. Round trips, scores against a brute-force BM25, and indexes holding rows
of the earlier widths (format 2) read, changed and merged like a fresh index."""

from __future__ import annotations

import random
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kb_base.errors import StoreError
from stores.keyword import doc_blocks
from stores.keyword import index as keyword_index
from stores.keyword import packing as segment_packing
from stores.keyword.index import KeywordIndex
from tests.test_keyword_index import WORDS, assert_same, reference_bm25
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


# --- segment rows: rowids as uint16 gaps ---------------------------------------------------------------------------

STEPS = st.one_of(st.integers(1, 300), st.sampled_from([65534, 65535, 65536, 65537]), st.integers(1, 200_000))


@st.composite
def columns(draw):
    """Rows of postings as a write packs them: each row's rowids ascending (or, rarely, shuffled: rowids a store
    gave out of order), steps around 65535, frequencies past 255 and lengths past 65535 now and then."""
    rows = draw(st.lists(st.tuples(st.integers(0, 2**62), st.lists(STEPS, max_size=12), st.booleans()),
                         min_size=1, max_size=8))
    docs: list[int] = []
    bounds = [0]
    for first, steps, shuffled in rows:
        row = list(np.cumsum([first, *steps]).tolist())
        if shuffled and len(row) > 1:
            row = draw(st.permutations(row))
        docs += row
        bounds.append(len(docs))
    n = len(docs)
    tfs = draw(st.lists(st.one_of(st.integers(1, 20), st.integers(1, 70_000)), min_size=n, max_size=n))
    lengths = draw(st.lists(st.one_of(st.integers(1, 500), st.integers(1, 2**20)), min_size=n, max_size=n))
    return (np.asarray(docs, np.int64), np.asarray(tfs, np.int64), np.asarray(lengths, np.int64),
            np.asarray(bounds, np.int64))


@settings(max_examples=300, deadline=None)
@given(columns())
def test_rows_round_trip_and_gap_exactly_the_rows_whose_steps_fit(column):
    docs, tfs, lengths, bounds = column
    packing = segment_packing.choose(docs, tfs, lengths)
    packed = segment_packing.pack(packing, docs, tfs, lengths)
    order = np.random.default_rng(int(docs[0] % 1000)).permutation(bounds.size - 1)  # rows in any order
    rows = list(segment_packing.rows(packing, *packed, bounds[:-1][order], bounds[1:][order]))
    for (row_docs, row_tfs, row_lengths, row_packing, base), r in zip(rows, order.tolist(), strict=True):
        s, e = int(bounds[r]), int(bounds[r + 1])
        steps = np.diff(docs[s:e])
        fits = bool(np.all((steps >= 0) & (steps <= 65535)))
        assert row_packing == (segment_packing.GAPS16 * 100 + packing % 100 if fits else packing)
        assert base == (int(docs[s]) if fits else 0)
        assert len(bytes(row_docs)) == (2 * (e - s - 1) if fits else (packing // 100) * (e - s))
        got = segment_packing.unpack(row_packing, bytes(row_docs), bytes(row_tfs), bytes(row_lengths), base)
        assert np.array_equal(got[0].astype(np.int64), docs[s:e])
        assert np.array_equal(got[1].astype(np.int64), tfs[s:e])
        assert np.array_equal(got[2].astype(np.int64), lengths[s:e])
        # a merge's single row packs the same way
        single = segment_packing.row(docs[s:e], tfs[s:e], lengths[s:e])
        assert segment_packing.unpack(single[3], *single[:3], single[4])[0].tolist() == docs[s:e].tolist()
        assert single[3] // 100 == segment_packing.GAPS16 or not fits


def test_a_rowid_gap_of_65535_is_gapped_and_65536_is_not(conn):
    index = KeywordIndex()
    index.create(conn)
    live = {1: "alpha beta", 65536: "alpha", 65537: "beta", 131073: "beta gamma"}
    index.add(conn, sorted(live.items()))
    packing = dict(conn.execute("SELECT t.term, s.packing FROM kw_segments s JOIN kw_terms t ON t.id = s.term_id"))
    assert packing == {"alpha": 211, "beta": 411, "gamma": 211}  # steps 65535; 65536 then 65536
    assert_same(index, conn, live, ["alpha", "beta", "gamma", "alpha gamma"])


# --- whole indexes: brute-force BM25, and rows of the earlier widths beside the new ones ---------------------------


def as_format2(conn: sqlite3.Connection) -> None:
    """Rewrite every row as format 2 wrote it: segments int64 / uint32 / uint32 (packing 844, no base), document
    blocks' term ids int32."""
    rows = conn.execute("SELECT rowid, packing, docs, tfs, lengths, doc_base FROM kw_segments").fetchall()
    for rowid, *row in rows:
        docs, tfs, lengths = segment_packing.unpack(*row)
        conn.execute("UPDATE kw_segments SET docs = ?, tfs = ?, lengths = ?, packing = 844, doc_base = 0 "
                     "WHERE rowid = ?", (docs.astype("<i8").tobytes(), tfs.astype("<u4").tobytes(),
                                         lengths.astype("<u4").tobytes(), rowid))
    for first, terms, counts in conn.execute("SELECT first_doc, term_ids, counts FROM kw_doc_blocks").fetchall():
        if len(terms) == 2 * int(np.frombuffer(counts, "<u4").sum()):
            conn.execute("UPDATE kw_doc_blocks SET term_ids = ? WHERE first_doc = ?",
                         (np.frombuffer(terms, "<u2").astype("<i4").tobytes(), first))


def packings(conn: sqlite3.Connection) -> set[int]:
    return {r[0] for r in conn.execute("SELECT DISTINCT packing FROM kw_segments")}


@pytest.mark.parametrize("old_rows", ["none", "rewritten midway"])
def test_history_of_batched_writes_removals_and_merges_matches_brute_force(tmp_path, monkeypatch, old_rows):
    """Several batches per write (one combined segment each), removals, merges (MERGE_AT 3), a full compaction,
    rowids jumping past 65535 between and within batches; with ``old_rows``, every row is rewritten in format 2's
    widths halfway, and the history goes on over them. Each step: the same top-10 as a brute-force BM25, and the
    very same floats as the same history kept in format 3 throughout."""
    monkeypatch.setattr(keyword_index, "MERGE_AT", 3)
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
    seen: set[int] = set()  # docs digits of the rows written
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
            assert 844 in packings(mixed) and packings(mixed) - {844}
        seen |= {p // 100 for p in packings(fresh)}
        for query in queries:
            got = index.search(mixed, query, 10)
            assert got == index.search(fresh, query, 10), query
            expected = reference_bm25(live, query, 10)
            assert [d for d, _ in got] == [d for d, _ in expected], query
            assert np.allclose([s for _, s in got], [s for _, s in expected]), query
    assert seen == {segment_packing.GAPS16, 4}  # rows gapped, and rows with a step past 65535
    for conn in (mixed, fresh):  # half the documents gone, then every segment rewritten (as past 10k tombstones)
        index.remove(conn, sorted(live)[: len(live) // 2 + 1])
        index._compact_all(conn)
    for doc in sorted(live)[: len(live) // 2 + 1]:
        del live[doc]
    assert packings(mixed) == packings(fresh) and 844 not in packings(mixed)
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
    assert dict(conn.execute("SELECT key, value FROM kw_stats"))["format"] == keyword_index.FORMAT == 3
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
    assert segment_packing.GAPS16 in {p // 100 for p in packings(conn)} and packings(conn) & {411, 412, 422}
    check()
    gone = [*rng.sample(sorted(new), 10), *rng.sample(sorted(set(live) - set(new)), 25)]
    index.remove(conn, gone)  # from new uint16 blocks, format 2's int32 blocks and kw_docs rows
    for doc in gone:
        del live[doc]
    check()
    for _ in range(3):  # writes of every term: each passes MERGE_AT and is merged, old rows and new as one
        more = dict(zip(range(max(live) + 1, max(live) + 21), random_texts(rng, 20), strict=True))
        index.add(conn, sorted(more.items()))
        live.update(more)
    check()
    index._compact_all(conn)  # every term's rows rewritten as one (gapped unless a step passes 65535)
    assert {r[0] for r in conn.execute("SELECT DISTINCT seg FROM kw_segments")} == {0}
    check()
    conn.close()


def test_a_faiss_knowledge_bank_of_many_commits_ranks_like_brute_force(tmp_path, monkeypatch):
    """Through the FAISS store: transactions of several batches (written together at commit), deletions and
    replacements, terms merged (MERGE_AT 3), reopened. Each commit: top-10 rowids and scores of a brute-force
    BM25 over the live texts; the segments use gapped rowids and the blocks uint16 term ids."""
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
    assert segment_packing.GAPS16 in {r[0] // 100 for r in conn.execute("SELECT packing FROM kw_segments")}
    assert conn.execute("SELECT MAX(segments) FROM kw_terms").fetchone()[0] < 3
    assert all(len(terms) == 2 * int(np.frombuffer(counts, "<u4").sum())
               for terms, counts in conn.execute("SELECT term_ids, counts FROM kw_doc_blocks"))
    conn.close()


WORDS_AND_MORE = [*WORDS, "café", "naïve", "Über", "omega"]

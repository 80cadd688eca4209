"""Narrow keyword bytes (index format 3): document blocks' term ids in uint16 when they fit, and segment rowids as
uint16 gaps after the row's first rowid. Round trips, scores against a brute-force BM25, and indexes holding rows
of the earlier widths (format 2) read, changed and merged like a fresh index."""

from __future__ import annotations

import random
import sqlite3

import numpy as np
import pytest

from kb.errors import StoreError
from stores import doc_blocks
from stores.keyword_index import KeywordIndex
from tests.test_keyword_index import assert_same
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

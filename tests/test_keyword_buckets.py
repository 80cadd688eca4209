"""Index format 4's storage: postings in bucket rows (``stores.keyword.postings``: uint16 steps, escapes, widths)
and the term dictionary in sorted blocks (``stores.keyword.lexicon``): round trips against the plain arrays, and
an index written by format 3's code (fixtures/keyword_index_format3.sqlite) read, changed and merged."""

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
from stores.keyword import doc_blocks, lexicon
from stores.keyword import index as keyword_index
from stores.keyword import postings as keyword_postings
from stores.keyword.index import KeywordIndex
from tests.test_keyword_index import assert_same, reference_bm25
from tests.test_keyword_ingest import QUERIES, random_texts

STEPS = st.one_of(st.integers(1, 300), st.sampled_from([65534, 65535, 65536, 65537]), st.integers(1, 200_000))


@st.composite
def terms_postings(draw):
    """Postings grouped by term as a write lays them out: term ids ascending over a few buckets, each term's
    rowids ascending (or, rarely, shuffled: rowids a store gave out of order), steps around 65535, first rowids
    from 0 to 2**62, frequencies past 255 and lengths past 65535 now and then."""
    groups = draw(st.lists(st.tuples(st.integers(0, 2**62), st.lists(STEPS, max_size=12), st.booleans()),
                           min_size=1, max_size=10))
    term_ids = np.cumsum(draw(st.lists(st.integers(1, 300), min_size=len(groups), max_size=len(groups))))
    docs: list[int] = []
    bounds = [0]
    for first, steps, shuffled in groups:
        group = np.cumsum([first % (2**62 - 200_000 * 13), *steps]).tolist()
        if shuffled and len(group) > 1:
            group = draw(st.permutations(group))
        docs += group
        bounds.append(len(docs))
    n = len(docs)
    tfs = draw(st.lists(st.one_of(st.integers(1, 20), st.integers(1, 70_000)), min_size=n, max_size=n))
    lengths = draw(st.lists(st.one_of(st.integers(1, 500), st.integers(1, 2**20)), min_size=n, max_size=n))
    return (term_ids.astype(np.int64), np.asarray(bounds, np.int64), np.asarray(docs, np.int64),
            np.asarray(tfs, np.int64), np.asarray(lengths, np.int64))


def stored(row: keyword_postings.Row) -> keyword_postings._Decoded:
    """A row as it reads back from SQLite: every array as the bytes of its blob."""
    return keyword_postings._Decoded(*(bytes(column) for column in row[2:9]), row[9])


@settings(max_examples=300, deadline=None)
@given(terms_postings(), st.sampled_from([2, 8]))
def test_bucket_rows_round_trip_and_escape_exactly_the_steps_that_do_not_fit(data, bucket_bits):
    term_ids, bounds, docs, tfs, lengths = data
    saved, keyword_postings.BUCKET_BITS = keyword_postings.BUCKET_BITS, bucket_bits
    try:
        rows = keyword_postings.encode(7, term_ids, bounds, docs, tfs, lengths)
    finally:
        keyword_postings.BUCKET_BITS = saved
    buckets = [row[0] for row in rows]
    assert buckets == sorted(set((term_ids >> bucket_bits).tolist())) and {row[1] for row in rows} == {7}
    packing = {row[9] for row in rows}
    assert packing == {(1 if tfs.max() < 256 else 2 if tfs.max() < 65536 else 4) * 10
                       + (1 if lengths.max() < 256 else 2 if lengths.max() < 65536 else 4)}
    expected = {t: (docs[s:e], tfs[s:e], lengths[s:e]) for t, s, e in
                zip(term_ids.tolist(), bounds[:-1].tolist(), bounds[1:].tolist(), strict=True)}
    seen = []
    for row in rows:
        decoded = stored(row)
        whole = decoded.everything()
        at = 0
        for term in decoded.terms.tolist():
            got = decoded.term(term)
            assert got is not None and all(np.array_equal(g, w) for g, w in zip(got, expected[term], strict=True))
            size = expected[term][0].size
            assert np.all(whole[0][at : at + size] == term)
            assert all(np.array_equal(g[at : at + size], w) for g, w in zip(whole[1:], expected[term], strict=True))
            # escaped: where the step from the posting before (a term's first: its rowid) is not 0..65535
            steps = np.diff(expected[term][0], prepend=0)
            assert (decoded.escapes[(decoded.escapes >= at) & (decoded.escapes < at + size)] - at).tolist() == \
                np.flatnonzero((steps < 0) | (steps > 65535)).tolist()
            at += size
            seen.append(term)
        assert decoded.term(int(decoded.terms[-1]) + 1) is None
    assert seen == term_ids.tolist()


def test_a_rowid_step_of_65535_is_a_gap_and_65536_is_escaped(tmp_path):
    conn = sqlite3.connect(tmp_path / "kw.sqlite")
    index = KeywordIndex()
    index.create(conn)
    live = {1: "alpha beta", 65536: "alpha", 65537: "beta", 131073: "beta gamma"}
    index.add(conn, sorted(live.items()))
    ((escapes, escaped, gaps),) = conn.execute("SELECT escapes, escaped, gaps FROM kw_buckets").fetchall()
    # alpha: 1, +65535; beta: 1, +65536, +65536 (both escaped); gamma: 131073 (its first rowid, past 65535)
    assert np.frombuffer(gaps, "<u2").tolist() == [1, 65535, 1, 0, 0, 0]
    assert np.frombuffer(escapes, "<u4").tolist() == [3, 4, 5]
    assert np.frombuffer(escaped, "<i8").tolist() == [65536, 65536, 131073]
    assert_same(index, conn, live, ["alpha", "beta", "gamma", "alpha gamma"])


# --- the term dictionary -------------------------------------------------------------------------------------


def dictionary(conn: sqlite3.Connection) -> dict[str, int]:
    """Every block, checked: terms sorted within and across blocks, keyed by their first, at most BLOCK_TERMS."""
    out: dict[str, int] = {}
    for first, terms, ids in conn.execute("SELECT first_term, terms, ids FROM kw_lexicon ORDER BY first_term"):
        words = terms.decode().split("\n")
        assert words[0] == first and words == sorted(words) and len(words) <= lexicon.BLOCK_TERMS
        assert not out or max(out) < first
        out.update(zip(words, np.frombuffer(ids, "<i4").tolist(), strict=True))
    return out


@pytest.mark.parametrize("few_to_assign", [0, 50, 10**6])  # the block list read first; either; a query a term
def test_lexicon_blocks_take_new_terms_anywhere_and_find_every_term(tmp_path, monkeypatch, few_to_assign):
    monkeypatch.setattr(lexicon, "BLOCK_TERMS", 4)
    monkeypatch.setattr(lexicon, "_FEW_TO_ASSIGN", few_to_assign)
    conn = sqlite3.connect(tmp_path / "kw.sqlite")
    lexicon.create(conn)
    rng = random.Random(4)
    pool = sorted({"".join(rng.choices("abcdefgh", k=rng.randint(1, 6))) for _ in range(400)} | {"é", "ü_2"})
    reference: dict[str, int] = {}
    next_id = 1
    for size in (30, 1, 0, 5, 120, 2, 300, 60):  # first load, single terms, before the first block, most terms
        terms = sorted(rng.sample(pool, size))
        if size == 2:
            terms = ["", "0"]  # sorts before every block
        ids, new = lexicon.assign(conn, terms, next_id)
        assert new == [t for t in terms if t not in reference]
        assert [ids[t] for t in new] == list(range(next_id, next_id + len(new)))  # sorted order, consecutive
        assert all(ids[t] == reference[t] for t in terms if t not in new)
        reference.update((t, ids[t]) for t in new)
        next_id += len(new)
        assert dictionary(conn) == reference
        asked = rng.sample(pool, 40) + ["nothere", "zzz", ""]
        for few in (asked[:3], asked):  # a block query per term, and the block list read first
            assert lexicon.lookup(conn, few) == {t: reference[t] for t in few if t in reference}


def test_document_blocks_fit_only_clear_of_every_block(tmp_path):
    conn = sqlite3.connect(tmp_path / "kw.sqlite")
    doc_blocks.create(conn)
    for first, last in ((10, 19), (30, 39), (50, 50)):
        rowids = np.arange(first, last + 1, dtype=np.int64)
        assert doc_blocks.fits(conn, rowids)
        doc_blocks.write(conn, rowids, np.ones(rowids.size), np.zeros(rowids.size, dtype=np.int64),
                         np.zeros(0, dtype=np.int64))
    clear = [[1, 9], [20, 29], [40, 49], [51, 60], [25]]
    overlapping = [[5, 10], [19, 20], [15], [9, 30], [1, 100], [39, 40], [50], [45, 55], [20, 35]]
    for rowids in clear:
        assert doc_blocks.fits(conn, np.asarray(rowids, dtype=np.int64)), rowids
    for rowids in overlapping:
        assert not doc_blocks.fits(conn, np.asarray(rowids, dtype=np.int64)), rowids
    assert not doc_blocks.fits(conn, np.asarray([22, 21], dtype=np.int64))  # not ascending


# --- an index written by format 3's code ---------------------------------------------------------------------

FORMAT3 = Path(__file__).resolve().parent.parent / "fixtures" / "keyword_index_format3.sqlite"


def test_an_index_written_by_format_3_code_reads_changes_and_merges_like_a_fresh_one(tmp_path, monkeypatch):
    """fixtures/keyword_index_format3.sqlite (see its .py: gapped and full-width segment rows, merged terms,
    tombstones, uint16 blocks, kw_docs rows): its term rows become lexicon blocks at open, its segment rows are
    read beside new bucket rows until their buckets merge; it ranks like a fresh index of the same live texts and
    like a brute-force BM25 all along."""
    monkeypatch.setattr(keyword_index, "MERGE_AT", 3)
    monkeypatch.setattr(keyword_postings, "BUCKET_BITS", 3)  # 20 terms: three buckets, merged one by one
    path = tmp_path / "old.sqlite"
    shutil.copy(FORMAT3, path)
    conn = sqlite3.connect(path)
    live = dict(conn.execute("SELECT doc, text FROM fixture_live"))
    terms = dict(conn.execute("SELECT term, id FROM kw_terms"))
    segment_rows = conn.execute("SELECT COUNT(*) FROM kw_segments").fetchone()[0]
    index = KeywordIndex()
    index.create(conn)
    assert dictionary(conn) == terms
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    assert "kw_terms" not in tables and conn.execute("SELECT COUNT(*) FROM kw_segments").fetchone()[0] == segment_rows
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
    rng = random.Random(12)
    gone = rng.sample(sorted(live), 30)  # from uint16 blocks and kw_docs rows
    index.remove(conn, gone)
    for doc in gone:
        del live[doc]
    check()
    top = max(max(live), index.highest_tombstone(conn))
    new = dict(zip(range(top + 1, top + 41), random_texts(rng, 40), strict=True))
    index.add(conn, sorted(new.items()))
    live.update(new)
    assert conn.execute("SELECT COUNT(*) FROM kw_segments").fetchone()[0] == segment_rows  # not rewritten yet
    check()
    for _ in range(2):  # every bucket passes MERGE_AT: merged, the old rows of its terms with it
        more = dict(zip(range(max(live) + 1, max(live) + 31), random_texts(rng, 30), strict=True))
        index.add(conn, sorted(more.items()))
        live.update(more)
    assert conn.execute("SELECT COUNT(*) FROM kw_segments").fetchone()[0] < segment_rows
    check()
    index._compact_all(conn)
    assert conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'kw_segments'").fetchone() is None
    assert conn.execute("SELECT COUNT(*) FROM kw_deleted").fetchone()[0] == 0
    check()
    conn.close()


@pytest.mark.parametrize("rowid_base", [1, 2**33])
@pytest.mark.parametrize("whole_row", [4096, 0])
def test_a_bulk_write_of_many_terms_makes_a_row_per_bucket(tmp_path, monkeypatch, rowid_base, whole_row):
    """A write of thousands of new terms: one lexicon block per BLOCK_TERMS terms and one postings row per bucket,
    none per term; every term found again, scores as a brute-force BM25 (rows read whole, or by slices)."""
    monkeypatch.setattr(keyword_postings, "_WHOLE_ROW", whole_row)
    conn = sqlite3.connect(tmp_path / "kw.sqlite")
    index = KeywordIndex()
    index.create(conn)
    rng = random.Random(7)
    vocabulary = [f"w{n:05d}x" for n in range(5000)]  # digits keep the stemmer away: 5000 distinct terms
    live = {rowid_base + i: " ".join(rng.choices(vocabulary, k=30)) for i in range(2000)}
    index.write(conn, [index.analyse(sorted(live), [live[d] for d in sorted(live)])])
    terms = len(dictionary(conn))
    assert terms == len({w for text in live.values() for w in text.split()})
    assert conn.execute("SELECT COUNT(*) FROM kw_lexicon").fetchone()[0] == -(-terms // lexicon.BLOCK_TERMS)
    buckets = conn.execute("SELECT COUNT(*) FROM kw_buckets").fetchone()[0]
    assert buckets == -(-terms // 2**keyword_postings.BUCKET_BITS)
    assert_same(index, conn, live, [rng.choice(vocabulary) + " " + rng.choice(vocabulary) for _ in range(20)])


def test_queried_term_ids_are_cached_per_generation(tmp_path):
    """A committed view's queries keep their terms' ids (absent ones too) for that generation only: a term added
    by the next commit is found under the next generation's key, and a clear's new ids replace the old ones."""
    conn = sqlite3.connect(tmp_path / "kw.sqlite")
    index = KeywordIndex()
    index.create(conn)
    index.add(conn, [(1, "alpha beta"), (2, "beta gamma")])
    conn.commit()
    assert [d for d, _ in index.search(conn, "alpha zeta", 5, cache_key=1)] == [1]  # zeta: cached as absent
    index.add(conn, [(3, "zeta zeta alpha")])
    conn.commit()
    assert [d for d, _ in index.search(conn, "alpha zeta", 5, cache_key=2)] == [3, 1]
    assert [d for d, _ in index.search(conn, "zeta", 5, cache_key=None)] == [3]
    index.clear(conn)
    index.add(conn, [(7, "zeta omega"), (8, "omega")])  # ids given anew, from where the counter was
    conn.commit()
    assert [d for d, _ in index.search(conn, "omega", 5, cache_key=3)] == [8, 7]
    assert [d for d, _ in index.search(conn, "alpha zeta", 5, cache_key=3)] == [7]
    assert_same(index, conn, {7: "zeta omega", 8: "omega"}, ["alpha zeta", "omega", "zeta"])


def test_an_index_of_a_later_format_is_refused_not_misread(tmp_path):
    conn = sqlite3.connect(tmp_path / "kw.sqlite")
    index = KeywordIndex()
    index.create(conn)
    index.add(conn, [(1, "alpha")])
    conn.execute("UPDATE kw_stats SET value = ? WHERE key = 'format'", (keyword_index.FORMAT + 1,))
    with pytest.raises(StoreError, match=f"format {keyword_index.FORMAT + 1} is newer"):
        index.create(conn)
    assert conn.execute("SELECT COUNT(*) FROM kw_buckets").fetchone()[0] == 1  # left as it was

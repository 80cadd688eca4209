"""Buffered keyword batches grouped as they arrive and combined at write time (``CombinedRuns``), and a FAISS
writer that hands them over on its analysis threads: the postings are exactly those of ``combined_columns``."""

from __future__ import annotations

import random
import sqlite3
import threading
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stores.base import Record, StoreContext
from stores.faiss.store import FaissStore
from stores.keyword import combine as keyword_combine
from stores.keyword.batch import AnalysedBatch, combined_columns
from stores.keyword.combine import CombinedBatches, CombinedRuns, documents_in
from stores.keyword.index import KeywordIndex
from tests.conformance.store_suite import unit
from tests.test_keyword_index import WORDS, assert_same

INDEX = KeywordIndex()
# texts of every kind a batch can hold: terms, stop words only, nothing, accents (the per-text path), a frequency
# past 255 (widens the frequencies), long documents (widen the lengths past 255)
TEXTS = st.one_of(
    st.lists(st.sampled_from([*WORDS, "the", "of", "café", "Über", "naïve"]), max_size=12).map(" ".join),
    st.sampled_from(["", "the a an", "   ", "alpha " * 300, " ".join(WORDS * 20)]),
)


def analysed(batches: list[list[str]], first_rowid: int) -> list[AnalysedBatch | None]:
    """Each batch analysed, rowids ascending from one batch to the next (as a writer gives them)."""
    out: list[AnalysedBatch | None] = []
    rowid = first_rowid
    for texts in batches:
        out.append(INDEX.analyse(range(rowid, rowid + len(texts)), texts) if texts else None)
        rowid += len(texts) + 3  # gaps between batches, as replacements leave
    return out


def global_ids_for(vocabulary: list[str], how: str, rng: random.Random) -> dict[str, int]:
    ids = list(range(5, 5 + len(vocabulary)))
    if how == "permuted":  # terms the index already had, ids in any order
        rng.shuffle(ids)
    return dict(zip(vocabulary, ids, strict=True))


def assert_combines_like_write_time(batches: list[AnalysedBatch | None], how: str, seed: int) -> None:
    # grouped in one go (the default for small batches), every batch a run of its own (the runs combined at
    # the end), and groups of a few documents: the same rows every way
    for run_documents in (10_000, 1, 7):
        saved, keyword_combine._RUN_DOCUMENTS = keyword_combine._RUN_DOCUMENTS, run_documents
        try:
            assert_combination(CombinedBatches.of(batches), batches, how, seed)
        finally:
            keyword_combine._RUN_DOCUMENTS = saved


def assert_combination(combined: CombinedBatches, batches: list[AnalysedBatch | None], how: str,
                       seed: int) -> None:
    ids = global_ids_for(combined.vocabulary, how, random.Random(seed))
    global_ids = np.asarray([ids[term] for term in combined.vocabulary], dtype=np.int64)
    present = [b for b in batches if b is not None and b.size]
    assert combined.size == sum(b.size for b in present)
    assert combined.length == sum(int(b.lengths.sum()) for b in present)
    assert combined.postings == sum(b.postings for b in present)
    assert np.array_equal(combined.rowids(), np.concatenate([b.rowids for b in present]) if present
                          else np.zeros(0, np.int64))
    local_to_global = [np.asarray([ids[t] for t in b.vocabulary], dtype=np.int64) for b in present]
    term_ids, bounds, *columns = combined.by_term(global_ids)
    if any(b.postings for b in present):
        terms, starts, ends, expected, _ = combined_columns(present, local_to_global)
    else:
        terms = starts = ends = np.zeros(0, np.int64)
        expected = (terms, terms, terms)
    # the database's term order, each term's postings batch after batch, at the write's widths
    assert term_ids.tolist() == terms.tolist() == sorted(term_ids.tolist())
    assert np.diff(bounds).tolist() == (ends - starts).tolist() and bounds[-1] == combined.postings
    for got, want in zip(columns, expected, strict=True):
        assert got.tolist() == want.tolist()
    documents = list(documents_in(combined.documents, global_ids))
    assert len(documents) == len(present)
    for batch, globals_, (docs, doc_terms) in zip(present, local_to_global, documents, strict=True):
        assert np.array_equal(docs.rowids, batch.rowids) and np.array_equal(docs.doc_counts, batch.doc_counts)
        assert np.array_equal(doc_terms, globals_[batch.doc_terms])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches=st.lists(st.lists(TEXTS, max_size=8), min_size=1, max_size=6),
       how=st.sampled_from(["shifted", "permuted"]), wide_rowids=st.booleans(), seed=st.integers(0, 1000))
def test_combining_as_batches_arrive_equals_combining_at_write_time(batches, how, wide_rowids, seed):
    """Across packings (a later batch may widen them), term-less and empty batches, batches of new terms only
    and of terms seen before, and the index's ids a shift of the running ones or any permutation."""
    first = 2**32 - 5 if wide_rowids else 1  # rowids crossing 2**32 widen the document array mid-way
    assert_combines_like_write_time(analysed(batches, first), how, seed)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches=st.lists(st.lists(TEXTS, max_size=8), min_size=1, max_size=6), seed=st.integers(0, 1000))
def test_combined_columns_put_each_terms_postings_batch_after_batch(batches, seed):
    """``combined_columns`` (a block copy per term group, compiled) against a plain loop: for each term by id,
    its postings from each batch in turn."""
    present = [b for b in analysed(batches, 1) if b is not None and b.size]
    if not present:
        return
    vocabulary = sorted({term for b in present for term in b.vocabulary})
    ids = global_ids_for(vocabulary, "permuted", random.Random(seed))
    global_ids = [np.asarray([ids[t] for t in b.vocabulary], dtype=np.int64) for b in present]
    terms, starts, ends, columns, packing = combined_columns(present, global_ids)
    expected: dict[int, list[list[int]]] = {}
    for batch, globals_ in zip(present, global_ids, strict=True):
        docs, tfs, lengths = (c.tolist() for c in batch.repacked(packing))
        for term, s, e in zip(batch.segment_terms.tolist(), batch.segment_bounds[:-1].tolist(),
                              batch.segment_bounds[1:].tolist(), strict=True):
            postings = expected.setdefault(int(globals_[term]), [[], [], []])
            for column, values in zip(postings, (docs, tfs, lengths), strict=True):
                column.extend(values[s:e])
    assert terms.tolist() == sorted(expected)
    for term, s, e in zip(terms.tolist(), starts.tolist(), ends.tolist(), strict=True):
        assert [c[s:e].tolist() for c in columns] == expected[term]
        assert all(c.dtype == w.dtype for c, w in zip(columns, present[0].repacked(packing), strict=True))


def test_a_later_batch_widens_the_packing_of_earlier_ones():
    batches = analysed([["alpha beta", "gamma"], ["alpha " * 300 + "beta"], [" ".join(WORDS * 4000)]], 1)
    # narrow; frequencies and lengths past 255; lengths past 65535 (see segment_packing)
    assert [b.packing for b in batches if b is not None] == [411, 422, 424]
    combined = CombinedBatches.of(batches)
    assert combined.packing == 424
    assert_combines_like_write_time(batches, "permuted", 1)


def test_a_group_that_fails_to_combine_leaves_the_runs_before_it(monkeypatch):
    """Small batches are combined a group at a time: a group that fails (memory) is lost whole, and what was
    combined before it is left as it was (the writer then refuses to write any of it: see below)."""
    first, second, third, fourth, fifth = analysed(
        [["alpha beta"], ["gamma alpha"], ["delta", "epsilon"], ["zeta"], ["eta alpha"]], 1)
    monkeypatch.setattr(keyword_combine, "_RUN_DOCUMENTS", 2)
    runs = CombinedRuns()
    runs.add(first)
    runs.add(second)  # a group of two batches: combined into a run
    real = CombinedBatches.from_batches

    def out_of_memory(batches):
        raise MemoryError("no memory for the group")

    monkeypatch.setattr(CombinedBatches, "from_batches", out_of_memory)
    runs.add(third)  # a group of one batch (two documents) is a run as it is: nothing to combine
    runs.add(fourth)
    with pytest.raises(MemoryError):
        runs.add(fifth)  # closes the group of the fourth and fifth batches
    monkeypatch.setattr(CombinedBatches, "from_batches", real)
    combined = runs.combined()
    expected = CombinedBatches.of([first, second, third])
    assert combined.size == 4 and combined.vocabulary == expected.vocabulary
    assert np.array_equal(combined.bounds, expected.bounds)
    assert all(np.array_equal(a, b) for a, b in zip(combined.columns, expected.columns, strict=True))


def test_written_combined_batches_score_like_batches_written_one_by_one(tmp_path):
    """``write`` of several batches (combined) is scored exactly like a write per batch, on an index that
    already holds terms and tombstones."""
    rng = random.Random(5)
    words = [*WORDS, "café", "naïve"]
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(0, 12))) for _ in range(400)]
    together, apart = sqlite3.connect(tmp_path / "together.sqlite"), sqlite3.connect(tmp_path / "apart.sqlite")
    for conn in (together, apart):
        INDEX.create(conn)
        INDEX.add(conn, [(i + 1, texts[i]) for i in range(100)])
        INDEX.remove(conn, [3, 50, 77])
    parts = [(start, texts[start : start + 60]) for start in range(100, 400, 60)]
    INDEX.write(together, [INDEX.analyse(range(start + 1, start + 1 + len(part)), part) for start, part in parts])
    for start, part in parts:
        INDEX.add(apart, list(zip(range(start + 1, start + 1 + len(part)), part, strict=True)))
    queries = ["alpha", "beta gamma", "delta alpha zeta", "cafe naive", "omicron pi rho", "mu nu xi kappa"]
    assert [INDEX.search(together, q, 10) for q in queries] == [INDEX.search(apart, q, 10) for q in queries]
    live = {i + 1: text for i, text in enumerate(texts) if i + 1 not in (3, 50, 77)}
    assert_same(INDEX, together, live, queries)


def test_new_terms_get_ids_in_sorted_order_as_before(tmp_path):
    """A query's terms are scored in id order: new terms numbered in sorted order, as the previous code did, keep
    the floating-point sums of a knowledge bank written by either version identical to the bit."""
    conn = sqlite3.connect(tmp_path / "kw.sqlite")
    INDEX.create(conn)
    INDEX.add(conn, [(1, "mike alpha"), (2, "alpha")])
    before = lexicon_ids(conn)
    # first appearances: zulu, mike (known), bravo, yankee, charlie
    batches = analysed([["zulu mike", "bravo"], ["yankee alpha zulu"], ["charlie"]], 10)
    INDEX.write_combined(conn, CombinedBatches.of(batches))
    ids = lexicon_ids(conn)
    assert {t: ids[t] for t in before} == before
    new = sorted(set(ids) - set(before))
    assert new == ["bravo", "charli", "yanke", "zulu"]  # (stemmed)
    assert [ids[t] for t in new] == sorted(ids[t] for t in new) and min(ids[t] for t in new) > max(before.values())
    assert INDEX.search(conn, "zulu yankee bravo", 3)[0][0] == 15  # "yankee alpha zulu" (rowids leave gaps)


def lexicon_ids(conn: sqlite3.Connection) -> dict[str, int]:
    """Every term's id, read from the lexicon's blocks (in order: terms ascending from block to block)."""
    out: dict[str, int] = {}
    for terms, ids in conn.execute("SELECT terms, ids FROM kw_lexicon ORDER BY first_term"):
        words = terms.decode().split("\n")
        assert words == sorted(words) and (not out or max(out) < words[0])
        out.update(zip(words, np.frombuffer(ids, "<i4").tolist(), strict=True))
    return out


# --- through a FAISS writer ----------------------------------------------------------------------------------


@pytest.fixture
def threaded(monkeypatch):
    from stores.keyword import pending as pending_keywords

    monkeypatch.setattr(pending_keywords, "_THREAD_AT", 1)  # every batch on a helper thread


def records(start: int, texts: list[str]) -> list[Record]:
    return [Record(f"d{start + i}", text, {}, unit(start + i)) for i, text in enumerate(texts)]


def keyword_ids(reader, query: str) -> list[str]:
    return [hit.record.id for hit in reader.keyword(query, 50)]


def merge_threads(monkeypatch) -> list[str]:
    """The names of the threads that merge batches, in order."""
    merged_on: list[str] = []
    real = CombinedRuns.add

    def add(self, batch):
        merged_on.append(threading.current_thread().name)
        real(self, batch)

    monkeypatch.setattr(CombinedRuns, "add", add)
    monkeypatch.setattr(keyword_combine, "_RUN_DOCUMENTS", 1)  # every batch a run of its own (no grouping)
    return merged_on


def test_batches_are_merged_on_the_analysis_threads_not_at_commit(tmp_path, threaded, monkeypatch):
    merged_on = merge_threads(monkeypatch)
    store = FaissStore(StoreContext("kb", tmp_path))
    with store.begin() as tx:
        for start in range(0, 50, 10):
            tx.upsert(records(start, [f"alpha beta{start}"] * 10))
    # batches 1-4 merged on analysis threads (their own, or the next batch's, whichever saw them kept); the last
    # one on its own thread if it was kept before its analysis ended, else by the commit
    assert len(merged_on) == 5 and set(merged_on[:4]) == {"kb-keyword-analysis"}
    assert len(keyword_ids(store, "alpha")) == 50 and len(keyword_ids(store, "beta20")) == 10


def test_a_batch_kept_while_it_is_analysed_is_merged_by_its_own_thread(tmp_path, threaded, monkeypatch):
    """The usual case at scale (an analysis outlasts the records' inserts): the commit merges nothing."""
    merged_on = merge_threads(monkeypatch)
    real = KeywordIndex.analyse
    analysing = [threading.Event() for _ in range(3)]

    def slow(self, rowids, texts):
        analysing[len([e for e in analysing if e.is_set()])].set()
        time.sleep(0.3)  # still analysing when the upsert keeps the batch
        return real(self, rowids, texts)

    monkeypatch.setattr(KeywordIndex, "analyse", slow)
    store = FaissStore(StoreContext("kb", tmp_path))
    with store.begin() as tx:
        for i, start in enumerate(range(0, 30, 10)):
            tx.upsert(records(start, [f"alpha beta{start}"] * 10))
            assert analysing[i].wait(5)
    assert merged_on == ["kb-keyword-analysis"] * 3
    assert len(keyword_ids(store, "alpha")) == 30 and len(keyword_ids(store, "beta20")) == 10


def slow_first_analysis(monkeypatch) -> list[str]:
    """The first batch's analysis takes a while: the helper thread falls behind. Returns who analysed what."""
    analysed_on: list[str] = []
    real = KeywordIndex.analyse

    def analyse(self, rowids, texts):
        analysed_on.append(threading.current_thread().name)
        if len(analysed_on) == 1:
            time.sleep(0.5)
        return real(self, rowids, texts)

    monkeypatch.setattr(KeywordIndex, "analyse", analyse)
    return analysed_on


def test_a_commit_analyses_the_batches_the_helper_thread_has_not_begun(tmp_path, threaded, monkeypatch):
    """Instead of waiting for the helper thread to get to them: the commit would only wait otherwise."""
    analysed_on = slow_first_analysis(monkeypatch)
    store = FaissStore(StoreContext("kb", tmp_path))
    with store.begin() as tx:
        for start in range(0, 40, 10):
            tx.upsert(records(start, [f"alpha beta{start} gamma{start % 20}"] * 10))
    me = threading.current_thread().name
    assert analysed_on == ["kb-keyword-analysis", me, me, me]
    assert len(keyword_ids(store, "alpha")) == 40 and len(keyword_ids(store, "beta30")) == 10
    assert len(keyword_ids(store, "gamma10")) == 20
    conn = sqlite3.connect(tmp_path / "store" / "store.sqlite")
    live = {rowid: text for rowid, text in conn.execute("SELECT rowid, text FROM records")}
    assert_same(INDEX, conn, live, ["alpha", "beta20 gamma0", "gamma10 beta0"])
    conn.close()


def test_a_rollback_drops_the_batches_the_helper_thread_has_not_begun(tmp_path, threaded, monkeypatch):
    analysed_on = slow_first_analysis(monkeypatch)
    store = FaissStore(StoreContext("kb", tmp_path))
    tx = store.begin()
    for start in range(0, 40, 10):
        tx.upsert(records(start, ["alpha"] * 10))
    tx.rollback()
    assert analysed_on == ["kb-keyword-analysis"]  # the three others never analysed
    assert store.count() == 0 and keyword_ids(store, "alpha") == []


def test_a_rolled_back_writer_leaves_nothing_of_its_merged_batches(tmp_path, threaded):
    store = FaissStore(StoreContext("kb", tmp_path))
    store.upsert(records(0, ["alpha", "beta"]))
    tx = store.begin()
    for start in range(10, 60, 10):
        tx.upsert(records(start, ["alpha gamma"] * 10))
    assert len(keyword_ids(tx, "gamma")) == 50  # read: every batch merged and written into the transaction
    tx.upsert(records(60, ["gamma delta"] * 10))  # merged on a thread, not written
    tx.rollback()
    assert keyword_ids(store, "alpha") == ["d0"] and keyword_ids(store, "gamma") == []
    with store.begin() as tx:  # the next writer starts from an empty combination
        tx.upsert(records(100, ["delta"] * 3))
        tx.upsert(records(200, ["delta epsilon"] * 3))
    assert sorted(keyword_ids(store, "delta")) == sorted(f"d{i}" for i in [100, 101, 102, 200, 201, 202])
    conn = sqlite3.connect(tmp_path / "store" / "store.sqlite")
    assert dict(conn.execute("SELECT key, value FROM kw_stats"))["docs"] == 8
    conn.close()


def test_a_failed_merge_refuses_the_commit_and_writes_nothing(tmp_path, threaded, monkeypatch):
    store = FaissStore(StoreContext("kb", tmp_path))
    store.upsert(records(0, ["alpha"]))
    real = CombinedBatches.from_batches

    def fails(batches):
        raise MemoryError("no memory for the merge")

    # groups of two batches, combined on the analysis threads; the commit combines the runs
    monkeypatch.setattr(keyword_combine, "_RUN_DOCUMENTS", 15)
    monkeypatch.setattr(CombinedBatches, "from_batches", fails)
    tx = store.begin()
    for start in range(10, 50, 10):
        tx.upsert(records(start, ["alpha beta"] * 10))
    with pytest.raises(MemoryError):
        tx.commit()
    tx.rollback()
    monkeypatch.setattr(CombinedBatches, "from_batches", real)
    reopened = FaissStore(StoreContext("kb", tmp_path))
    assert reopened.count() == 1 and keyword_ids(reopened, "alpha") == ["d0"]

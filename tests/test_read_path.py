"""The fast read path: immutable rowids, the record cache, reads without a snapshot, per-thread OpenMP
settings, documents assembled without re-validation, and the REST edge's JSON handling."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import faiss
import numpy as np
import pytest
from langchain_core.documents import Document

from kb_base.documents import FAST_DOCUMENTS
from kb_base.errors import InvalidInputError
from kb_base.jsonfast import loads_json
from kb_base.search import SearchResult
from stores.base import Record, StoreContext
from stores.faiss.store import FaissStore
from stores.langchain import to_document
from tests.conformance.store_suite import records, unit


def _rowids(store: FaissStore) -> dict[str, int]:
    conn = sqlite3.connect(store.db_path)
    try:
        return dict(conn.execute("SELECT id, rowid FROM records"))
    finally:
        conn.close()


def test_rowids_are_never_reused_after_deletes_and_clear(tmp_path: Path) -> None:
    store = FaissStore(StoreContext("kb", tmp_path))
    store.upsert(records(5))
    seen = set(_rowids(store).values())
    store.delete(["doc-3", "doc-4"])  # the highest rowids
    store.upsert(records(2, start=10))
    fresh = set(_rowids(store).values()) - seen
    assert fresh and min(fresh) > max(seen)
    seen |= fresh
    store.clear()
    store.upsert(records(3, start=20))
    again = set(_rowids(store).values())
    assert min(again) > max(seen), "a cleared store gave out committed rowids again"
    # a replaced record gets a new rowid, so cached content behind the old one can never be stale
    before = _rowids(store)["doc-20"]
    store.upsert([Record("doc-20", "new text", {"v": 2}, unit(20))])
    assert _rowids(store)["doc-20"] > before
    hit = store.similarity(unit(20), 1)[0]
    assert hit.record.text == "new text" and hit.record.metadata == {"v": 2}


def test_a_rolled_back_writer_leaves_the_counter_where_it_was(tmp_path: Path) -> None:
    store = FaissStore(StoreContext("kb", tmp_path))
    store.upsert(records(3))
    tx = store.begin()
    tx.upsert(records(4, start=10))
    tx.rollback()
    store.upsert(records(1, start=30))
    assert _rowids(store)["doc-30"] == 4  # the rolled-back rowids were never visible, so they are free


def test_cached_records_come_back_as_fresh_copies(tmp_path: Path) -> None:
    store = FaissStore(StoreContext("kb", tmp_path))
    store.upsert([Record("a", "alpha", {"tags": ["x"], "n": 1}, unit(1))])
    first = store.similarity(unit(1), 1)[0].record
    assert len(store._records) == 1  # the hit went into the cache
    first.metadata["tags"].append("mutated")
    first.metadata["n"] = 99
    second = store.similarity(unit(1), 1)[0].record
    assert second.metadata == {"tags": ["x"], "n": 1}


def test_a_search_sees_another_connections_commit_at_once(tmp_path: Path) -> None:
    reader = FaissStore(StoreContext("kb", tmp_path))
    writer = FaissStore(StoreContext("kb", tmp_path))  # another driver: another SQLite connection
    writer.upsert(records(3))
    assert [h.record.id for h in reader.similarity(unit(1), 1)] == ["doc-1"]
    writer.upsert([Record("doc-1", "changed", {"i": 1}, unit(1))])
    assert reader.similarity(unit(1), 1)[0].record.text == "changed"
    writer.delete(["doc-1"])
    assert "doc-1" not in {h.record.id for h in reader.similarity(unit(1), 3)}


def test_a_hit_deleted_between_index_and_records_falls_back_to_a_snapshot(tmp_path: Path) -> None:
    store = FaissStore(StoreContext("kb", tmp_path))
    store.upsert(records(4))
    store.similarity(unit(0), 1)  # the committed generation and its index are now known to this thread
    # Simulate the race: a record the (stale) index still returns has vanished from SQLite.
    conn = sqlite3.connect(store.db_path)
    conn.execute("DELETE FROM records WHERE id = 'doc-2'")
    conn.commit()
    conn.close()
    store._records.clear()
    assert store._similarity_without_snapshot(unit(2), 4, None) is None
    hits = store.similarity(unit(2), 4)  # the snapshot path answers, without the vanished record
    assert "doc-2" not in {h.record.id for h in hits} and len(hits) == 3


def test_filtered_search_without_built_columns_takes_the_snapshot_path(tmp_path: Path) -> None:
    from kb_base.filters import parse_filter

    store = FaissStore(StoreContext("kb", tmp_path))
    store.upsert(records(10))
    flt = parse_filter({"even": True})
    assert store._similarity_without_snapshot(unit(1), 3, flt) is None  # columns not built yet
    hits = store.similarity(unit(1), 3, flt)  # builds them in a snapshot
    assert hits and all(h.record.metadata["even"] for h in hits)
    fast = store._similarity_without_snapshot(unit(1), 3, flt)
    assert fast is not None and [h.record.id for h in fast] == [h.record.id for h in hits]


def test_every_searching_thread_gets_kbs_openmp_setting(tmp_path: Path) -> None:
    store = FaissStore(StoreContext("kb", tmp_path))
    store.upsert(records(5))
    seen: list[int] = []

    def search() -> None:
        faiss.omp_set_num_threads(7)  # what a new thread would otherwise have: the process default
        store.similarity(unit(1), 1)
        seen.append(faiss.omp_get_max_threads())

    thread = threading.Thread(target=search)
    thread.start()
    thread.join()
    assert seen == [1]


@pytest.mark.parametrize("kind", ["FLAT", "HNSW"])
def test_searches_reusing_a_threads_buffers_answer_as_a_snapshot_does(tmp_path: Path, kind: str) -> None:
    store = FaissStore(StoreContext("kb", tmp_path, settings={"index": {"type": kind}}))
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(40, 8)).astype(np.float32)
    store.upsert([Record(f"r{i}", f"text {i}", {"i": i}, v) for i, v in enumerate(vectors)])

    def answers(hits: list) -> list[tuple[str, float]]:
        return [(hit.record.id, round(hit.score, 6)) for hit in hits]

    earlier = store.similarity_rows(vectors[0] * 3, 5)
    kept = [list(row) for row in earlier]
    for k in (5, 1, 12, 40, 60, 5):  # a new k makes new buffers; 60 > the 40 held: fewer than k come back
        for query in (vectors[k % 40] * 7, rng.normal(size=8)):
            rows = store.similarity_rows(query, k)
            with store._snapshot() as view:  # the general path: fresh arrays, faiss's own wrapper
                expected = answers(view.similarity(query, k))
            assert [(r[0], round(r[3], 6)) for r in rows] == expected and len(rows) == min(k, 40)
    assert [list(row) for row in earlier] == kept  # a later search did not write into an earlier answer
    assert store.similarity_rows(np.zeros(8), 3)[0][3] == 0.0  # zero stays zero: every score 0
    for bad in (np.ones(7), np.array([np.nan] * 8), np.array([np.inf] + [0.0] * 7)):
        with pytest.raises(InvalidInputError):
            store.similarity_rows(bad, 3)
    view = store._committed_view(None)
    assert view is not None and view._buffers is not None  # the path under test was the reused one


def test_fast_documents_equal_validated_ones() -> None:
    assert FAST_DOCUMENTS  # if a langchain-core or pydantic upgrade breaks it, kb falls back (and this says so)
    result = SearchResult("id-1", "some text", {"a": [1, 2], "b": {"c": None}}, 0.5)
    fast = to_document(result)
    slow = Document(page_content="some text", metadata={"a": [1, 2], "b": {"c": None}}, id="id-1")
    assert fast == slow and fast.model_dump() == slow.model_dump() and fast.model_dump_json() == slow.model_dump_json()
    assert Document.model_validate(fast.model_dump()) == fast
    fast.metadata["a"].append(3)  # the document holds its own metadata dict
    assert "x" not in result.metadata


@pytest.mark.parametrize("text", ['{"n": 123456789012345678901234567890}', '{"n": -99999999999999999999}',
                                  '{"x": NaN}', '["\\ud800"]', '{"a": 1.5, "b": "é", "c": [true, null]}',
                                  '[0.00012345678901234567, 1.2345678901234567e-05, 18446744073709551615]'])
def test_json_decoding_matches_the_standard_library(text: str) -> None:
    import json

    expected = json.loads(text)
    got = loads_json(text)
    assert repr(got) == repr(expected)  # repr: NaN != NaN, but both must be NaN
    assert np.isnan(got["x"]) if isinstance(got, dict) and "x" in got else True


def test_float_vectors_take_the_fast_decoder() -> None:
    import json

    from kb_base import jsonfast

    body = json.dumps({"vector": np.random.default_rng(0).normal(scale=0.05, size=384).tolist()})
    assert jsonfast._LONG_DIGITS.search(body) is None  # else every search body would fall back to json.loads


def test_which_searches_count_as_quick(tmp_path: Path) -> None:
    """A service runs only these on its event loop: a loaded in-memory index, and for HNSW no filter (a filter
    may brute-force up to 20k matches); nothing before the index is loaded."""
    from kb_base.filters import parse_filter

    flat = FaissStore(StoreContext("flat", tmp_path / "flat"))
    hnsw = FaissStore(StoreContext("hnsw", tmp_path / "hnsw", settings={"index": {"type": "HNSW"}}))
    for store in (flat, hnsw):
        store.upsert(records(10))
        store.close()  # a fresh reader: nothing loaded yet
        assert not store.answers_quickly(filtered=False)
        store.similarity(unit(1), 1, parse_filter({"even": True}))  # loads the index and the filter columns
    assert flat.answers_quickly(filtered=False) and flat.answers_quickly(filtered=True)
    assert hnsw.answers_quickly(filtered=False) and not hnsw.answers_quickly(filtered=True)

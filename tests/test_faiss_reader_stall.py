"""Issue 34: FAISS readers never stall on a new generation.

A reader whose next generation brings big segment files keeps answering from the whole generation it has while
they load on helper threads, then switches; small commits load inline; a commit's own store object takes its
segment from memory. Real FAISS files and SQLite in temporary folders; which thread read a segment file is
recorded around the loader's real read (time-independent: no test here depends on how fast anything runs).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from kb_base.errors import StoreError
from kb_base.filters import parse_filter
from stores.base import Record, StoreContext
from stores.faiss import generation_loader, merge
from stores.faiss.store import FaissStore

DIM = 96  # 384 bytes a vector: 3,000 of them make a segment file above the 1 MiB threshold
BIG = 3000


def _vectors(n: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _records(start: int, vectors: np.ndarray, tag: str = "v1", word: str = "plain") -> list[Record]:
    return [Record(f"d{start + i}", f"text {start + i} {word} {tag}", {"group": (start + i) % 5, "tag": tag}, v)
            for i, v in enumerate(vectors)]


def _store(folder: Path, kind: str = "FLAT", **extra: int) -> FaissStore:
    return FaissStore(StoreContext("stall", folder, settings={"index": {"type": kind, **extra}}))


def _writer_and_reader(folder: Path, kind: str = "FLAT") -> tuple[FaissStore, FaissStore]:
    """Two store objects over one knowledge bank of 500 committed records: one to write, one to read beside it."""
    writer = _store(folder, kind)
    writer.upsert(_records(0, _vectors(500, 1)))
    return writer, _store(folder, kind)


@pytest.fixture
def not_merging(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(merge, "ENABLED", False)


def _record_reads(store: FaissStore, monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, str]]:
    """(segment, thread name) of every segment file ``store``'s loader reads from now on (the real read)."""
    reads: list[tuple[int, str]] = []
    read = store.loader._read

    def recording(number: int):  # type: ignore[no-untyped-def]
        reads.append((number, threading.current_thread().name))
        return read(number)

    monkeypatch.setattr(store.loader, "_read", recording)
    return reads


def _inline(reads: list[tuple[int, str]]) -> list[int]:
    return [number for number, thread in reads if thread != "kb-segment-load"]


def _wait_for_top(store: FaissStore, query: np.ndarray, wanted: str) -> list[str]:
    """Search until the top hit is ``wanted`` (30 s at most); the last answer's ids."""
    deadline = time.monotonic() + 30
    while True:
        ids = [h.record.id for h in store.similarity(query, 10)]
        if ids[0] == wanted or time.monotonic() > deadline:
            return ids
        time.sleep(0.005)


@pytest.mark.parametrize("kind", ["FLAT", "HNSW"])
def test_a_big_commit_loads_in_the_background_while_the_old_generation_answers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, not_merging: None, kind: str) -> None:
    writer, reader = _writer_and_reader(tmp_path, kind)
    added = _vectors(BIG, 2)
    query = added[7]  # its own nearest neighbour once committed
    before = [h.record.id for h in reader.similarity(query, 10)]
    flt = parse_filter({"group": 2})
    before_filtered = [h.record.id for h in reader.similarity(query, 10, flt)]  # reads the metadata columns
    old = reader.loader.current
    reads = _record_reads(reader, monkeypatch)
    writer.upsert(_records(10_000, added))
    assert (tmp_path / "store" / "segments" / "2.faiss").stat().st_size > generation_loader.BACKGROUND_LOAD_BYTES

    assert [h.record.id for h in reader.similarity(query, 10)] == before  # exactly the old generation's hits
    assert _inline(reads) == []  # and no file read by the search
    assert reader.loader.current is old
    # the filtered hot path (columns read at the old generation) answers from the old generation while the load
    # runs, from the new one once it is done (only searches switch: none runs beside this one)
    filtered = [h.record.id for h in reader.similarity(query, 10, flt)]
    assert filtered == before_filtered if reader.loader.current is old else filtered[0] == "d10007"
    assert _inline(reads) == []

    assert _wait_for_top(reader, query, "d10007")[0] == "d10007"  # switched, once the load was done
    assert _inline(reads) == [] and [n for n, _ in reads] == [2]  # read once, on the helper thread
    new = reader.loader.current
    assert new.generation == old.generation + 1 and new.segments[0].index is old.segments[0].index
    assert reader.loader._ready == {} and reader.loader._deferred is None
    writer.close()
    reader.close()


def test_a_small_commit_is_visible_at_the_next_search(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       not_merging: None) -> None:
    writer, reader = _writer_and_reader(tmp_path)
    reader.similarity(_vectors(1, 5)[0], 3)
    reads = _record_reads(reader, monkeypatch)
    added = _vectors(10, 3)
    writer.upsert(_records(10_000, added))
    assert reader.similarity(added[4], 1)[0].record.id == "d10004"  # at once: loaded inline
    assert reads == [(2, threading.current_thread().name)]
    writer.close()
    reader.close()


def test_a_big_commit_of_replacements_answers_whole_from_one_generation(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, not_merging: None) -> None:
    writer = _store(tmp_path)
    originals = _vectors(BIG, 1)
    writer.upsert(_records(0, originals, tag="v1"))
    reader = _store(tmp_path)
    cached_query, other_query = _vectors(2, 9)
    cached = [h.record.id for h in reader.similarity(cached_query, 10)]  # their records are in its cache now
    reads = _record_reads(reader, monkeypatch)
    writer.upsert(_records(0, _vectors(BIG, 4), tag="v2"))  # every record replaced: same ids, new vectors

    hits = reader.similarity(cached_query, 10)  # old generation: its records still cached (rowids never reused)
    assert [h.record.id for h in hits] == cached and {h.record.metadata["tag"] for h in hits} == {"v1"}
    assert _inline(reads) == []
    # the old generation's hits for a query not asked before are gone from SQLite: the snapshot path answers,
    # wholly from the new generation (loading inline whatever the helper thread has not)
    hits = reader.similarity(other_query, 10)
    assert {h.record.metadata["tag"] for h in hits} == {"v2"}
    expected = np.argsort(-(_vectors(BIG, 4) @ other_query), kind="stable")[:10]
    assert [h.record.id for h in hits] == [f"d{i}" for i in expected]
    assert reader.loader.current.generation == 2
    for thread in list(reader.loader._loading.values()):
        thread.join(30)
    hits = reader.similarity(cached_query, 10)
    assert {h.record.metadata["tag"] for h in hits} == {"v2"}
    assert reader.loader._ready == {}  # a helper-thread load that came second is not kept
    writer.close()
    reader.close()


@pytest.mark.parametrize(("kind", "extra"), [("FLAT", {}), ("HNSW", {}), ("HNSW_SQ8", {"exact_below": 0})])
def test_the_writing_store_sees_its_own_commit_without_reading_a_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, not_merging: None, kind: str, extra: dict) -> None:
    store = _store(tmp_path, kind, **extra)
    store.upsert(_records(0, _vectors(500, 1)))
    store.similarity(_vectors(1, 5)[0], 3)
    read = store.loader.files_read
    reads = _record_reads(store, monkeypatch)
    for start, n in ((10_000, BIG), (20_000, 1)):  # a big commit and a small one
        added = _vectors(n, start)
        with store.begin() as tx:
            tx.upsert(_records(start, added))
        assert store.loader._ready  # offered at its commit
        assert store.similarity(added[0], 1)[0].record.id == f"d{start}"  # at once
        assert reads == [] and store.loader.files_read == read
        assert store.loader._ready == {}  # taken by the search's generation, not kept twice
    store.close()
    other = _store(tmp_path, kind, **extra)  # and the files hold the same
    assert other.similarity(_vectors(1, 10_000)[0], 1)[0].record.id == "d10000"
    other.close()


def test_a_store_that_never_searched_keeps_no_offer(tmp_path: Path, not_merging: None) -> None:
    store = _store(tmp_path)
    store.upsert(_records(0, _vectors(BIG, 1)))
    store.upsert(_records(10_000, _vectors(10, 2)))
    assert store.loader._ready == {} and store.loader.current is None
    store.close()


def test_offers_retired_by_a_merge_are_not_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                not_merging: None) -> None:
    store = _store(tmp_path)
    store.upsert(_records(0, _vectors(500, 1)))
    store.similarity(_vectors(1, 5)[0], 3)
    for i in range(10):  # ten one-document commits, offered and not yet searched
        store.upsert(_records(1000 + i, _vectors(1, 100 + i)))
    assert sorted(store.loader._ready) == list(range(2, 12))
    assert store.merger.merge_now() == 1
    assert sorted(store.loader._ready) == [12]  # the output only: its inputs are retired
    reads = _record_reads(store, monkeypatch)
    assert store.similarity(_vectors(1, 104)[0], 1)[0].record.id == "d1004"
    assert reads == [] and store.loader._ready == {}
    store.close()


def test_filters_keyword_and_hybrid_after_a_big_commit_see_the_new_generation(
        tmp_path: Path, not_merging: None) -> None:
    writer, reader = _writer_and_reader(tmp_path)
    added = _vectors(BIG, 2)
    reader.similarity(added[7], 10)  # a generation in hand, no metadata columns read yet
    writer.upsert(_records(10_000, added, word="zebra"))
    assert reader.similarity(added[7], 1)[0].record.id != "d10007"  # the hot path: the old generation
    flt = parse_filter({"group": 2})  # no columns cached: the snapshot path, at the newest generation
    assert reader.similarity(added[7], 1, flt)[0].record.id == "d10007"
    assert {h.record.id for h in reader.keyword("zebra", 5)} <= {f"d{10_000 + i}" for i in range(BIG)}
    assert len(reader.keyword("zebra", 5)) == 5
    lists = reader.ranked_lists(added[7], "zebra 10007", 10)
    assert lists is not None and lists.dense[0][0] == "d10007"
    assert reader.similarity(added[7], 1, with_vectors=True)[0].record.id == "d10007"
    writer.close()
    reader.close()


def test_a_failed_commit_withdraws_its_offer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             not_merging: None) -> None:
    store = _store(tmp_path)
    store.upsert(_records(0, _vectors(500, 1)))
    store.similarity(_vectors(1, 5)[0], 3)
    failed = _vectors(BIG, 2)
    monkeypatch.setenv("KB_FAULT_RAISE", "before_sqlite_commit")
    with pytest.raises(StoreError, match="injected fault"), store.begin() as tx:
        tx.upsert(_records(10_000, failed))
    monkeypatch.delenv("KB_FAULT_RAISE")
    assert store.loader._ready == {}
    # another store object commits segment 2 (the number the failed commit had taken) with other vectors
    other = _store(tmp_path)
    added = _vectors(10, 3)
    other.upsert(_records(20_000, added))
    assert store.similarity(added[3], 1)[0].record.id == "d20003"  # segment 2 as committed, read from its file
    assert store.similarity(failed[3], 1)[0].record.id != "d10003"
    assert store.count() == 510
    other.close()
    store.close()


def _join_loads(store: FaissStore) -> None:
    for thread in list(store.loader._loading.values()):
        thread.join(30)


def _ids(hits: list) -> list[str]:  # type: ignore[type-arg]
    return [h.record.id for h in hits]


@pytest.mark.parametrize("kind", ["FLAT", "HNSW"])
def test_a_reader_that_filters_switches_with_the_new_segments_columns(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, not_merging: None, kind: str) -> None:
    writer, reader = _writer_and_reader(tmp_path, kind)
    added = _vectors(BIG, 2)
    query = added[7]  # d10007 is in group 2
    flt = parse_filter({"group": 2})
    before = _ids(reader.similarity(query, 10, flt))  # reads its generation's columns
    assert reader.metadata_rows_read == 500
    # the helper thread's column read waits (in its snapshot) until the filtered hot path has answered meanwhile
    release = threading.Event()
    read_columns = generation_loader.read_segment_columns

    def held(conn, segment):  # type: ignore[no-untyped-def]
        release.wait(30)
        return read_columns(conn, segment)

    monkeypatch.setattr(generation_loader, "read_segment_columns", held)
    old = reader.loader.current
    writer.upsert(_records(10_000, added))
    assert _ids(reader.similarity(query, 10, flt)) == before  # the old generation, whole, from its columns
    assert reader.loader.current is old and reader.metadata_rows_read == 500
    writer.delete(["d10007"])  # committed after the helper's snapshot: the reader's deletion mask has it
    assert _ids(reader.similarity(query, 10, flt)) == before
    release.set()
    _join_loads(reader)

    hits = reader.similarity(query, 10, flt)  # switched, to the newest generation: no record read for its columns
    assert reader.loader.current.generation == old.generation + 2
    assert reader.metadata_rows_read == 500 and reader.loader.metadata_rows_preread == BIG
    assert "d10007" not in _ids(hits) and {h.record.metadata["group"] for h in hits} == {2}
    assert any(int(i[1:]) >= 10_000 for i in _ids(hits))
    fresh = _store(tmp_path, kind)  # the same answer from columns read inline
    assert _ids(hits) == _ids(fresh.similarity(query, 10, flt)) and fresh.metadata_rows_read == 500 + BIG
    assert reader.count(flt) == fresh.count(flt) == 100 + BIG // 5 - 1
    fresh.close()
    writer.close()
    reader.close()


def test_a_reader_that_never_filtered_reads_no_columns_in_the_background(
        tmp_path: Path, not_merging: None) -> None:
    writer, reader = _writer_and_reader(tmp_path)
    added = _vectors(BIG, 2)
    reader.similarity(added[7], 10)
    writer.upsert(_records(10_000, added))
    assert _wait_for_top(reader, added[7], "d10007")[0] == "d10007"
    assert reader.loader.metadata_rows_preread == 0
    assert all(s.layout.metadata is None for s in reader.loader.current.segments)
    assert reader.similarity(added[7], 1, parse_filter({"group": 2}))[0].record.id == "d10007"
    assert reader.metadata_rows_read == 500 + BIG  # its first filtered search reads them, as before
    writer.close()
    reader.close()


def test_a_failed_column_read_is_logged_and_left_to_the_first_filtered_search(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        not_merging: None) -> None:
    writer, reader = _writer_and_reader(tmp_path)
    added = _vectors(BIG, 2)
    flt = parse_filter({"group": 2})
    reader.similarity(added[7], 10, flt)

    def failing(conn, segment):  # type: ignore[no-untyped-def]
        raise OSError("injected: records unreadable")

    monkeypatch.setattr(generation_loader, "read_segment_columns", failing)
    writer.upsert(_records(10_000, added))
    with caplog.at_level("WARNING", logger="stores.faiss.generation_loader"):
        assert _wait_for_top(reader, added[7], "d10007")[0] == "d10007"  # the segment itself still switched in
    assert "not preloaded" in caplog.text and "injected: records unreadable" in caplog.text
    assert reader.loader.metadata_rows_preread == 0
    assert reader.similarity(added[7], 1, flt)[0].record.id == "d10007"
    assert reader.metadata_rows_read == 500 + BIG  # read inline, as before
    writer.close()
    reader.close()


@pytest.mark.parametrize("inputs_filtered", [True, False])
def test_a_merge_output_swaps_in_with_its_columns(tmp_path: Path, not_merging: None, inputs_filtered: bool) -> None:
    writer, reader = _writer_and_reader(tmp_path)
    flt = parse_filter({"group": 2})
    reader.similarity(_vectors(1, 5)[0], 3, flt)  # a reader that filters
    for i in range(10):  # ten one-document commits the reader loads inline
        added = _vectors(1, 100 + i)
        writer.upsert(_records(1000 + i, added))
        reader.similarity(added[0], 1, flt if inputs_filtered else None)
    rows_read = reader.metadata_rows_read
    assert rows_read == 500 + (10 if inputs_filtered else 0)
    assert writer.merger.merge_now() == 1
    query = _vectors(1, 107)[0]  # d1007: group 2
    assert reader.similarity(query, 1)[0].record.id == "d1007"  # the inputs stand in while the output loads
    waiting = reader.loader.current.waiting
    assert len(waiting) == 1
    _join_loads(reader)
    assert reader.similarity(query, 1, flt)[0].record.id == "d1007"
    assert reader.loader.current.waiting == frozenset()
    assert next(iter(waiting)) in {s.number for s in reader.loader.current.segments}  # swapped in
    # its columns: gathered from the inputs' (no record read), or read by the helper thread when they lacked theirs
    assert reader.metadata_rows_read == rows_read
    assert reader.loader.metadata_rows_preread == (0 if inputs_filtered else 10)
    writer.close()
    reader.close()

"""Issue 34 follow-up: the FAISS merger chooses from SQLite and loads only what it merges; one thread per store.

Real FAISS segment files and SQLite in temporary folders. What a merge loaded is read from the generation loader's
own counter of segment files read; the merger's thread from the threads themselves.
"""

from __future__ import annotations

import gc
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from stores.base import Record, StoreContext
from stores.faiss import merge, merge_thread
from stores.faiss.segment_spans import segment_stats
from stores.faiss.store import FaissStore

DIM = 16


def _vectors(n: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _records(start: int, n: int) -> list[Record]:
    return [Record(f"d{start + i}", f"text {start + i}", {"group": (start + i) % 3}, v)
            for i, v in enumerate(_vectors(n, start))]


def _store(folder: Path, kind: str = "FLAT") -> FaissStore:
    return FaissStore(StoreContext("merger", folder, settings={"index": {"type": kind}}))


def _loaded_stats(folder: Path) -> list[tuple[int, int, int]]:
    """(number, size, live) of every live segment, from a reader that loads them all."""
    reader = _store(folder)
    try:
        with reader._snapshot() as view:
            return [(s.number, s.size, s.live) for s in view.segments.segments]
    finally:
        reader.close()


def _sql_stats(folder: Path) -> list[tuple[int, int, int]] | None:
    conn = sqlite3.connect(folder / "store" / "store.sqlite")
    try:
        conn.execute("BEGIN")
        generation = int(conn.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()[0])
        stats = segment_stats(conn, generation)
        return None if stats is None else [(s.number, s.size, s.live) for s in stats]
    finally:
        conn.close()


def _picking(*positions: int):  # type: ignore[no-untyped-def]
    """A choice of the live segments at these positions (oldest first): merges of non-adjacent segments."""
    def choose(segments):  # type: ignore[no-untyped-def]
        return [segments[p] for p in positions]

    return choose


def _merge(store: FaissStore, *positions: int) -> None:
    assert store.merger.merge_once(_picking(*positions), throttle=False)


@pytest.fixture
def merging(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(merge, "ENABLED", True)


@pytest.fixture
def not_merging(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(merge, "ENABLED", False)


def _interleaved_history(folder: Path) -> FaissStore:
    """Segments whose rowid ranges overlap: merges of non-adjacent segments, deletions in all of them."""
    store = _store(folder)
    for start in range(0, 240, 20):  # twelve segments of 20
        store.upsert(_records(start, 20))
    _merge(store, 0, 2, 4)  # rows 0-19, 40-59, 80-99: a range over segments 2 and 4
    store.delete(["d21", "d22", "d45", "d85", "d99", "d130"])
    _merge(store, 0, 5, 8)  # segment 2 (20-39) with the first output, and 9 (after the output): partial overlap
    store.delete(["d41", "d25", "d61", "d230"])
    store.upsert(_records(21, 1))  # a replacement of a deleted id: a new rowid in a new segment
    return store


def test_the_stats_from_sqlite_are_the_loaded_segments_sizes_and_live_counts(tmp_path: Path, not_merging) -> None:
    store = _interleaved_history(tmp_path)
    assert _sql_stats(tmp_path) == _loaded_stats(tmp_path)
    assert store.merger.merge_now() == 0  # nothing the policy wants: nine small segments left in tier 0
    store.delete([f"d{i}" for i in range(100, 120)])  # every row of one segment: retired without a file
    assert store.merger.merge_now() == 1
    assert _sql_stats(tmp_path) == _loaded_stats(tmp_path)
    store.merger.merge_now(force=True)
    assert _sql_stats(tmp_path) == _loaded_stats(tmp_path) and len(_loaded_stats(tmp_path)) == 1
    conn = sqlite3.connect(tmp_path / "store" / "store.sqlite")
    assert conn.execute("SELECT COUNT(*) FROM segment_spans").fetchone()[0] == 1  # joined into one span
    plan = " ".join(r[-1] for r in conn.execute(
        "EXPLAIN QUERY PLAN SELECT p.segment, COUNT(*) FROM segment_spans AS p JOIN tombstones AS t "
        "ON t.rowid BETWEEN p.lo AND p.hi WHERE t.gen <= 5 GROUP BY p.segment"))
    conn.close()
    assert "SEARCH t USING INTEGER PRIMARY KEY" in plan  # a range lookup per span, not a scan of the tombstones


@pytest.mark.parametrize("kind", ["FLAT", "HNSW"])
def test_a_write_only_process_merges_loading_only_the_inputs(tmp_path: Path, monkeypatch, kind: str) -> None:
    monkeypatch.setattr(merge, "ENABLED", False)
    setup = _store(tmp_path, kind)
    for start in range(0, 6000, 2000):  # three segments of 2,000 (one tier, below its ten)
        setup.upsert(_records(start, 2000))
    setup.delete([f"d{i}" for i in range(0, 6000, 97)])  # deletions in them, below the rewrite's share
    for i in range(9):  # nine one-document segments: one short of a merge
        setup.upsert(_records(10_000 + i, 1))
    setup.close()
    monkeypatch.setattr(merge, "ENABLED", True)
    writer = _store(tmp_path, kind)  # a process that only writes: it never searches
    writer.upsert(_records(10_009, 1))  # the tenth: the merger's thread merges the ten small ones
    assert writer.merger.wait(120)
    assert writer.merger.merges == 1
    assert writer.loader.files_read == 10  # the ten inputs, not the three big segments
    assert writer.loader.current is None  # and no generation kept in memory
    assert _sql_stats(tmp_path) == _loaded_stats(tmp_path) and len(_loaded_stats(tmp_path)) == 4
    reader = _store(tmp_path, kind)
    assert reader.count() == 6000 - len(range(0, 6000, 97)) + 10
    assert reader.similarity(_vectors(1, 10_004)[0], 1)[0].record.id == "d10004"
    writer.close()
    reader.close()


def test_one_merger_thread_across_many_commits_and_commits_only_signal(tmp_path: Path, merging, monkeypatch) -> None:
    choosers: set[str] = set()
    real = merge.choose_merge

    def recorded(segments):  # type: ignore[no-untyped-def]
        choosers.add(threading.current_thread().name)
        return real(segments)

    monkeypatch.setattr(merge, "choose_merge", recorded)
    store = _store(tmp_path)
    threads = set()
    for i in range(35):
        store.upsert(_records(i, 1))
        threads.add(store.merger._thread)
    assert store.merger.wait(120)
    assert len(threads) == 1 and store.merger.threads_started == 1
    (thread,) = threads
    assert thread.is_alive() and thread.daemon  # waiting for the next commit
    assert choosers == {"kb-segment-merge"}  # never on the committing thread
    assert store.merger.merges >= 3 and store.count() == 35
    store.close()
    assert not thread.is_alive()
    store.upsert(_records(100, 1))  # a later commit starts a thread again
    assert store.merger.wait(60) and store.merger.threads_started == 2
    store.close()


def test_close_ends_the_thread_promptly_mid_merge_and_the_merge_leaves_nothing(tmp_path: Path, merging,
                                                                              monkeypatch) -> None:
    started = threading.Event()
    real = merge.Merger._build

    def long_build(self, inputs, dim, throttle, stop):  # type: ignore[no-untyped-def]
        started.set()
        stop.wait(60)  # a merge that goes on until it is stopped (a real one checks between slices)
        return real(self, inputs, dim, throttle, stop)

    monkeypatch.setattr(merge.Merger, "_build", long_build)
    store = _store(tmp_path)
    for i in range(10):
        store.upsert(_records(i * 200, 200))
    assert started.wait(60)
    thread = store.merger._thread
    began = time.monotonic()
    store.close()
    assert time.monotonic() - began < merge.CLOSE_WAIT and not thread.is_alive()
    assert store.merger.merges == 0 and len(_loaded_stats(tmp_path)) == 10
    assert not list((tmp_path / "store" / "staging").glob("merge-*"))
    monkeypatch.setattr(merge.Merger, "_build", real)
    store.upsert(_records(5000, 1))  # the next commit's thread does the merge
    assert store.merger.wait(120) and store.merger.merges == 1
    assert store.count() == 2001
    store.close()


def test_a_store_dropped_without_close_ends_its_thread(tmp_path: Path, merging, monkeypatch) -> None:
    monkeypatch.setattr(merge_thread, "IDLE_CHECK", 0.05)
    store = _store(tmp_path)
    store.upsert(_records(0, 3))
    assert store.merger.wait(60)
    thread = store.merger._thread
    del store
    gc.collect()
    thread.join(30)
    assert not thread.is_alive()


def test_a_store_without_spans_gets_them_from_one_full_load(tmp_path: Path, not_merging) -> None:
    store = _interleaved_history(tmp_path)
    expected = _loaded_stats(tmp_path)
    store.close()
    conn = sqlite3.connect(tmp_path / "store" / "store.sqlite")
    conn.execute("DELETE FROM segment_spans")  # as a knowledge bank written before spans has them
    conn.commit()
    conn.close()
    assert _sql_stats(tmp_path) is None
    writer = _store(tmp_path)
    assert writer.merger.merge_now() == 0  # the policy finds nothing; the spans are rebuilt all the same
    assert writer.loader.files_read == len(expected)
    assert _sql_stats(tmp_path) == expected
    for i in range(10):  # tier 0 fills up: its ten smallest are the one-document segments
        writer.upsert(_records(1000 + i, 1))
    read = writer.loader.files_read
    assert writer.merger.merge_once(merge.choose_merge, throttle=False)
    assert writer.loader.files_read - read == 10  # its inputs only, chosen from the rebuilt spans
    assert _sql_stats(tmp_path) == _loaded_stats(tmp_path)
    writer.close()


def test_record_reads_without_vectors_load_no_segment(tmp_path: Path, not_merging) -> None:
    """What an ingestion and a folder sync read before each commit (the stored chunks by id) needs no vectors."""
    writer = _store(tmp_path)
    for start in range(0, 600, 200):
        writer.upsert(_records(start, 200))
    writer.delete(["d3"])
    store = _store(tmp_path)
    assert [r.id for r in store.get(["d5", "d3", "d250"])] == ["d5", "d250"]
    assert store.get(["d5"])[0].metadata == {"group": 2} and store.get(["d5"])[0].vector is None
    assert store.count() == 599 and store.dimension == DIM and len(store.ids_where(None)) == 599
    assert sum(len(batch) for batch in store.iter_records()) == 599
    assert store.loader.files_read == 0 and store.loader.current is None
    (record,) = store.get(["d5"], with_vectors=True)  # vectors come from the segments: those are loaded now
    np.testing.assert_allclose(record.vector, _vectors(200, 0)[5], atol=1e-6)
    assert store.loader.files_read == 3
    writer.close()
    store.close()


def test_a_killed_mergers_staging_folder_goes_and_a_live_ones_stays(tmp_path: Path) -> None:
    """A merge stages its output in ``staging/merge-<id>`` under a flock'ed claim: the next writer removes the
    folders whose merger is gone (killed: the kernel dropped its flock; or from a version that kept no claim)
    and leaves a live merger's, held here by another open file as a merger in another process would hold it."""
    import fcntl

    store = _store(tmp_path)
    with store.begin() as tx:
        tx.upsert(_records(0, 5))
    staging = tmp_path / "store" / "staging"

    def folder(name: str, claimed: bool) -> Path:
        path = staging / name
        path.mkdir(parents=True)
        (path / "merged.faiss").write_bytes(b"x" * 4096)
        if claimed:
            (staging / f"{name}.lock").touch()
        return path

    dead, unclaimed, live = folder("merge-dead", True), folder("merge-old", False), folder("merge-live", True)
    (staging / "merge-early.lock").touch()  # killed between taking its claim and making its folder
    holder = open(staging / "merge-live.lock", "rb")  # noqa: SIM115 - the live merger's claim, closed below
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        with store.begin() as tx:
            tx.upsert(_records(5, 1))
        assert sorted(p.name for p in staging.iterdir()) == ["merge-live", "merge-live.lock"]
        assert not dead.exists() and not unclaimed.exists() and (live / "merged.faiss").exists()
    finally:
        holder.close()
    with store.begin() as tx:  # its merger is gone now
        tx.upsert(_records(6, 1))
    assert list(staging.iterdir()) == []
    assert store.count() == 7
    store.close()

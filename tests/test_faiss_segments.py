"""Issue 34: a FAISS commit writes one segment and tombstones; searches over segments answer as one index would.

Real FAISS files and SQLite in a temporary folder; exact answers computed with numpy over the committed records.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from kb_base.filters import parse_filter
from stores.base import Record, StoreContext
from stores.faiss import merge, transaction
from stores.faiss.store import FaissStore

DIM = 24


def _vectors(n: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _records(start: int, vectors: np.ndarray, tag: str = "v1") -> list[Record]:
    return [Record(f"d{start + i}", f"text {start + i} {tag}", {"group": (start + i) % 5, "tag": tag}, v)
            for i, v in enumerate(vectors)]


def _store(folder: Path, kind: str = "FLAT") -> FaissStore:
    return FaissStore(StoreContext("seg", folder, settings={"index": {"type": kind}}))


def _segment_files(folder: Path) -> list[int]:
    return sorted(int(p.stem) for p in (folder / "store" / "segments").glob("*.faiss"))


def _live(store: FaissStore) -> tuple:
    with store._snapshot() as view:
        return view.segments.segments if view.segments is not None else ()


def _exact(store: FaissStore, query: np.ndarray, k: int, group: int | None = None) -> list[tuple[str, float]]:
    records = [r for batch in store.iter_records(with_vectors=True) for r in batch
               if group is None or r.metadata["group"] == group]
    scores = np.array([float(np.dot(r.vector, query)) for r in records])
    order = np.argsort(-scores, kind="stable")[:k]
    return [(records[i].id, float(scores[i])) for i in order]


def _same(found: list[tuple[str, float]], exact: list[tuple[str, float]]) -> bool:
    """Equal lists, where scores within 1e-5 of each other may come in either order."""
    if len(found) != len(exact):
        return False
    if [round(s, 4) for _, s in found] != pytest.approx([round(s, 4) for _, s in exact], abs=2e-4):
        return False
    boundary = exact[-1][1] if exact else 0.0
    strictly = {i for i, s in exact if s > boundary + 1e-5}
    return strictly <= {i for i, _ in found}


def _write_history(store: FaissStore, commits: int, seed: int) -> None:
    """Commits of varying size, each also replacing and deleting records of earlier commits."""
    rng = np.random.default_rng(seed)
    written = 0
    for commit in range(commits):
        with store.begin() as tx:
            n = int(rng.integers(1, 120))
            tx.upsert(_records(written, _vectors(n, seed * 1000 + commit)))
            written += n
            if written > 50:
                replaced = sorted({int(i) for i in rng.integers(0, written, 5)})
                tx.upsert([Record(f"d{i}", f"text {i} v{commit}", {"group": i % 5, "tag": f"v{commit}"}, v)
                           for i, v in zip(replaced, _vectors(len(replaced), seed * 7 + commit), strict=True)])
                tx.delete([f"d{int(i)}" for i in rng.integers(0, written, 3)])


@pytest.fixture(autouse=True)
def _no_background_merges(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(merge, "ENABLED", False)  # each test merges when it means to


def test_a_commit_writes_one_segment_and_tombstones_not_the_whole_index(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.upsert(_records(0, _vectors(2000, 1)))
    first = _segment_files(tmp_path)
    size_before = (tmp_path / "store" / "segments" / f"{first[0]}.faiss").stat().st_size
    with store.begin() as tx:
        tx.upsert(_records(2000, _vectors(1, 2)))
        tx.upsert([Record("d5", "replaced", {"group": 0, "tag": "r"}, _vectors(1, 3)[0])])
        tx.delete(["d7"])
    files = _segment_files(tmp_path)
    assert len(files) == 2 and files[0] == first[0]
    assert (tmp_path / "store" / "segments" / f"{first[0]}.faiss").stat().st_size == size_before  # untouched
    assert (tmp_path / "store" / "segments" / f"{files[1]}.faiss").stat().st_size < size_before / 100
    conn = sqlite3.connect(tmp_path / "store" / "store.sqlite")
    assert conn.execute("SELECT COUNT(*) FROM tombstones").fetchone()[0] == 2  # d5's old vector and d7
    conn.close()
    assert store.count() == 2000
    assert [h.record.id for h in store.similarity(_vectors(1, 3)[0], 1)] == ["d5"]
    assert "d7" not in {h.record.id for h in store.similarity(_vectors(2000, 1)[7], 5)}


@pytest.mark.parametrize("kind", ["FLAT", "HNSW"])
def test_deletions_and_replacements_across_segments_then_merged(tmp_path: Path, kind: str) -> None:
    store = _store(tmp_path, kind)
    _write_history(store, 25, seed=4)
    reader = _store(tmp_path, kind)  # another reader of the same folder: it builds its generations itself
    queries = _vectors(20, 99)
    for query in queries:
        exact = _exact(store, query, 10)
        assert _same([(h.record.id, h.score) for h in store.similarity(query, 10)], exact) or kind == "HNSW"
        assert _same([(h.record.id, h.score) for h in reader.similarity(query, 10)], exact) or kind == "HNSW"
        flt = parse_filter({"group": 2})
        assert _same([(h.record.id, h.score) for h in store.similarity(query, 10, flt)], _exact(store, query, 10, 2))
    live = store.ids_where(None)
    vectors = {r.id: r.vector for r in store.get(live, with_vectors=True)}
    for record_id in live[:40]:  # each record is found by its own (current) vector, and only once
        hits = store.similarity(vectors[record_id], 3)
        assert hits[0].record.id == record_id and len({h.record.id for h in hits}) == len(hits)
    before = {q.tobytes(): [h.record.id for h in store.similarity(q, 10)] for q in queries}
    assert store.merger.merge_now(force=True) >= 1
    assert len(_segment_files(tmp_path)) >= 1
    (merged,) = _live(store)  # the next read takes the merged generation (its output from memory, not the file)
    assert merged.dead is None
    for query in queries:
        assert _same([(h.record.id, h.score) for h in reader.similarity(query, 10)], _exact(store, query, 10))
        if kind == "FLAT":
            assert [h.record.id for h in store.similarity(query, 10)] == before[query.tobytes()]
    assert store.count() == len(live) and sorted(reader.ids_where(None)) == sorted(live)


def test_flat_search_over_segments_is_exactly_one_index(tmp_path: Path) -> None:
    segmented = _store(tmp_path / "a")
    _write_history(segmented, 30, seed=11)
    single = _store(tmp_path / "b")
    records = [r for batch in segmented.iter_records(with_vectors=True) for r in batch]
    single.upsert(records)
    assert len(_live(segmented)) > 10 and single.committed_index() is not None
    for query in _vectors(40, 5):
        ours = [(h.record.id, round(h.score, 5)) for h in segmented.similarity(query, 10)]
        theirs = [(h.record.id, round(h.score, 5)) for h in single.similarity(query, 10)]
        assert ours == theirs


def test_hnsw_recall_over_segments_is_within_half_a_point_of_one_graph(tmp_path: Path) -> None:
    vectors = _vectors(12_000, 21)
    segmented = _store(tmp_path / "seg", "HNSW")
    for start in range(0, vectors.shape[0], 600):  # 20 commits: 20 segments (merging is off)
        segmented.upsert(_records(start, vectors[start : start + 600]))
    single = _store(tmp_path / "one", "HNSW")
    single.upsert(_records(0, vectors))
    assert len(_live(segmented)) == 20
    queries = _vectors(200, 22)
    exact = queries @ vectors.T
    recall_segmented, recall_single = [], []
    for query, scores in zip(queries, exact, strict=True):
        truth = {f"d{i}" for i in np.argsort(-scores)[:10]}
        recall_segmented.append(len(truth & {h.record.id for h in segmented.similarity(query, 10)}) / 10)
        recall_single.append(len(truth & {h.record.id for h in single.similarity(query, 10)}) / 10)
    print(f"recall@10 segmented {np.mean(recall_segmented):.4f}, one graph {np.mean(recall_single):.4f}")
    assert np.mean(recall_segmented) >= np.mean(recall_single) - 0.005


def test_small_hnsw_segments_are_searched_exactly_and_big_ones_by_their_graph(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Below ``EXACT_BELOW`` vectors an HNSW segment answers exactly (deleted rows excluded); at it, by its graph
    (a graph of m 2 searched with efSearch 2 gives other answers than the exact ones: which path ran shows)."""
    from stores.faiss import segments as segments_module

    monkeypatch.setattr(segments_module, "EXACT_BELOW", 400)
    store = FaissStore(StoreContext("seg", tmp_path, settings={"index": {"type": "HNSW", "m": 2, "ef_search": 2}}))
    store.upsert(_records(0, _vectors(399, 31)))  # one segment below the threshold
    store.delete([f"d{i}" for i in range(0, 399, 3)])  # a tombstone bitmap on it
    for query in _vectors(30, 32):
        found = [(h.record.id, h.score) for h in store.similarity(query, 10)]
        assert _same(found, _exact(store, query, 10))
    big = FaissStore(StoreContext("seg", tmp_path / "big",
                                  settings={"index": {"type": "HNSW", "m": 2, "ef_search": 2}}))
    big.upsert(_records(0, _vectors(400, 33)))
    misses = sum(not _same([(h.record.id, h.score) for h in big.similarity(q, 10)], _exact(big, q, 10))
                 for q in _vectors(30, 34))
    assert misses > 0  # a poor graph walked greedily: not every answer is the exact one


def test_a_reader_loads_only_the_new_segment_of_the_next_generation(tmp_path: Path) -> None:
    writer = _store(tmp_path)
    writer.upsert(_records(0, _vectors(500, 1)))
    reader = _store(tmp_path)
    reader.similarity(_vectors(1, 2)[0], 3)
    old = reader.loader.current
    assert old is not None and len(old.segments) == 1
    writer.upsert(_records(500, _vectors(1, 3)))
    hits = reader.similarity(_vectors(1, 3)[0], 1)
    assert hits[0].record.id == "d500"  # the new generation, at once
    new = reader.loader.current
    assert new is not None and new.generation == old.generation + 1 and len(new.segments) == 2
    assert new.segments[0].index is old.segments[0].index  # reused, not read again


def test_a_reader_answers_with_the_inputs_while_a_merge_output_loads(tmp_path: Path) -> None:
    writer = _store(tmp_path)
    for start in range(0, 2000, 200):  # ten segments of one tier (100-1,000 live vectors)
        writer.upsert(_records(start, _vectors(200, start)))
    writer.delete(["d3", "d250"])
    reader = _store(tmp_path)
    query = _vectors(1, 77)[0]
    expected = [h.record.id for h in reader.similarity(query, 10)]
    inputs = [s.index for s in reader.loader.current.segments]
    assert writer.merger.merge_now() == 1  # ten segments of one tier: one merge
    writer.delete(["d500"])  # after the merge: a tombstone for a row of the output
    expected = [i for i in expected if i != "d500"]
    got = [h.record.id for h in reader.similarity(query, 10)]
    assert got[: len(expected)] == expected and "d500" not in got
    current = reader.loader.current
    assert current.waiting and [s.index for s in current.segments] == inputs  # the inputs stand in
    for thread in list(reader.loader._loading.values()):
        thread.join(30)
    assert [h.record.id for h in reader.similarity(query, 10)] == got
    current = reader.loader.current
    assert not current.waiting and len(current.segments) == 1 and current.segments[0].kind == "merge"
    assert reader.count() == 1997 and "d500" not in {h.record.id for h in reader.similarity(query, 1000)}


def test_a_merge_reapplies_deletions_committed_while_it_built(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = _store(tmp_path)
    for start in range(0, 2000, 200):  # ten segments of one tier (100-1,000 live vectors)
        store.upsert(_records(start, _vectors(200, start)))
    build = merge.Merger._build

    def build_then_write(self: merge.Merger, *args: object, **kwargs: object) -> object:
        out = build(self, *args, **kwargs)
        with store.begin() as tx:  # a user commit between the merge's read and its commit
            tx.delete(["d10", "d620"])
            tx.upsert([Record("d11", "new eleven", {"group": 1, "tag": "n"}, _vectors(1, 12345)[0])])
        return out

    monkeypatch.setattr(merge.Merger, "_build", build_then_write)
    assert store.merger.merge_now() == 1
    fresh = _store(tmp_path)
    for reader in (store, fresh):
        assert reader.count() == 1998
        assert not reader.get(["d10", "d620"])
        ids = {h.record.id for h in reader.similarity(_vectors(200, 0)[10], 50)}
        assert "d10" not in ids
        assert reader.similarity(_vectors(1, 12345)[0], 1)[0].record.text == "new eleven"
        assert reader.similarity(_vectors(200, 0)[11], 1)[0].record.id != "d11"  # its old vector is gone


def test_the_tiered_policy(tmp_path: Path) -> None:
    store = _store(tmp_path)
    for start in range(9):
        store.upsert(_records(start * 10, _vectors(10, start)))
    assert merge.choose_merge(_live(store)) is None  # nine small: below the tier's ten
    store.upsert(_records(90, _vectors(10, 9)))
    chosen = merge.choose_merge(_live(store))
    assert chosen is not None and len(chosen) == 10
    assert store.merger.merge_now() == 1 and len(_live(store)) == 1
    with store.begin() as tx:
        tx.delete([f"d{i}" for i in range(100)])
    assert store.merger.merge_now() == 1  # nothing left alive: retired without a file
    assert _live(store) == () and store.count() == 0


def test_a_knowledge_bank_of_the_single_index_layout_opens_without_a_rewrite(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.upsert(_records(0, _vectors(300, 1)))
    store.delete(["d1"])
    store.merger.merge_now(force=True)
    (live,) = _live(store)
    store.checkpoints.wait()
    store.close()
    # turn it into the layout before segments: one index-<C>.faiss, no segment tables
    folder = tmp_path / "store"
    conn = sqlite3.connect(folder / "store.sqlite")
    generation = int(conn.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()[0])
    os.replace(folder / "segments" / f"{live.number}.faiss", folder / f"index-{generation}.faiss")
    for retired in (folder / "segments").iterdir():
        retired.unlink()
    conn.executescript("DROP TABLE segments; DROP TABLE tombstones; DROP TABLE segment_spans; "
                       "DELETE FROM meta WHERE key = 'next_segment';")
    conn.close()
    inode = (folder / f"index-{generation}.faiss").stat().st_ino
    reopened = _store(tmp_path)
    assert (folder / "segments" / "1.faiss").stat().st_ino == inode  # the same file, adopted as segment 1
    assert reopened.count() == 299 and reopened.similarity(_vectors(300, 1)[5], 1)[0].record.id == "d5"
    reopened.upsert(_records(300, _vectors(1, 9)))
    assert not (folder / f"index-{generation}.faiss").exists()  # the old name goes with the next writer
    assert _segment_files(tmp_path) == [1, 2] and reopened.count() == 300
    assert _store(tmp_path).similarity(_vectors(1, 9)[0], 1)[0].record.id == "d300"


@pytest.mark.parametrize("point", ["merge_segment_written", "merge_before_commit"])
def test_a_merge_that_fails_changes_nothing_and_leaves_no_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 point: str) -> None:
    store = _store(tmp_path)
    for start in range(0, 2000, 200):  # ten segments of one tier (100-1,000 live vectors)
        store.upsert(_records(start, _vectors(200, start)))
    store.delete(["d42"])
    query = _vectors(1, 8)[0]
    before = [h.record.id for h in store.similarity(query, 10)]
    _live(store)
    generation = store.loader.current.generation
    monkeypatch.setenv("KB_FAULT_RAISE", point)
    with pytest.raises(OSError, match="injected fault"):
        store.merger.merge_now()
    monkeypatch.delenv("KB_FAULT_RAISE")
    assert store.loader.current.generation == generation and len(_live(store)) == 10
    assert [h.record.id for h in _store(tmp_path).similarity(query, 10)] == before
    assert not list((tmp_path / "store" / "staging").glob("merge-*"))  # its staging folder went with it
    with store.begin(timeout=1) as tx:  # the writer lock was released; this writer removes any orphan file
        tx.upsert(_records(5000, _vectors(1, 9)))
    assert len(_segment_files(tmp_path)) == 11
    assert store.merger.merge_now() == 1 and store.count() == 2000
    assert [h.record.id for h in store.similarity(query, 10)] == before


@pytest.mark.parametrize("kind", ["FLAT", "HNSW"])
def test_a_small_commit_runs_on_the_writers_thread_and_a_big_one_on_helpers(tmp_path, monkeypatch, kind):
    started: list[str] = []
    real = transaction.Background

    def counted(work, name):  # type: ignore[no-untyped-def]
        started.append(name)
        return real(work, name)

    monkeypatch.setattr(transaction, "Background", counted)
    store = _store(tmp_path, kind)
    big = transaction.SMALL_WRITE + 44
    with store.begin() as tx:
        tx.upsert(_records(0, _vectors(big, 1)))
    assert {"kb-vector-add", "kb-index-write", "kb-wal-flush"} <= set(started)
    started.clear()
    for i in range(3):  # one document; a replacement (a tombstone); two
        with store.begin() as tx:
            tx.upsert(_records(big + i if i != 1 else 5, _vectors(1 if i < 2 else 2, 10 + i), tag=f"s{i}"))
    assert started == []
    query = _vectors(1, 10)[0]
    assert store.similarity(query, 1)[0].record.id == f"d{big}"
    assert store.get(["d5"])[0].text == "text 5 s1"
    assert store.count() == big + 3
    assert len(_segment_files(tmp_path)) == 4  # one segment per commit

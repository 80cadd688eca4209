"""Issue 31: a compressed type's writer spills its new vectors to a file in its staging folder (bounded memory), and
that file becomes the committed segment's vector file.

Vectors are clustered around SciFact's real MiniLM document vectors (read in place), as in the compressed tests.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stores.base import Record, StoreContext
from stores.faiss.compressed import open_vectors
from stores.faiss.segment_files import claim_merge_folder, release_merge_folder
from stores.faiss.store import FaissStore
from tests.test_faiss_compressed import structured

HEADER = 128  # numpy's .npy header for a 2-d float32 array (padded to this length whatever the row count)


def _store(folder: Path, kind: str = "IVF_PQ", **extra: int) -> FaissStore:
    return FaissStore(StoreContext("kb", folder, settings={"index": {"type": kind, **extra}}))


def _records(vectors: np.ndarray, start: int = 0, prefix: str = "r") -> list[Record]:
    return [Record(f"{prefix}{start + i}", f"text {start + i}", {"part": (start + i) % 5}, v)
            for i, v in enumerate(vectors)]


def _staged_files(store: FaissStore) -> list[Path]:
    staging = store.dir / "staging"
    return sorted(p for p in staging.rglob("*") if p.is_file()) if staging.exists() else []


@pytest.mark.parametrize("kind", ["HNSW_SQ8", "IVF_PQ"])
def test_vectors_go_to_the_staging_file_and_it_becomes_the_segment_vector_file(tmp_path: Path, kind: str) -> None:
    data, _ = structured(3000, seed=5)
    store = _store(tmp_path, kind, exact_below=0)
    with store.begin() as tx:
        for start in range(0, 3000, 1000):
            tx.upsert(_records(data[start : start + 1000], start))
            tx.count()  # joins the background appends
            assert tx.index is None  # no in-memory copy of the vectors
            spilled = _staged_files(store)
            assert [p.name for p in spilled] == ["spill.vectors.npy"]
            assert spilled[0].stat().st_size == HEADER + (start + 1000) * 384 * 4
    assert _staged_files(store) == []  # renamed into segments/, the staging folder removed
    files = sorted(p.name for p in (store.dir / "segments").iterdir())
    assert files == ["1.faiss", "1.vectors.npy"]
    on_disk = open_vectors(store.dir / "segments" / "1.vectors.npy")
    assert on_disk.shape == (3000, 384)  # the header carries the final count
    np.testing.assert_allclose(on_disk, data, atol=1e-6)  # normalised rows, in rowid order
    for row in (0, 1234, 2999):
        hits = store.similarity(data[row], 3)
        assert hits[0].record.id == f"r{row}"
        assert hits[0].score == pytest.approx(1.0, abs=1e-5)


def test_own_replacements_and_deletes_are_compacted_out_and_own_reads_see_the_spilled_rows(tmp_path: Path) -> None:
    data, centres = structured(2500, seed=6)
    fresh, _ = structured(300, seed=7, centres=centres)
    store = _store(tmp_path, "HNSW_SQ8", exact_below=0)
    with store.begin() as tx:
        tx.upsert(_records(data[:2000]))
        # the writer's own reads search what it spilled
        assert tx.similarity(data[17], 1)[0].record.id == "r17"
        tx.upsert(_records(data[2000:], 2000))
        tx.upsert(_records(fresh, 0))  # r0..r299 replaced: their first vectors stay in the file, marked
        assert tx.delete([f"r{i}" for i in range(300, 400)]) == 100
        hit = tx.similarity(fresh[5], 1)[0]
        assert (hit.record.id, hit.score) == ("r5", pytest.approx(1.0, abs=1e-5))
        assert all(h.record.id not in {f"r{i}" for i in range(300, 400)} for h in tx.similarity(data[350], 20))
    on_disk = open_vectors(store.dir / "segments" / "1.vectors.npy")
    assert on_disk.shape == (2400, 384)  # only live rows: 2,500 - 100 deleted (replaced ones once, the new copy)
    expected = np.concatenate([data[400:2500], fresh])  # rowid order: the originals left, then the replacements
    np.testing.assert_allclose(on_disk, expected, atol=1e-6)
    assert store.count() == 2400
    assert store.similarity(fresh[9], 1)[0].record.id == "r9"
    assert store.get(["r350"]) == []
    assert _staged_files(store) == []


def test_a_commit_below_exact_below_writes_a_flat_segment_from_the_spill(tmp_path: Path) -> None:
    data, _ = structured(500, seed=8)
    store = _store(tmp_path, "IVF_PQ", exact_below=1000)
    with store.begin() as tx:
        tx.upsert(_records(data))
    assert sorted(p.name for p in (store.dir / "segments").iterdir()) == ["1.faiss"]  # no vector file: exact
    assert store.index_info()["compressed_segments"] == 0
    assert store.similarity(data[42], 1)[0].record.id == "r42"


def test_rollback_and_clear_drop_the_spilled_vectors(tmp_path: Path) -> None:
    data, _ = structured(1500, seed=9)
    store = _store(tmp_path, "HNSW_SQ8", exact_below=0)
    tx = store.begin()
    tx.upsert(_records(data[:1000]))
    tx.count()
    assert _staged_files(store)
    tx.rollback()
    assert _staged_files(store) == []
    assert store.count() == 0
    with store.begin() as tx:
        tx.upsert(_records(data[:1000]))
        tx.clear()
        tx.upsert(_records(data[1000:], 1000))
    assert store.count() == 500
    assert open_vectors(store.dir / "segments" / "1.vectors.npy").shape == (500, 384)
    assert store.similarity(data[1200], 1)[0].record.id == "r1200"


def test_a_dead_writer_staging_folder_is_removed_by_the_next_writer(tmp_path: Path) -> None:
    data, _ = structured(200, seed=10)
    store = _store(tmp_path, "IVF_PQ")
    with store.begin() as tx:
        tx.upsert(_records(data))
    dead = store.dir / "staging" / "0123abcd"  # what a killed bulk load leaves: its spilled vectors
    dead.mkdir(parents=True)
    (dead / "spill.vectors.npy").write_bytes(b"\0" * 4096)
    # a live merger's (maybe another process's), claimed as a merger claims it: not the writer's to remove
    merging, claim = claim_merge_folder(store.dir / "staging")
    merging.mkdir()
    try:
        with store.begin() as tx:
            tx.delete(["r1"])
        assert not dead.exists()
        assert merging.exists()
    finally:
        release_merge_folder(merging, claim)
    assert store.count() == 199

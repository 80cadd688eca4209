"""A compressed segment's vector file read row by row (``stores.faiss.vector_file``), and the IVF candidate depth
that grows with the vectors a search scans (``stores.faiss.filtered.IVF_SCANNED_SHARE``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kb_base.errors import StoreError
from stores.faiss.vector_file import VectorFile
from tests.test_faiss_compressed import _recall_and_scores, _records, _store, structured


def _written(path: Path, rows: int = 1_000, dim: int = 8) -> np.ndarray:
    data = np.random.default_rng(7).normal(size=(rows, dim)).astype(np.float32)
    np.save(path, data, allow_pickle=False)
    return data


def test_take_reads_exactly_the_rows_asked_for_in_runs_and_alone(tmp_path: Path) -> None:
    data = _written(tmp_path / "v.npy")
    vectors = VectorFile(tmp_path / "v.npy")
    assert vectors.shape == data.shape and len(vectors) == data.shape[0]
    scattered = np.sort(np.random.default_rng(1).choice(data.shape[0], size=200, replace=False))
    np.testing.assert_array_equal(vectors.take(scattered), data[scattered])
    runs = np.array([0, 1, 2, 3, 500, 501, 998, 999])  # runs of consecutive rows, the file's first and last
    np.testing.assert_array_equal(vectors.take(runs), data[runs])
    np.testing.assert_array_equal(vectors.take(np.arange(990, 1_000)), data[990:])  # one run, to the end
    assert vectors.take(np.zeros(0, dtype=np.int64)).shape == (0, 8)
    with pytest.raises(IndexError, match="row 1000 of 1000"):
        vectors.take(np.array([5, 1_000]))
    vectors.close()
    vectors.close()  # closing twice is harmless


def test_a_truncated_or_foreign_file_is_refused_when_opened(tmp_path: Path) -> None:
    _written(tmp_path / "v.npy")
    whole = (tmp_path / "v.npy").read_bytes()
    (tmp_path / "short.npy").write_bytes(whole[: len(whole) - 4])
    with pytest.raises(StoreError, match="header promises"):
        VectorFile(tmp_path / "short.npy")
    np.save(tmp_path / "f64.npy", np.zeros((3, 4)), allow_pickle=False)
    with pytest.raises(StoreError, match="float32"):
        VectorFile(tmp_path / "f64.npy")


def test_searches_never_map_the_vector_file_into_the_process(tmp_path: Path) -> None:
    """A memory map put every cached neighbour of each row read into the process's resident memory (11.7 GB of a
    15 GB file after 400 queries at 10M vectors): the serving process must hold none of the file."""
    data, centres = structured(4_000, seed=11)
    queries, _ = structured(20, seed=12, centres=centres)
    store = _store(tmp_path, "IVF_PQ", exact_below=1_000)
    store.upsert(_records(data))
    store.close()
    reopened = _store(tmp_path, "IVF_PQ", exact_below=1_000)
    with reopened._snapshot() as view:
        assert view.segments.segments[0].layout.vectors is not None  # a trained index: codes and a vector file
    assert _recall_and_scores(reopened, data, queries, np.ones(data.shape[0], dtype=bool)) >= 0.95
    mapped = [line for line in Path("/proc/self/maps").read_text().splitlines() if ".vectors.npy" in line]
    assert mapped == []
    reopened.close()


def test_ivf_candidates_grow_with_the_vectors_scanned_not_only_with_k(tmp_path: Path) -> None:
    """With ``rerank`` 1 (k candidates) a few large lists rank the true neighbours too deep in the codes' order:
    the candidate list must still hold 1% of the vectors scanned."""
    data, centres = structured(16_000, seed=21)
    queries, _ = structured(30, seed=22, centres=centres)
    # 8 lists of ~2,000 vectors, 4 probed: ~8k scanned, so >= 80 candidates where rerank 1 asks for 10
    store = _store(tmp_path, "IVF_PQ", exact_below=2_000, nlist=8, nprobe=4, rerank=1, train_sample=16_000)
    store.upsert(_records(data))
    assert _recall_and_scores(store, data, queries, np.ones(data.shape[0], dtype=bool)) >= 0.9
    store.close()

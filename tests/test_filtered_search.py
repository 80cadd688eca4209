"""Filtered similarity on FAISS indexes: exact scan of few matches, filtered HNSW for many, rowid mapping."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from stores.faiss import filtered as faiss_filtered
from stores.faiss.filtered import FilteredSearch

DIM = 32


def _index(kind: str, rowids: np.ndarray, rng: np.random.Generator) -> tuple[faiss.Index, np.ndarray]:
    vectors = rng.normal(size=(rowids.size, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    inner = faiss.IndexHNSWFlat(DIM, 32, faiss.METRIC_INNER_PRODUCT) if kind == "HNSW" else faiss.IndexFlatIP(DIM)
    index = faiss.IndexIDMap2(inner)
    index.add_with_ids(vectors, rowids)
    return index, vectors


def _exact(vectors: np.ndarray, rowids: np.ndarray, allowed: np.ndarray, query: np.ndarray, k: int) -> list[int]:
    chosen = np.isin(rowids, allowed)
    scores = vectors[chosen] @ query[0]
    return rowids[chosen][np.argsort(-scores, kind="stable")[:k]].tolist()


@pytest.mark.parametrize("kind", ["FLAT", "HNSW"])
def test_few_matches_are_searched_exactly(kind):
    rng = np.random.default_rng(1)
    rowids = np.arange(1, 3001, dtype=np.int64) * 3  # rowids are not positions
    index, vectors = _index(kind, rowids, rng)
    prepared = FilteredSearch(index)
    allowed = np.sort(rng.choice(rowids, size=40, replace=False))
    for query in rng.normal(size=(10, 1, DIM)).astype(np.float32):
        scores, found = prepared.search(query, 10, allowed, 64)
        assert found.tolist() == _exact(vectors, rowids, allowed, query, 10)
        assert np.all(np.diff(scores) <= 1e-6)


def test_rowids_out_of_position_order_map_to_the_right_rows():
    rng = np.random.default_rng(2)
    rowids = rng.permutation(np.arange(10, 2010, dtype=np.int64))  # re-added rows: ids not ascending
    index, vectors = _index("FLAT", rowids, rng)
    prepared = FilteredSearch(index)
    allowed = np.sort(rng.choice(rowids, size=300, replace=False))
    missing = np.array([5, 99_999], dtype=np.int64)  # rowids the index does not hold are ignored
    query = rng.normal(size=(1, DIM)).astype(np.float32)
    _, found = prepared.search(query, 10, np.sort(np.concatenate([allowed, missing])), 0)
    assert found.tolist() == _exact(vectors, rowids, allowed, query, 10)
    # a filter mask over metadata columns in rowid order (a segment's) gives the same rows
    mask = np.isin(prepared.sorted_rowids, allowed)
    _, by_mask = prepared.search_positions(query, 10, prepared.positions_in_rowid_order(mask), 0)
    assert by_mask.tolist() == found.tolist()


def test_many_matches_use_filtered_hnsw_and_keep_recall(monkeypatch):
    rng = np.random.default_rng(3)
    rowids = np.arange(1, 20_001, dtype=np.int64)
    index, vectors = _index("HNSW", rowids, rng)
    prepared = FilteredSearch(index)
    calls = {"hnsw": 0}
    original = prepared.inner.search

    def counting(*args, **kwargs):
        calls["hnsw"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(prepared, "inner", type("Spy", (), {"search": staticmethod(counting),
                                                            "hnsw": prepared.inner.hnsw})())
    for fraction in (0.5, 0.8):
        allowed = np.sort(rng.choice(rowids, size=int(rowids.size * fraction), replace=False))
        assert allowed.size > faiss_filtered.EXACT_MATCHES_MAX
        recalls = []
        for query in rng.normal(size=(20, 1, DIM)).astype(np.float32):
            _, found = prepared.search(query, 10, allowed, 192)  # kb's default efSearch
            assert np.isin(found, allowed).all()  # never a row outside the filter
            recalls.append(len(set(found.tolist()) & set(_exact(vectors, rowids, allowed, query, 10))) / 10)
        assert np.mean(recalls) >= 0.9, (fraction, np.mean(recalls))
    assert calls["hnsw"] == 40

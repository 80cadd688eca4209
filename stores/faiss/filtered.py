"""Filtered similarity on a FAISS index: exact over the matches, or filtered HNSW traversal, by selectivity.

kb's indexes are ``IndexIDMap2`` around a flat or HNSW index: rowids outside, internal positions
inside. A filter first becomes the rowids it matches (``stores.columnar_filter``); then:

- **exact over the matches** (flat indexes always; HNSW up to ``EXACT_MATCHES_MAX`` matches): faiss
  computes the inner products of exactly the matching rows, read in place (``compute_distance_subset``;
  a bitmap-selected scan visits every row and a numpy gather copies them, both several times slower at
  1M rows). Recall is 1.0.
- **filtered HNSW traversal** (more matches): the graph is searched with a bitmap over internal
  positions, and
  ``efSearch`` is raised by the inverse selectivity below ``FULL_EF_SELECTIVITY`` so that enough
  matching neighbours are met (faiss's ``SearchParametersHNSW``), capped at ``MAX_EF``.

What it replaced: ``reconstruct_batch`` of every match (a hash lookup and a copy per vector: 24 ms for
8.5k matches) and ``IDSelectorBatch`` (a hash set built per query: 5 ms for 50k rowids).
Thresholds come from measurements at 100k and 1M chunks (``python -m benchmarks.search_scale``):
at 1M, HNSW with a filter keeps recall@10 0.95-0.98 from 1.6% to 92% selectivity at efSearch 192-1024,
but only ~0.4-0.6 at 0.2%, where the exact path answers.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import faiss
import numpy as np

from stores.columnar_filter import MetadataColumns

if TYPE_CHECKING:
    from stores.faiss.vector_file import VectorFile

EXACT_MATCHES_MAX = 8_000
FULL_EF_SELECTIVITY = 0.1  # below it efSearch grows as 1 / selectivity
MAX_EF = 1024
# An IVF index's re-ranked candidates: at least this share of the vectors its probed lists hold. How deep the
# true neighbours sit in the codes' ranking grows with how many vectors the lists hold, not with k: at 1M
# vectors (4,096 lists, 48 probed: ~11.7k scanned) 240 candidates found all of the true top 10; at 10M the same
# lists hold ~117k and 240 candidates found 74% of it, 500 90%, 750 95%, 1,000 98%
# (``python -m benchmarks.compressed_index``, SciFact-structured vectors). 1% keeps recall as the index grows.
IVF_SCANNED_SHARE = 0.01


class FilteredSearch:
    """The internal layout of one index (immutable once committed), prepared for filtered searches.

    ``vectors``: for a compressed index (codes only: ``stores.faiss.compressed``), its exact float32 vectors in
    position order (``stores.faiss.vector_file``); every score it returns is computed from them, over ``rerank``
    times as many candidates as asked for (an IVF index: at least ``IVF_SCANNED_SHARE`` of those it scans)."""

    def __init__(self, index: faiss.Index, vectors: VectorFile | None = None, rerank: int = 1) -> None:
        self.index = index
        self.inner = faiss.downcast_index(index.index)
        self.hnsw = isinstance(self.inner, faiss.IndexHNSW)
        self.ivf = isinstance(self.inner, faiss.IndexIVF)
        self.vectors, self.rerank = vectors, max(1, rerank)
        self.flat = None if vectors is not None else (
            faiss.downcast_index(self.inner.storage) if self.hnsw else self.inner)
        self.rowids = faiss.vector_to_array(index.id_map)  # internal position -> rowid
        self.ntotal = int(index.ntotal)
        ascending = self.rowids.size < 2 or bool(np.all(self.rowids[1:] > self.rowids[:-1]))
        # rowids ascend with position unless rows were removed and re-added: keep a sorted lookup then
        self._order = None if ascending else np.argsort(self.rowids, kind="stable")
        self._sorted = self.rowids if ascending else self.rowids[self._order]
        # (generation read at, columns) of this segment's metadata, rows in rowid order (stores.faiss.segment_columns)
        self.metadata: tuple[int, MetadataColumns] | None = None
        # a merge output's inputs' (generation, columns), when a reader had them all: its columns come from those
        self.merged_from: list[tuple[int, MetadataColumns]] | None = None

    def positions(self, rowids: np.ndarray) -> np.ndarray:
        """Internal positions of those of ``rowids`` that are in the index."""
        if self._sorted.size == 0 or rowids.size == 0:
            return np.zeros(0, dtype=np.int64)
        at = np.minimum(np.searchsorted(self._sorted, rowids), self._sorted.size - 1)
        found = at[self._sorted[at] == rowids]
        return found if self._order is None else self._order[found]

    @property
    def sorted_rowids(self) -> np.ndarray:
        return self._sorted

    def in_rowid_order(self, by_position: np.ndarray) -> np.ndarray:
        """``by_position`` (one value per internal position) reordered to follow ``sorted_rowids``."""
        return by_position if self._order is None else by_position[self._order]

    def positions_in_rowid_order(self, mask: np.ndarray) -> np.ndarray:
        """Internal positions of the rows a ``mask`` over ``sorted_rowids`` selects (a segment's metadata columns
        are in that order)."""
        chosen = np.flatnonzero(mask)
        return chosen if self._order is None else self._order[chosen]

    def _bitmap(self, positions: np.ndarray) -> np.ndarray:
        bits = np.zeros(self.ntotal, dtype=bool)
        bits[positions] = True
        return np.packbits(bits, bitorder="little")

    def search(self, query: np.ndarray, k: int, allowed_rowids: np.ndarray,
               ef_search: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rowids) of the ``k`` nearest among ``allowed_rowids``, best first."""
        return self.search_positions(query, k, self.positions(allowed_rowids), ef_search)

    def search_positions(self, query: np.ndarray, k: int, positions: np.ndarray,
                         ef_search: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rowids) of the ``k`` nearest among the rows at internal ``positions``, best first."""
        if positions.size == 0 or k <= 0:
            return np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.int64)
        k = min(k, int(positions.size))
        if not (self.hnsw or self.ivf) or positions.size <= EXACT_MATCHES_MAX:
            return self._exact(query, k, positions)
        selectivity = positions.size / max(1, self.ntotal)
        bitmap = self._bitmap(positions)
        found = self.search_selected(query, k, bitmap, ef_search, selectivity, int(positions.size))
        del bitmap  # kept alive until here: the selector points into it
        return found

    def search_selected(self, query: np.ndarray, k: int, bitmap: np.ndarray | None, ef_search: int,
                        selectivity: float, live: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rowids) of the best ``k`` of the rows ``bitmap`` selects (None: all), by the index's own
        traversal (HNSW or IVF), deepened by the inverse ``selectivity``; a compressed index's ``k * rerank``
        candidates are then scored exactly."""
        selector = faiss.IDSelectorBitmap(self.ntotal, faiss.swig_ptr(bitmap)) if bitmap is not None else None
        want = min(live, k * self.rerank) if self.vectors is not None else k
        if self.hnsw:
            base = ef_search or int(self.inner.hnsw.efSearch)
            ef = min(MAX_EF, max(base, want, math.ceil(base * FULL_EF_SELECTIVITY / selectivity)))
            params = faiss.SearchParametersHNSW(sel=selector, efSearch=max(ef, want))
        else:
            base = int(self.inner.nprobe)
            nprobe = min(int(self.inner.nlist), max(base, math.ceil(base * FULL_EF_SELECTIVITY / selectivity)))
            params = faiss.SearchParametersIVF(sel=selector, nprobe=nprobe)
            if self.vectors is not None:
                scanned = live * min(1.0, nprobe / max(1, int(self.inner.nlist)))
                want = min(live, max(want, math.ceil(IVF_SCANNED_SHARE * scanned)))
        scores, labels = self.inner.search(query, want, params=params)
        keep = labels[0] >= 0
        if self.vectors is None:
            return scores[0][keep], self.rowids[labels[0][keep]]
        return self._exact(query, k, labels[0][keep])

    def _exact(self, query: np.ndarray, k: int, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Inner products with exactly the rows at ``positions`` (faiss reads them in place; a compressed index's
        from its vector file, in file order), best k, ties by rowid."""
        if self.vectors is not None:
            ordered = np.sort(positions)
            scores = self.vectors.take(ordered) @ np.asarray(query, dtype=np.float32).reshape(-1)
            rowids = self.rowids[ordered]
        else:
            labels = np.ascontiguousarray(positions, dtype=np.int64).reshape(1, -1)
            scores = np.empty(labels.shape, dtype=np.float32)
            query = np.ascontiguousarray(query, dtype=np.float32)
            self.flat.compute_distance_subset(1, faiss.swig_ptr(query), labels.shape[1], faiss.swig_ptr(scores),
                                              faiss.swig_ptr(labels))
            scores, rowids = scores[0], self.rowids[labels[0]]
        if scores.size > k:
            kth = np.partition(scores, scores.size - k)[scores.size - k]
            chosen = np.flatnonzero(scores >= kth)  # everything tied with the k-th: the rowid tie-break is exact
            scores, rowids = scores[chosen], rowids[chosen]
        order = np.lexsort((rowids, -scores))[:k]
        return scores[order], rowids[order]

"""A FAISS knowledge bank's vectors as immutable segments, and the set of them that makes one generation.

Each commit that adds vectors writes one segment: an ``IndexIDMap2`` (flat or HNSW) whose ids are the records'
rowids, never reused. Deletions and replacements of vectors in committed segments are tombstones, rows
``(rowid, gen)`` in SQLite. The state at generation C is every segment with ``added <= C < retired`` minus
the tombstones with ``gen <= C``. A ``SegmentSet`` is that state in memory: each ``Segment`` shares its FAISS
index with every generation that holds it and carries its own deletion mask, so the next generation costs
only its new segments and new tombstones (``stores.faiss.generation_loader``).

Searches ask every segment for its best ``k`` (deleted rows excluded by an ``IDSelectorBitmap`` over the
segment's positions) and keep the best ``k`` of those, ties by rowid: exact for flat indexes, and for HNSW
each graph is searched as deeply as one whole graph would be. Filtered searches go through each segment's
``FilteredSearch``, with masks from the segment's own metadata columns and its deletion mask
(``stores.faiss.segment_columns``).
"""

from __future__ import annotations

from collections.abc import Sequence

import faiss
import numpy as np

from stores.faiss.filtered import FilteredSearch

SCHEMA = """
CREATE TABLE IF NOT EXISTS segments (
    segment INTEGER PRIMARY KEY,
    added INTEGER NOT NULL,
    retired INTEGER,
    rowid_lo INTEGER NOT NULL,
    rowid_hi INTEGER NOT NULL,
    count INTEGER NOT NULL,
    kind TEXT NOT NULL,
    merged_into INTEGER,
    source_gen INTEGER
);
CREATE TABLE IF NOT EXISTS tombstones (rowid INTEGER PRIMARY KEY, gen INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS tombstones_by_gen ON tombstones(gen);
"""

# An HNSW segment of fewer vectors than this is searched exactly, over its graph's own stored vectors: a commit's
# small segments cost a graph walk each (efSearch 192 visits most of a small graph anyway), and a knowledge bank
# holds up to about ten of them per merge tier. Measured: see docs/internals/commit-point.md ("Small segments
# searched exactly").
EXACT_BELOW = 8192

_EMPTY_SCORES = np.zeros(0, dtype=np.float32)
_EMPTY_ROWIDS = np.zeros(0, dtype=np.int64)


class Segment:
    """One segment's index (shared, read-only once committed) and which of its rows are deleted at a generation."""

    __slots__ = ("number", "index", "kind", "layout", "dead", "live", "lo", "hi", "_bitmap")

    def __init__(self, number: int, index: faiss.Index, kind: str = "commit", dead: np.ndarray | None = None,
                 layout: FilteredSearch | None = None) -> None:
        self.number, self.index, self.kind = number, index, kind
        self.layout = layout if layout is not None else FilteredSearch(index)
        ids = self.layout.rowids
        self.lo = int(self.layout.sorted_rowids[0]) if ids.size else 0
        self.hi = int(self.layout.sorted_rowids[-1]) if ids.size else -1
        self.dead = dead if dead is not None and dead.any() else None
        self.live = int(ids.size - (int(self.dead.sum()) if self.dead is not None else 0))
        # the live rows as faiss's bitmap selector wants them (bit i of byte i // 8, little-endian)
        self._bitmap = np.packbits(~self.dead, bitorder="little") if self.dead is not None else None

    @property
    def size(self) -> int:
        return int(self.layout.ntotal)

    def contains(self, rowids: np.ndarray) -> np.ndarray:
        """Positions in this segment of those ``rowids`` (sorted) it holds, deleted or not."""
        part = rowids[np.searchsorted(rowids, self.lo) : np.searchsorted(rowids, self.hi, side="right")]
        return self.layout.positions(part)

    def with_tombstones(self, rowids: np.ndarray) -> Segment:
        """This segment with ``rowids`` (sorted) deleted too; itself when none of them is one of its rows."""
        positions = self.contains(rowids)
        if positions.size == 0:
            return self
        dead = self.dead.copy() if self.dead is not None else np.zeros(self.size, dtype=bool)
        dead[positions] = True
        return Segment(self.number, self.index, self.kind, dead, self.layout)

    def live_rowids(self) -> np.ndarray:
        ids = self.layout.rowids
        return ids if self.dead is None else ids[~self.dead]

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rowids) of this segment's best ``k`` live rows."""
        k = min(k, self.live)
        if k <= 0:
            return _EMPTY_SCORES, _EMPTY_ROWIDS
        if self.layout.vectors is not None:  # codes only: candidates from them, scores from the vector file
            return self.layout.search_selected(query, k, self._bitmap, 0, self.live / max(1, self.size), self.live)
        exact = self.layout.hnsw and self.size < EXACT_BELOW
        if self._bitmap is None and not exact:
            scores, labels = self.index.search(query, k)
            keep = labels[0] >= 0
            return scores[0][keep], labels[0][keep]
        selector = (faiss.IDSelectorBitmap(self.size, faiss.swig_ptr(self._bitmap)) if self._bitmap is not None
                    else None)
        if exact:  # the graph's storage: the same vectors by position, searched in full
            scores, labels = self.layout.flat.search(query, k, params=faiss.SearchParameters(sel=selector)
                                                     if selector is not None else None)
        else:
            inner = self.layout.inner
            params = (faiss.SearchParametersHNSW(sel=selector, efSearch=inner.hnsw.efSearch) if self.layout.hnsw
                      else faiss.SearchParameters(sel=selector))
            scores, labels = inner.search(query, k, params=params)
        keep = labels[0] >= 0
        return scores[0][keep], self.layout.rowids[labels[0][keep]]

    def search_allowed(self, query: np.ndarray, k: int, allowed: np.ndarray,
                       ef_search: int) -> tuple[np.ndarray, np.ndarray]:
        """The best ``k`` among ``allowed`` rowids (sorted; live records only)."""
        part = allowed[np.searchsorted(allowed, self.lo) : np.searchsorted(allowed, self.hi, side="right")]
        return self.layout.search(query, k, part, ef_search)


def best_of(parts: Sequence[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[list[int], list[float]]:
    """The best ``k`` (rowids, scores) of several segments' results, best first, ties by rowid."""
    parts = [p for p in parts if p[0].size]
    if not parts:
        return [], []
    if len(parts) == 1:
        scores, rowids = parts[0]
    else:
        scores = np.concatenate([p[0] for p in parts])
        rowids = np.concatenate([p[1] for p in parts])
    order = np.lexsort((rowids, -scores))[:k]
    return rowids[order].tolist(), scores[order].tolist()


class SegmentSet:
    """The segments of one generation (or of a writer's view: the committed ones plus its own)."""

    def __init__(self, generation: int, dim: int | None, segments: Sequence[Segment],
                 waiting: frozenset[int] = frozenset()) -> None:
        self.generation, self.dim = generation, dim
        self.segments = tuple(s for s in segments if s.size)
        self.ntotal = sum(s.live for s in self.segments)
        # merge outputs still loading on a helper thread: their inputs stand in for them (same live rows)
        self.waiting = waiting
        self.d = dim or 0

    @property
    def single_index(self) -> faiss.Index | None:
        """The one index that answers alone (one segment, nothing deleted in it, scores its own), else None."""
        if len(self.segments) == 1 and self.segments[0].dead is None and self.segments[0].layout.vectors is None:
            return self.segments[0].index
        return None

    def search(self, query: np.ndarray, k: int) -> tuple[list[int], list[float]]:
        return best_of([s.search(query, k) for s in self.segments], k)

    def search_allowed(self, query: np.ndarray, k: int, allowed: np.ndarray,
                       ef_search: int) -> tuple[list[int], list[float]]:
        allowed = np.sort(allowed)
        return best_of([s.search_allowed(query, k, allowed, ef_search) for s in self.segments], k)

    def reconstruct(self, rowids: np.ndarray) -> dict[int, np.ndarray]:
        """Vectors of the live ``rowids``, each read from the segment that holds it."""
        out: dict[int, np.ndarray] = {}
        wanted = np.sort(np.asarray(rowids, dtype=np.int64))
        for segment in self.segments:
            positions = segment.contains(wanted)
            if segment.dead is not None:
                positions = positions[~segment.dead[positions]]
            if positions.size:
                exact = segment.layout.vectors  # a compressed index's own vectors are lossy: the file's are not
                if exact is not None:
                    positions = np.sort(positions)
                keys = segment.layout.rowids[positions]
                found = exact.take(positions) if exact is not None else segment.index.reconstruct_batch(keys)
                for key, vector in zip(keys.tolist(), found, strict=True):
                    out[key] = vector
        return out

"""A FAISS generation's metadata columns, built per segment: a commit's first filtered search reads its own rows.

Filters on committed snapshots are evaluated on in-memory columns (``stores.columnar_filter``). Built from every
record, they cost a read and a JSON parse of the whole knowledge bank once per generation, so
with segments the first filtered search after a one-document commit paid the knowledge bank's size. Here each
segment has its own columns, rows in rowid order, kept on its ``FilteredSearch`` layout, which every generation
holding the segment shares; a generation's columns are its segments' columns with its deletion masks.

Why a segment's columns stay right: a committed rowid's record never changes (rowids are never reused; a
replacement gets a new rowid), and a deleted row stays deleted. Columns read in a snapshot at generation B hold
every row live at B, so they answer for any generation G >= B holding the segment: rows deleted after B are in G's
deletion mask, and rows deleted before B (absent when read, so "missing" in every column) are too. A reader still
at G < B (rows deleted in (G, B] would be missing) reads its own, uncached. A merge output's columns are gathered
from its inputs' when the reader had them all (``FilteredSearch.merged_from``, set by
``stores.faiss.generation_loader``): no JSON is read, and they hold from the latest input's generation on, by the
same argument.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sqlite3
from collections.abc import Sequence

import numpy as np

from kb_base.filters import Filter
from stores.columnar_filter import MetadataColumns, gather_columns
from stores.faiss.segments import Segment, best_of

TRIM_AFTER_ROWS = 100_000  # columns built from this many rows give their parse's freed memory back to the OS

try:
    _malloc_trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
except (OSError, AttributeError):  # not glibc: nothing to trim with
    _malloc_trim = None


def _give_back_freed_memory() -> None:
    """Return the parse's freed heap to the OS (glibc ``malloc_trim``). Building columns parses every row's JSON and
    frees it again, but glibc keeps the freed heap: at 1M rows of 4 keys the process stayed 55 bytes a row larger
    for columns of 7 (``malloc_trim`` brings it to 8; it takes well under a millisecond)."""
    if _malloc_trim is not None:
        _malloc_trim(0)


def read_segment_columns(conn: sqlite3.Connection, segment: Segment) -> MetadataColumns:
    """Columns of ``segment``'s rows in rowid order, from the records ``conn``'s snapshot holds (a deleted row's
    metadata is empty: its deletion mask excludes it)."""
    rowids = segment.layout.sorted_rowids
    texts = ["{}"] * rowids.size
    if rowids.size:
        # a merge output's range may hold other segments' rows: those are skipped by the membership check
        rows = conn.execute("SELECT rowid, metadata FROM records WHERE rowid BETWEEN ? AND ? ORDER BY rowid",
                            (segment.lo, segment.hi)).fetchall()
        found = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        at = np.minimum(np.searchsorted(rowids, found), rowids.size - 1)
        hit = rowids[at] == found
        for row, position in zip(np.flatnonzero(hit).tolist(), at[hit].tolist(), strict=True):
            texts[position] = rows[row][1]
    columns = MetadataColumns(rowids, texts)
    if rowids.size >= TRIM_AFTER_ROWS:
        del texts, rows
        _give_back_freed_memory()
    return columns


class GenerationColumns:
    """The metadata columns of one committed generation: each segment's, with the generation's deletions."""

    def __init__(self, parts: Sequence[tuple[Segment, MetadataColumns]], rows_read: int) -> None:
        self.parts = list(parts)
        self.rows_read = rows_read  # records parsed to build these (the rest came from segments' columns)
        # each part's live rows in its columns' (rowid) order; None where nothing is deleted
        self._live = [None if s.dead is None else ~s.layout.in_rowid_order(s.dead) for s, _ in self.parts]

    def _masks(self, flt: Filter) -> list[np.ndarray]:
        masks = []
        for (_, columns), live in zip(self.parts, self._live, strict=True):
            mask = columns.mask(flt)
            masks.append(mask if live is None else mask & live)
        return masks

    def select(self, flt: Filter) -> np.ndarray:
        """Rowids of the live records matching ``flt``, sorted."""
        picked = [columns.rowids[mask] for (_, columns), mask in zip(self.parts, self._masks(flt), strict=True)]
        picked = [p for p in picked if p.size]
        if not picked:
            return np.zeros(0, dtype=np.int64)
        if len(picked) == 1:
            return picked[0]
        return np.sort(np.concatenate(picked), kind="stable")  # sorted runs: timsort merges them

    def count(self, flt: Filter) -> int:
        return int(sum(int(mask.sum()) for mask in self._masks(flt)))

    def search(self, query: np.ndarray, k: int, flt: Filter, ef_search: int) -> tuple[list[int], list[float]]:
        """The best ``k`` (rowids, scores) among the live records matching ``flt``, ties by rowid."""
        return best_of([segment.layout.search_positions(query, k, segment.layout.positions_in_rowid_order(mask),
                                                        ef_search)
                        for (segment, _), mask in zip(self.parts, self._masks(flt), strict=True)], k)


def generation_columns(conn: sqlite3.Connection | None, segments: Sequence[Segment],
                       generation: int) -> GenerationColumns | None:
    """``segments``' columns at ``generation``, reading only the segments whose columns are not kept yet (``conn``
    in a snapshot of ``generation``); None when ``conn`` is None and some would have to be read."""
    parts: list[tuple[Segment, MetadataColumns]] = []
    rows_read = 0
    for segment in segments:
        kept = segment.layout.metadata
        if kept is not None and kept[0] <= generation:
            parts.append((segment, kept[1]))
            continue
        inherited = segment.layout.merged_from
        if inherited is not None and max(b for b, _ in inherited) <= generation:
            columns = gather_columns([c for _, c in inherited], segment.layout.sorted_rowids)
            segment.layout.metadata, segment.layout.merged_from = (max(b for b, _ in inherited), columns), None
            parts.append((segment, columns))
            continue
        if conn is None:
            return None
        columns = read_segment_columns(conn, segment)
        rows_read += segment.size
        if kept is None or kept[0] > generation:
            segment.layout.metadata = (generation, columns)  # the earliest generation's serve the most readers
        parts.append((segment, columns))
    return GenerationColumns(parts, rows_read)

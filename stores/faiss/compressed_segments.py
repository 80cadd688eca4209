"""How a segment of a compressed index type is written: by a commit, and by a merge (``stores.faiss.compressed``).

A compressed segment is two files named by its number: ``<n>.vectors.npy`` (the exact float32 vectors, in the
index's position order; a commit's is the file its transaction spilled its vectors to, ``stores.faiss.spill``)
and ``<n>.faiss`` (the trained index of codes). Both are staged, fsynced and renamed into
``segments/`` before the SQLite commit that names segment ``n``, the vector file first, so that a committed
index always finds its vectors; a crash before that commit leaves orphans numbered at or above
``meta.next_segment``, which the next writer removes with the other orphans (``segment_files.remove_stale``
goes by the number before the first dot).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from stores.faiss.compressed import (
    VECTORS_SUFFIX,
    build_index,
    open_vectors,
    stored_rows,
    trains,
    vectors_path,
    write_vectors,
)
from stores.faiss.segment_files import write_segment
from stores.faiss.segments import Segment
from stores.faiss.spill import SpilledVectors

SLICE = 20_000  # vectors copied into a merge's staged vector file at a time


def write_spilled_segment(settings: dict[str, Any], spill: SpilledVectors, staging: Path, folder: Path, number: int,
                          written_point: str) -> tuple[tuple[int, int, int], faiss.Index] | None:
    """Write a compressed type's transaction segment from the vectors it spilled (``stores.faiss.spill``): below
    ``exact_below`` live vectors a flat index of them; otherwise the spill file itself, completed and fsynced,
    becomes the vector file (a rename, no copy) and the index is trained on a sample of it and filled a slice at a
    time. ((lowest rowid, highest rowid, count), the index written), or None when every vector was removed again
    (nothing written)."""
    rowids = spill.live_rowids()
    if rowids.size == 0:
        return None
    if not trains(settings, int(rowids.size)):
        built = spill.searchable()
        write_segment(built, staging, folder, number, written_point)
    else:
        path, rowids = spill.finish()
        built = build_index(settings, open_vectors(path), rowids)
        assert built is not None  # nothing asks a commit's build to stop
        os.replace(path, vectors_path(folder, number))
        write_segment(built, staging, folder, number, written_point)  # fsyncs the folder: both renames durable
    return (int(rowids.min()), int(rowids.max()), int(rowids.size)), built


def build_merged(settings: dict[str, Any], inputs: Sequence[Segment], dim: int, staging: Path,
                 between_slices: Callable[[float], bool]) -> tuple[faiss.Index | None, Path | None]:
    """A merge's output for a compressed type: the inputs' live vectors (oldest segment first, so rowids mostly
    ascend) and an index trained anew on a sample of them; (None, None) when nothing is live or
    ``between_slices`` (given each slice's seconds: it pauses, and says whether to go on) asks to stop.
    Below ``exact_below`` live vectors, an exact flat index and no vector file. Memory: one slice of vectors and
    the new codes; the vectors go through the staged vector file (the second value), which the caller renames
    to ``vectors_path(segments, n)`` with the index it writes."""
    ordered = sorted((s for s in inputs if s.live), key=lambda s: s.lo)
    live = sum(s.live for s in ordered)
    if live == 0:
        return None, None
    chosen = [(s, np.flatnonzero(~s.dead) if s.dead is not None else np.arange(s.size)) for s in ordered]
    rowids = np.concatenate([s.layout.rowids[positions] for s, positions in chosen])
    if not trains(settings, live):
        vectors = np.concatenate([stored_rows(s.layout, positions) for s, positions in chosen])
        return build_index(settings, vectors, rowids, between_slices), None
    staging.mkdir(parents=True, exist_ok=True)
    path = staging / f"merged{VECTORS_SUFFIX}"
    stopped = False

    def fill(out: np.ndarray) -> None:
        nonlocal stopped
        at = 0
        for segment, positions in chosen:
            for start in range(0, positions.size, SLICE):
                began = time.perf_counter()
                part = positions[start : start + SLICE]
                out[at : at + part.size] = stored_rows(segment.layout, part)
                at += part.size
                if not between_slices(time.perf_counter() - began):
                    stopped = True
                    return

    vectors = write_vectors(path, fill, live, dim)
    if stopped:
        return None, None
    index = build_index(settings, vectors, rowids, between_slices)
    return (index, path) if index is not None else (None, None)

"""How a segment of a compressed index type is written: by a commit, and by a merge (``stores.faiss.compressed``).

A compressed segment is two files named by its number: ``<n>.vectors.npy`` (the exact float32 vectors, in the
index's position order) and ``<n>.faiss`` (the trained index of codes). Both are staged, fsynced and renamed into
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
    stored_rows,
    trains,
    vectors_path,
    write_vectors,
)
from stores.faiss.segment_files import write_segment
from stores.faiss.segments import Segment

SLICE = 20_000  # vectors copied into a merge's staged vector file at a time


def write_commit_segment(settings: dict[str, Any], index: faiss.Index, staging: Path, folder: Path, number: int,
                         written_point: str) -> None:
    """Write a transaction's segment (a flat ``IndexIDMap2`` of its vectors, for a compressed type) as the
    store's index type wants it: unchanged for FLAT and HNSW, and for a compressed type below ``exact_below``
    vectors; otherwise its vector file plus an index trained on (a sample of) them."""
    if not trains(settings, int(index.ntotal)):
        write_segment(index, staging, folder, number, written_point)
        return
    flat = faiss.downcast_index(index.index)
    count, dim = int(index.ntotal), int(index.d)
    rows = faiss.rev_swig_ptr(flat.get_xb(), count * dim).reshape(count, dim)  # the writer's own copy, no copy
    rowids = faiss.vector_to_array(index.id_map)
    staging.mkdir(parents=True, exist_ok=True)
    staged = staging / f"{number}{VECTORS_SUFFIX}"
    write_vectors(staged, [rows], count, dim)
    built = build_index(settings, rows, rowids)
    assert built is not None  # nothing asks a commit's build to stop
    os.replace(staged, vectors_path(folder, number))
    write_segment(built, staging, folder, number, written_point)  # fsyncs the folder: both renames are durable


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
        vectors = np.concatenate([stored_rows(s.layout)[positions] for s, positions in chosen])
        return build_index(settings, vectors, rowids, between_slices), None
    staging.mkdir(parents=True, exist_ok=True)
    path = staging / f"merged{VECTORS_SUFFIX}"
    stopped = False

    def fill(out: np.ndarray) -> None:
        nonlocal stopped
        at = 0
        for segment, positions in chosen:
            rows = stored_rows(segment.layout)
            for start in range(0, positions.size, SLICE):
                began = time.perf_counter()
                part = positions[start : start + SLICE]
                out[at : at + part.size] = rows[part]
                at += part.size
                if not between_slices(time.perf_counter() - began):
                    stopped = True
                    return

    vectors = write_vectors(path, fill, live, dim)
    if stopped:
        return None, None
    index = build_index(settings, vectors, rowids, between_slices)
    return (index, path) if index is not None else (None, None)

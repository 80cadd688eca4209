"""Compressed FAISS index types with exact re-ranking from a memory-mapped vector file (issue 31).

A FLAT or HNSW segment keeps every vector as float32 in memory (1.5 KB per 384-dimension chunk, plus the HNSW
links). The compressed types keep only codes in memory and the float32 vectors on disk:

- ``HNSW_SQ8``: an HNSW graph over 8-bit scalar-quantized vectors (``IndexHNSWSQ``; 1 byte a dimension).
- ``IVF_PQ``: an inverted file with an HNSW coarse quantizer and product-quantized residuals (FAISS's own
  recommendation from 1M to 100M vectors: ``IVF<nlist>_HNSW32,PQ<m>``); ``pq_m`` bytes a vector.

A search asks the codes for ``k * rerank`` candidates (IVF: at least 1% of the vectors it scans,
``stores.faiss.filtered``) and scores those exactly against the segment's float32 vectors, read from
``segments/<n>.vectors.npy`` (numpy's own format, never pickle; ``stores.faiss.vector_file``): the scores
returned are exact cosine similarities, and only the candidate list is approximate. Filters with few matches
are scored exactly from the same file.

One trained index per segment. A commit's segment is trained on (a sample of) its own vectors when it holds at
least ``exact_below`` of them; smaller segments stay exact flat indexes, so a small knowledge bank stays exact
and a one-document commit costs no training. A merge retrains on a sample of its output's vectors rather than
reusing an input's quantizer: the inputs were trained on fewer (often far fewer) vectors than the output holds,
a coarse quantizer sized for 20k vectors is the wrong size for 2M, and a per-segment training keeps every
segment self-contained (its index and its vector file name one generation's state, nothing shared to retire).
Training reads at most ``train_sample`` vectors (default 100,000), and vectors are added in batches, so a
merge's memory is its codes plus a batch, with the output's vectors written to its staged vector file first.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from kb_base.errors import InvalidInputError
from stores.sqlite.background_io import fsync_path

COMPRESSED_TYPES = ("HNSW_SQ8", "IVF_PQ")
VECTORS_SUFFIX = ".vectors.npy"
ADD_BATCH = 50_000  # vectors encoded and added at a time (bounded memory: 77 MB of float32 at 384 dimensions)
_SEED = 31

_DEFAULTS: dict[str, dict[str, int]] = {
    "HNSW_SQ8": {"m": 32, "ef_construction": 200, "ef_search": 128, "rerank": 4},
    # rerank 24: at 1M vectors (one segment, 1,264 lists) PQ48 puts only 26% of the true top 10 in its own top
    # 10; 120 candidates (rerank 12) re-ranked found 94% of it, 160 99%, 240 all, at +0 to 0.3 ms p50
    "IVF_PQ": {"nlist": 0, "pq_m": 0, "nprobe": 48, "rerank": 24},
}
_COMMON = {"exact_below": 10_000, "train_sample": 100_000}
_RANGES = {"m": (2, 4096), "ef_construction": (2, 4096), "ef_search": (2, 4096), "rerank": (1, 100),
           "nlist": (0, 1 << 20), "pq_m": (0, 4096), "nprobe": (1, 1 << 20), "exact_below": (0, 1 << 40),
           "train_sample": (1000, 10_000_000)}


def compressed_settings(kind: str, raw: dict[str, Any]) -> dict[str, Any]:
    """Validated settings of a compressed index type, with defaults."""
    out: dict[str, Any] = {"type": kind}
    allowed = {**_DEFAULTS[kind], **_COMMON}
    unknown = sorted(set(raw) - set(allowed) - {"type"})
    if unknown:
        raise InvalidInputError(f"unknown FAISS {kind} setting(s) {unknown}; known: {sorted(allowed)}")
    for key, default in allowed.items():
        value = raw.get(key, default)
        low, high = _RANGES[key]
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            auto = " (0: chosen from the segment's size and dimension)" if key in ("nlist", "pq_m") else ""
            raise InvalidInputError(f"FAISS {kind} setting {key!r} must be an integer in [{low}, {high}]{auto}; "
                                    f"got {value!r}")
        out[key] = value
    return out


def is_compressed(settings: dict[str, Any]) -> bool:
    return settings["type"] in COMPRESSED_TYPES


def check_dimension(settings: dict[str, Any], dim: int) -> None:
    """Settings that depend on the vectors' dimension, checked at a knowledge bank's first vectors."""
    if settings["type"] == "IVF_PQ" and settings["pq_m"] and dim % settings["pq_m"]:
        raise InvalidInputError(f"FAISS IVF_PQ setting pq_m={settings['pq_m']} must divide the vector "
                                f"dimension {dim}")


def pq_m_for(settings: dict[str, Any], dim: int) -> int:
    """Sub-quantizers: the setting, else one byte per 8 dimensions (48 at 384), the largest divisor of ``dim``
    not above that."""
    if settings["pq_m"]:
        return int(settings["pq_m"])
    wanted = max(1, dim // 8)
    return max(m for m in range(1, wanted + 1) if dim % m == 0)


def trains(settings: dict[str, Any], count: int) -> bool:
    """Whether a segment of ``count`` vectors gets a trained (compressed) index, or stays exact and flat. Two
    vectors at least: a product quantizer needs as many training vectors as centroids (2**nbits, nbits >= 1)."""
    return is_compressed(settings) and count >= max(2, settings["exact_below"])


def needs_vectors(index: faiss.Index) -> bool:
    """Whether a segment's index holds codes only (its exact vectors are in its vector file)."""
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index
    return isinstance(inner, faiss.IndexIVF | faiss.IndexHNSWSQ)


def vectors_path(folder: Path, number: int) -> Path:
    return folder / f"{number}{VECTORS_SUFFIX}"


def open_vectors(path: Path) -> np.ndarray:
    """A vector file memory-mapped read-only, for a writer's one pass over it (training, adding in batches); the
    mapping goes with the array. Searches read rows with ``stores.faiss.vector_file.VectorFile`` instead."""
    return np.load(path, mmap_mode="r", allow_pickle=False)


def tune(index: faiss.Index, settings: dict[str, Any]) -> None:
    """Search-time parameters from the settings (they may change without a rebuild)."""
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index
    if isinstance(inner, faiss.IndexHNSW) and settings.get("ef_search"):
        inner.hnsw.efSearch = int(settings["ef_search"])
    elif isinstance(inner, faiss.IndexIVF) and settings.get("nprobe"):
        inner.nprobe = min(int(settings["nprobe"]), int(inner.nlist))
        quantizer = faiss.downcast_index(inner.quantizer)
        if isinstance(quantizer, faiss.IndexHNSW):
            quantizer.hnsw.efSearch = max(64, 2 * inner.nprobe)  # deep enough to find nprobe good lists


def _sample(vectors: np.ndarray, limit: int) -> np.ndarray:
    n = vectors.shape[0]
    if n <= limit:
        return np.ascontiguousarray(vectors, dtype=np.float32)
    chosen = np.sort(np.random.default_rng(_SEED).choice(n, size=limit, replace=False))
    return np.ascontiguousarray(vectors[chosen], dtype=np.float32)  # sorted: a memory map reads forwards


def _trained(settings: dict[str, Any], sample: np.ndarray, total: int) -> faiss.Index:
    """An index trained on ``sample`` for a segment of ``total`` vectors."""
    n, dim = sample.shape
    if settings["type"] == "HNSW_SQ8":
        inner = faiss.index_factory(dim, f"HNSW{settings['m']},SQ8", faiss.METRIC_INNER_PRODUCT)
        inner.hnsw.efConstruction = settings["ef_construction"]
    else:
        # nlist ~ 4 sqrt(N) for the segment's N vectors (FAISS's guideline), with at least ~39 training vectors
        # per list; sized from the sample instead, a 1M segment got 1,264 lists of ~790 vectors, and a search
        # scanned (and re-ranked 1% of) 38k vectors where 2,564 lists hold 19k (p50 2.2-3.0 ms against 1.0 for HNSW)
        nlist = settings["nlist"] or max(1, min(int(4 * math.sqrt(total * 1.0)), n // 39, 65536))
        nlist = min(nlist, n)
        nbits = 8 if n >= 256 else max(1, int(math.log2(n)))  # 2**nbits centroids need as many vectors
        # (the factory's object, not a downcast of it: a downcast proxy does not own the index)
        inner = faiss.index_factory(dim, f"IVF{nlist}_HNSW32,PQ{pq_m_for(settings, dim)}x{nbits}",
                                    faiss.METRIC_INNER_PRODUCT)
        # small segments train too (quietly: their candidates are re-ranked exactly anyway)
        inner.cp.min_points_per_centroid = 1
        inner.pq.cp.min_points_per_centroid = 1
        # the factory turns on polysemous training (a reordering of PQ codes for Hamming filtering, which kb does
        # not use): it took ~95% of a 20k segment's training time here (170-210 s under load)
        inner.do_polysemous_training = False
        # k-means assigns with a flat index rather than through the HNSW quantizer; the centroids go into the
        # HNSW graph once, at the end
        clustering = faiss.IndexFlatIP(dim)
        inner.clustering_index = clustering
    inner.train(sample)
    if settings["type"] == "IVF_PQ":
        inner.clustering_index = None  # only needed to train; not written with the index
    return inner


def build_index(settings: dict[str, Any], vectors: np.ndarray, rowids: np.ndarray,
                between_batches: Callable[[float], bool] | None = None) -> faiss.Index | None:
    """One segment's index over ``vectors`` (rows in position order; a memory map is read a batch at a time).
    Below ``exact_below`` vectors: an exact flat index. None when ``between_batches`` (called with each batch's
    seconds) asks to stop."""
    n, dim = vectors.shape
    if not trains(settings, n):
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    else:
        index = faiss.IndexIDMap2(_trained(settings, _sample(vectors, settings["train_sample"]), n))
    for start in range(0, n, ADD_BATCH):
        began = time.perf_counter()
        index.add_with_ids(np.ascontiguousarray(vectors[start : start + ADD_BATCH], dtype=np.float32),
                           np.ascontiguousarray(rowids[start : start + ADD_BATCH], dtype=np.int64))
        if between_batches is not None and not between_batches(time.perf_counter() - began):
            return None
    tune(index, settings)
    return index


def write_vectors(path: Path, parts: Sequence[np.ndarray] | Callable[[np.ndarray], None], count: int,
                  dim: int) -> np.ndarray:
    """Write a vector file (``.npy``: a header, then float32 rows) at ``path`` and fsync it; the rows come from
    ``parts`` in order (or a callable that fills the memory map). Returns the file memory-mapped read-only."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(count, dim))
    if callable(parts):
        parts(out)
    else:
        at = 0
        for part in parts:
            out[at : at + part.shape[0]] = part
            at += part.shape[0]
    out.flush()
    del out
    fsync_path(path)
    return open_vectors(path)


def stored_rows(layout: Any, positions: np.ndarray) -> np.ndarray:
    """A segment's exact vectors at ``positions`` (ascending): read from its vector file, or copied from its flat
    storage."""
    if layout.vectors is not None:
        return layout.vectors.take(positions)
    flat = layout.flat
    return faiss.rev_swig_ptr(flat.get_xb(), layout.ntotal * flat.d).reshape(layout.ntotal, flat.d)[positions]


def remove_file(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    fsync_path(path.parent)

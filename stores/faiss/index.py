"""The FAISS driver's indexes: their settings, how one is built, and how many threads a search uses."""

from __future__ import annotations

import os
import threading
from typing import Any

import faiss

from kb_base.errors import InvalidInputError
from stores.faiss.compressed import COMPRESSED_TYPES, check_dimension, compressed_settings

# One query at a time is kb's common case, and OpenMP's thread hand-off costs more than it saves
# there (10k x 384 flat search: 8.1 ms with 2 threads, 0.85 ms with 1, on the 2-core CI machine).
# OpenMP's thread count is a per-thread setting: every thread that searches sets it once (a service
# searches from its event loop and from pool threads, which otherwise use one OpenMP thread per core).
_SEARCH_THREADS = int(os.environ.get("KB_FAISS_THREADS", "1"))
_omp_configured = threading.local()


def configure_search_threads() -> None:
    if not getattr(_omp_configured, "done", False):
        faiss.omp_set_num_threads(_SEARCH_THREADS)
        _omp_configured.done = True


configure_search_threads()


# FLAT: exact; HNSW: approximate, float32 in memory; the compressed types (stores.faiss.compressed): codes in
# memory, candidates re-ranked exactly from a memory-mapped float32 file per segment
INDEX_TYPES = ("FLAT", "HNSW", *COMPRESSED_TYPES)
# read when a segment is loaded or searched, so they may change at any time (the others shape what is built)
SEARCH_TIME_SETTINGS = ("ef_search", "nprobe", "rerank")


def index_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """Validated index settings with defaults (also used by the KB settings check)."""
    raw = dict(settings.get("index") or {})
    kind = str(raw.get("type", "FLAT")).upper()
    if kind not in INDEX_TYPES:
        raise InvalidInputError(f"unknown FAISS index type {raw.get('type')!r}; choose one of {INDEX_TYPES}")
    if kind in COMPRESSED_TYPES:
        return compressed_settings(kind, raw)
    out = {"type": kind}
    if kind == "HNSW":
        for key, default in (("m", 32), ("ef_construction", 200), ("ef_search", 192)):
            value = raw.get(key, default)
            if not isinstance(value, int) or isinstance(value, bool) or not 2 <= value <= 4096:
                raise InvalidInputError(f"FAISS HNSW setting {key!r} must be an integer in [2, 4096]")
            out[key] = value
    return out


def new_index(settings: dict[str, Any], dim: int) -> faiss.Index:
    """An empty index for ``index_settings`` output: exact inner product, or HNSW over inner product; ids are
    the records' SQLite rowids (IndexIDMap2). A compressed type's writer gathers its vectors in a flat index: its
    segment is trained and encoded from them at commit (``stores.faiss.compressed``)."""
    if settings["type"] in COMPRESSED_TYPES:
        check_dimension(settings, dim)
    if settings["type"] == "HNSW":
        inner = faiss.IndexHNSWFlat(dim, settings["m"], faiss.METRIC_INNER_PRODUCT)
        inner.hnsw.efConstruction = settings["ef_construction"]
        inner.hnsw.efSearch = settings["ef_search"]
    else:
        inner = faiss.IndexFlatIP(dim)
    return faiss.IndexIDMap2(inner)

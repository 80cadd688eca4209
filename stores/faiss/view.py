"""Reads of a FAISS knowledge bank: one view over a SQLite connection and a generation's FAISS segments.

A committed snapshot's view reads records through the store's record cache and evaluates filters on
in-memory metadata columns, one set per segment (``stores.faiss.segment_columns``); a writer's view reads its
own uncommitted state straight from SQLite.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import faiss
import numpy as np

from kb_base.filters import Filter
from kb_base.jsonfast import loads_checked, orjson_reads_exactly
from stores.base import Hit, Record, StoreReader
from stores.faiss.record_cache import CachedRow, RecordCache, cached_metadata, flat_or_none
from stores.faiss.segment_columns import GenerationColumns
from stores.faiss.segments import SegmentSet
from stores.keyword import KeywordIndex
from stores.record_checks import unit_query
from stores.sqlite.filters import filter_to_sql

_BATCH = 500


def _select_by_rowid(count: int) -> str:
    return f"SELECT rowid, id, text, metadata FROM records WHERE rowid IN ({','.join('?' * count)})"


_SELECT_BY_ROWID = [_select_by_rowid(n) for n in range(101)]


def read_rows(conn: sqlite3.Connection, rowids: Sequence[int], cache: RecordCache | None) -> dict[int, Record]:
    """Records by rowid: from the cache where it has them, else from SQLite (then cached)."""
    return {rowid: Record(rid, text, metadata) for rowid, (rid, text, metadata) in
            read_row_tuples(conn, rowids, cache).items()}


def read_row_tuples(conn: sqlite3.Connection, rowids: Sequence[int],
                    cache: RecordCache | None) -> dict[int, tuple[str, str, dict[str, Any]]]:
    """(id, text, metadata) by rowid, each metadata dict the caller's own; ``read_rows`` without Record objects
    (a search's hits become LangChain Documents straight from these)."""
    cached = cache.get_many(rowids) if cache is not None else {}
    out = {rowid: (row[0], row[1], cached_metadata(row)) for rowid, row in cached.items()}
    if len(cached) == len(rowids):
        return out
    missing = [r for r in rowids if r not in cached] if cached else list(rowids)
    for part in _chunks(missing):
        # one statement text per batch size, so SQLite's statement cache serves repeated searches
        rows = conn.execute(_SELECT_BY_ROWID[len(part)] if len(part) < len(_SELECT_BY_ROWID) else
                            _select_by_rowid(len(part)), part).fetchall()
        caching = cache is not None and len(part) <= _CACHED_FETCH  # search hits, not bulk exports
        fetched: list[tuple[int, CachedRow]] = []
        for rowid, rid, text, metadata_json in rows:
            exact = orjson_reads_exactly(metadata_json)
            metadata = loads_checked(metadata_json, exact)
            if caching:
                flat = flat_or_none(metadata)
                fetched.append((rowid, (rid, text, metadata_json, exact, flat)))
                if flat is not None:
                    metadata = dict(flat)  # the cache keeps the decoded dict: the caller gets a copy
            out[rowid] = (rid, text, metadata)
        if cache is not None and fetched:
            cache.put_many(fetched)
    return out


# Fetches of up to this many rows (search results) go into the record cache; bigger ones (exports) do not.
_CACHED_FETCH = 128


def _chunks(items: Sequence[Any], size: int = _BATCH) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _aligned_row(dim: int) -> np.ndarray:
    """A (1, dim) float32 row starting on a 64-byte boundary: faiss's AVX-512 kernels load the query 64 bytes at
    a time, and a row split across cache lines made every load two (a 10k flat search 7% slower here)."""
    spare = np.empty(dim + 16, dtype=np.float32)
    skip = (-spare.ctypes.data % 64) // 4
    return spare[skip : skip + dim].reshape(1, dim)


class _SearchBuffers:
    """A query row and result rows for one thread's searches, with the pointers faiss takes to them."""

    def __init__(self, dim: int, k: int) -> None:
        self.k = k
        self.query = _aligned_row(dim)
        self.scores = np.empty((1, k), dtype=np.float32)
        self.rowids = np.empty((1, k), dtype=np.int64)
        self.query_at, self.scores_at, self.rowids_at = (faiss.swig_ptr(self.query), faiss.swig_ptr(self.scores),
                                                         faiss.swig_ptr(self.rowids))

    def set_query(self, vector: Any, dim: int | None) -> None:
        """``unit_query(vector, dim)`` written into ``query``."""
        unit_query(vector, dim, out=self.query)


class FaissView(StoreReader):
    """Reads over one SQLite connection (in a transaction) and the FAISS segments of the same state."""

    def __init__(self, conn: sqlite3.Connection, segments: SegmentSet | None, dim: int | None,
                 keyword_index: KeywordIndex, hnsw: bool, columns: Callable[[], GenerationColumns] | None = None,
                 cache: RecordCache | None = None, generation: int | None = None, one_thread: bool = False,
                 ef_search: int = 0) -> None:
        self.conn, self.segments, self._dim, self.keywords, self.hnsw = conn, segments, dim, keyword_index, hnsw
        # a view only its own thread ever uses (the store keeps one per thread) reuses its search buffers
        self._one_thread = one_thread
        self._buffers: _SearchBuffers | None = None
        self.generation = generation  # committed snapshots only: names the state keyword caches may keep
        self._columns = columns  # committed snapshots only: filters evaluated on in-memory columns
        self._cache = cache  # committed snapshots only: a transaction's rowids are not committed yet
        self._ef_search = ef_search  # a filtered HNSW search's depth before selectivity raises it

    @property
    def index(self) -> faiss.Index | None:
        """The one FAISS index that answers for this view, when its generation is one segment without deletions."""
        return self.segments.single_index if self.segments is not None else None

    def _matching_rowids(self, flt: Filter) -> np.ndarray:
        if self._columns is not None:
            return self._columns().select(flt)
        where, params = filter_to_sql(flt)
        return np.fromiter((r[0] for r in self.conn.execute(f"SELECT rowid FROM records WHERE {where}", params)),
                           dtype=np.int64)

    @property
    def dimension(self) -> int | None:
        return self._dim

    def _records_by_rowid(self, rowids: Sequence[int], with_vectors: bool) -> dict[int, Record]:
        out = read_rows(self.conn, rowids, self._cache)
        if with_vectors and out and self.segments is not None:
            for key, vector in self.segments.reconstruct(np.fromiter(out.keys(), dtype=np.int64)).items():
                out[key].vector = vector
        return out

    def get(self, ids: Sequence[str], with_vectors: bool = False) -> list[Record]:
        rowid_of: dict[str, int] = {}
        for part in _chunks(list(ids)):
            marks = ",".join("?" * len(part))
            for rowid, rid in self.conn.execute(f"SELECT rowid, id FROM records WHERE id IN ({marks})", list(part)):
                rowid_of[rid] = rowid
        records = self._records_by_rowid(list(rowid_of.values()), with_vectors)
        return [records[rowid_of[i]] for i in ids if i in rowid_of]

    def count(self, flt: Filter | None = None) -> int:
        if flt is not None and self._columns is not None:
            return self._columns().count(flt)
        where, params = filter_to_sql(flt)
        return int(self.conn.execute(f"SELECT COUNT(*) FROM records WHERE {where}", params).fetchone()[0])

    def ids_where(self, flt: Filter | None) -> list[str]:
        where, params = filter_to_sql(flt)
        return [r[0] for r in self.conn.execute(f"SELECT id FROM records WHERE {where} ORDER BY rowid", params)]

    def iter_records(self, batch_size: int = 1000, with_vectors: bool = False) -> Iterator[list[Record]]:
        last = -1
        while True:
            rows = self.conn.execute(
                "SELECT rowid FROM records WHERE rowid > ? ORDER BY rowid LIMIT ?", (last, batch_size)
            ).fetchall()
            if not rows:
                return
            rowids = [r[0] for r in rows]
            records = self._records_by_rowid(rowids, with_vectors)
            yield [records[r] for r in rowids]
            last = rowids[-1]

    def similarity(self, vector: np.ndarray, k: int, flt: Filter | None = None,
                   with_vectors: bool = False) -> list[Hit]:
        pairs = self.ranked(vector, k, flt)
        records = self._records_by_rowid([r for r, _ in pairs], with_vectors)
        return [Hit(records[r], s) for r, s in pairs if r in records]

    def ranked(self, vector: np.ndarray, k: int, flt: Filter | None = None) -> list[tuple[int, float]]:
        """(rowid, cosine similarity) of the k nearest, best first."""
        return list(zip(*self.nearest(vector, k, flt), strict=True))

    def nearest(self, vector: np.ndarray, k: int, flt: Filter | None = None) -> tuple[list[int], list[float]]:
        """``ranked`` as two lists, rowids and cosine similarities (no pair objects on the hot path)."""
        segments = self.segments
        ntotal = segments.ntotal if segments is not None else 0
        if ntotal == 0 or k <= 0:
            return [], []
        assert segments is not None
        single = segments.single_index if flt is None and self._one_thread else None
        if single is not None:
            return self._nearest_reusing_buffers(single, vector, min(k, ntotal))
        query = unit_query(vector, self._dim)
        if flt is None:
            return segments.search(query, min(k, ntotal))
        if self._columns is not None:  # committed: the filter's masks over the generation's segments' columns
            return self._columns().search(query, k, flt, self._ef_search)
        return segments.search_allowed(query, k, self._matching_rowids(flt), self._ef_search)

    def _nearest_reusing_buffers(self, index: faiss.Index, vector: np.ndarray,
                                 k: int) -> tuple[list[int], list[float]]:
        """``nearest`` without a filter, in buffers kept from the last search: the query normalised in place,
        faiss writing straight into result rows. A search of a 10k HNSW index takes ~0.15 ms here, and the
        per-search arrays and faiss's argument checks were a tenth of that on top."""
        buffers = self._buffers
        if buffers is None or buffers.k != k:
            buffers = self._buffers = _SearchBuffers(index.d, k)
        buffers.set_query(vector, self._dim)
        index.search_c(1, buffers.query_at, k, buffers.scores_at, buffers.rowids_at)
        ids, values = buffers.rowids[0].tolist(), buffers.scores[0].tolist()
        if ids[-1] < 0:  # fewer than k found: faiss pads with -1 at the end
            kept = [i for i, r in enumerate(ids) if r >= 0]
            ids, values = [ids[i] for i in kept], [values[i] for i in kept]
        return ids, values

    def keyword(self, query: str, k: int, flt: Filter | None = None) -> list[Hit]:
        pairs = self.keyword_ranked(query, k, flt)
        records = self._records_by_rowid([r for r, _ in pairs], False)
        return [Hit(records[r], s) for r, s in pairs if r in records]

    def keyword_ranked(self, query: str, k: int, flt: Filter | None = None) -> list[tuple[int, float]]:
        """(rowid, BM25 score) of the best ``k``, best first."""
        if k <= 0:
            return []
        if flt is not None and self._columns is not None:
            return self.keywords.search(self.conn, query, k, allowed=self._columns().select(flt),
                                        cache_key=self.generation)
        if flt is not None:
            where, params = filter_to_sql(flt)
            return self.keywords.search(self.conn, query, k, f"SELECT rowid FROM records WHERE {where}", params,
                                        cache_key=self.generation)
        return self.keywords.search(self.conn, query, k, cache_key=self.generation)

    def ids_by_rowid(self, rowids: Sequence[int]) -> dict[int, str]:
        """Record ids of ``rowids`` (from the record cache where it has them): no text or metadata decoded."""
        cached = self._cache.get_many(rowids) if self._cache is not None else {}
        out = {rowid: row[0] for rowid, row in cached.items()}
        missing = [r for r in rowids if r not in out]
        for part in _chunks(missing):
            marks = ",".join("?" * len(part))
            out.update(self.conn.execute(f"SELECT rowid, id FROM records WHERE rowid IN ({marks})", list(part)))
        return out

"""FAISS driver: vectors in a FAISS index file, records and keyword index in SQLite.

Layout of ``<kb folder>/store/``::

    store.sqlite        records (rowid, id, text, metadata JSON), keyword index, meta
    index-<gen>.faiss   the FAISS index of committed generation <gen>
    writer.lock         flock'ed by the single writer

Commit protocol (crash-safe at any point):
1. the new index is written to the writer's staging folder, fsynced, then
   renamed to ``index-<gen+1>.faiss`` (an orphan until step 2 lands);
2. one SQLite transaction applies the record and keyword changes and sets
   ``meta.generation = gen+1``; SQLite (WAL, synchronous=FULL) makes it
   atomic and durable.
Readers take a SQLite read snapshot, read the generation in it and search the
index of that generation, so they see either the old or the new state, never
a mix. The previous index file is kept one generation so a reader that
raced a commit can still open it.

Vectors are L2-normalised on the way in, so inner product is cosine
similarity; scores are cosine similarities. ``FLAT`` (exact, the default) or
``HNSW`` (approximate) is chosen in the KB's store settings.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from kb.errors import InvalidInputError, StoreError, WriterClosedError
from kb.filters import Filter
from kb.jsonfast import loads_checked, orjson_reads_exactly
from stores.background_io import Background, flush_to_disk
from stores.base import (
    Capabilities,
    DelegatingReader,
    Hit,
    Record,
    StoreContext,
    StoreReader,
    StoreTransaction,
    VectorStoreDriver,
    acquire_writer_lock,
    check_query_vector,
    checked_vectors,
    metadata_json,
    normalise,
    unit_query,
)
from stores.columnar_filter import MetadataColumns
from stores.keyword_index import KeywordIndex
from stores.record_cache import RecordCache
from stores.sql_filters import filter_to_sql
from stores.sqlite_meta import connect_durable, read_meta

log = logging.getLogger(__name__)

def _fault(point: str) -> None:
    """Test-only fault injection: ``KB_FAULT_POINT=<point>`` kills the process there (like a power cut)."""
    if os.environ.get("KB_FAULT_POINT") == point:
        os.kill(os.getpid(), signal.SIGKILL)


# One query at a time is kb's common case, and OpenMP's thread hand-off costs more than it saves
# there (10k x 384 flat search: 8.1 ms with 2 threads, 0.85 ms with 1, on the 2-core CI machine).
# OpenMP's thread count is a per-thread setting: every thread that searches sets it once (a service
# searches from its event loop and from pool threads, which otherwise use one OpenMP thread per core).
_SEARCH_THREADS = int(os.environ.get("KB_FAISS_THREADS", "1"))
_omp_configured = threading.local()


def _configure_search_threads() -> None:
    if not getattr(_omp_configured, "done", False):
        faiss.omp_set_num_threads(_SEARCH_THREADS)
        _omp_configured.done = True


_configure_search_threads()

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    rowid INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    text TEXT NOT NULL,
    metadata TEXT NOT NULL
);
"""
_BATCH = 500


def _select_by_rowid(count: int) -> str:
    return f"SELECT rowid, id, text, metadata FROM records WHERE rowid IN ({','.join('?' * count)})"


_SELECT_BY_ROWID = [_select_by_rowid(n) for n in range(101)]


def read_rows(conn: sqlite3.Connection, rowids: Sequence[int], cache: RecordCache | None) -> dict[int, Record]:
    """Records by rowid: from the cache where it has them, else from SQLite (then cached)."""
    cached = cache.get_many(rowids) if cache is not None else {}
    out = {rowid: Record(rid, text, loads_checked(metadata, exact))
           for rowid, (rid, text, metadata, exact) in cached.items()}
    missing = [r for r in rowids if r not in cached] if cached else list(rowids)
    for part in _chunks(missing):
        # one statement text per batch size, so SQLite's statement cache serves repeated searches
        rows = conn.execute(_SELECT_BY_ROWID[len(part)] if len(part) < len(_SELECT_BY_ROWID) else
                            _select_by_rowid(len(part)), part).fetchall()
        fetched = [(rowid, (rid, text, metadata, orjson_reads_exactly(metadata)))
                   for rowid, rid, text, metadata in rows]
        for rowid, (rid, text, metadata, exact) in fetched:
            out[rowid] = Record(rid, text, loads_checked(metadata, exact))
        if cache is not None and len(part) <= _CACHED_FETCH:  # search hits, not bulk exports
            cache.put_many(fetched)
    return out
# Below this many filter matches, HNSW search is replaced by exact search over the matches:
# graph search with a very selective filter loses recall, brute force on a few vectors does not.
_BRUTE_FORCE_MATCHES = 20_000
_READ_MMAP_BYTES = 1 << 30
# Fetches of up to this many rows (search results) go into the record cache; bigger ones (exports) do not.
_CACHED_FETCH = 128
_RECORD_CACHE_ENTRIES = int(os.environ.get("KB_RECORD_CACHE", "50000"))
# A flat scan of up to this many floats (100k x 384) takes a few milliseconds on one core.
_QUICK_FLAT_FLOATS = 40_000_000

INDEX_TYPES = ("FLAT", "HNSW")


_connect = connect_durable


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _chunks(items: Sequence[Any], size: int = _BATCH) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def index_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """Validated index settings with defaults (also used by the KB settings check)."""
    raw = dict(settings.get("index") or {})
    kind = str(raw.get("type", "FLAT")).upper()
    if kind not in INDEX_TYPES:
        raise InvalidInputError(f"unknown FAISS index type {raw.get('type')!r}; choose one of {INDEX_TYPES}")
    out = {"type": kind}
    if kind == "HNSW":
        for key, default in (("m", 32), ("ef_construction", 200), ("ef_search", 128)):
            value = raw.get(key, default)
            if not isinstance(value, int) or isinstance(value, bool) or not 2 <= value <= 4096:
                raise InvalidInputError(f"FAISS HNSW setting {key!r} must be an integer in [2, 4096]")
            out[key] = value
    return out


class _View(StoreReader):
    """Reads over one SQLite connection (in a transaction) and one FAISS index."""

    def __init__(self, conn: sqlite3.Connection, index: faiss.Index | None, dim: int | None,
                 keyword_index: KeywordIndex, hnsw: bool, columns: Callable[[], MetadataColumns] | None = None,
                 cache: RecordCache | None = None) -> None:
        self.conn, self.index, self._dim, self.keywords, self.hnsw = conn, index, dim, keyword_index, hnsw
        self._columns = columns  # committed snapshots only: filters evaluated on in-memory columns
        self._cache = cache  # committed snapshots only: a transaction's rowids are not committed yet

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
        if with_vectors and out and self.index is not None:
            keys = np.fromiter(out.keys(), dtype=np.int64)
            vectors = self.index.reconstruct_batch(keys)
            for key, vector in zip(keys.tolist(), vectors, strict=True):
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
            return int(self._columns().select(flt).size)
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
        query = unit_query(check_query_vector(vector, self._dim))
        if self.index is None or self.index.ntotal == 0 or k <= 0:
            return []
        if flt is None:
            scores, rowids = self.index.search(query, min(k, self.index.ntotal))
        else:
            allowed = self._matching_rowids(flt)
            if allowed.size == 0:
                return []
            if self.hnsw and allowed.size <= _BRUTE_FORCE_MATCHES:
                vectors = self.index.reconstruct_batch(allowed)
                sims = vectors @ query[0]
                top = np.argsort(-sims, kind="stable")[:k]
                scores, rowids = sims[top].reshape(1, -1), allowed[top].reshape(1, -1)
            else:
                params_sel = faiss.SearchParameters(sel=faiss.IDSelectorBatch(allowed))
                scores, rowids = self.index.search(query, min(k, allowed.size), params=params_sel)
        return [(r, s) for r, s in zip(rowids[0].tolist(), scores[0].tolist(), strict=True) if r >= 0]

    def keyword(self, query: str, k: int, flt: Filter | None = None) -> list[Hit]:
        if k <= 0:
            return []
        candidates, params = (None, [])
        if flt is not None:
            where, params = filter_to_sql(flt)
            candidates = f"SELECT rowid FROM records WHERE {where}"
        pairs = self.keywords.search(self.conn, query, k, candidates, params)
        records = self._records_by_rowid([r for r, _ in pairs], False)
        return [Hit(records[r], s) for r, s in pairs if r in records]


class FaissStore(VectorStoreDriver):
    store_type = "FAISS"
    capabilities = Capabilities(keyword=True, approximate=True)

    def __init__(self, context: StoreContext) -> None:
        super().__init__(context)
        self.settings = index_settings(context.settings)
        self.dir = Path(context.folder) / "store"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.db_path = self.dir / "store.sqlite"
        self.keywords = KeywordIndex(context.keyword_analyzer)
        self._local = threading.local()
        self._cache_lock = threading.Lock()
        self._cached: tuple[int, faiss.Index | None] = (-1, None)
        self._columns_cache: tuple[int, MetadataColumns] | None = None
        self._records = RecordCache(_RECORD_CACHE_ENTRIES)
        self._closed = False
        conn = _connect(self.db_path)
        try:
            conn.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA.strip().split(";"):
                if statement.strip():
                    conn.execute(statement)
            self.keywords.create(conn)
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('generation', '0')")
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('dimension', '')")
            conn.execute("COMMIT")
        finally:
            conn.close()

    # --- reading -----------------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise WriterClosedError(f"the store of knowledge bank {self.context.kb_id} is closed")
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = _connect(self.db_path)
            # Reads map the file instead of a pread per page: a search's ten records are ten page
            # lookups, which in a fresh process (or a cold SQLite page cache) were ten system calls.
            conn.execute(f"PRAGMA mmap_size={_READ_MMAP_BYTES}")
        return conn

    def index_path(self, generation: int) -> Path:
        return self.dir / f"index-{generation}.faiss"

    def _load_index(self, generation: int) -> faiss.Index | None:
        with self._cache_lock:
            cached_gen, cached = self._cached
            if cached_gen == generation:
                return cached
            index = faiss.read_index(str(self.index_path(generation))) if generation > 0 else None
            if index is not None and self.settings["type"] == "HNSW":
                faiss.downcast_index(index.index).hnsw.efSearch = self.settings["ef_search"]
            self._cached = (generation, index)
            return index

    _read_meta = staticmethod(read_meta)

    def _metadata_columns(self, conn: sqlite3.Connection, generation: int) -> MetadataColumns:
        """Columns of the committed generation's metadata, built once per generation (read in its snapshot)."""
        with self._cache_lock:
            cached = self._columns_cache
            if cached is not None and cached[0] == generation:
                return cached[1]
        rows = conn.execute("SELECT rowid, metadata FROM records ORDER BY rowid").fetchall()
        columns = MetadataColumns(np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows)),
                                  (r[1] for r in rows))
        with self._cache_lock:
            self._columns_cache = (generation, columns)
        return columns

    @contextmanager
    def _snapshot(self) -> Iterator[_View]:
        _configure_search_threads()
        conn = self._conn()
        for attempt in range(5):
            conn.execute("BEGIN")
            try:
                generation, dim = self._read_meta(conn)
                try:
                    index = self._load_index(generation) if dim is not None else None
                except RuntimeError:
                    # The index file of an old snapshot went away under us: retry with a fresh one.
                    conn.execute("COMMIT")
                    if attempt == 4:
                        raise
                    continue
                yield _View(conn, index, dim, self.keywords, self.settings["type"] == "HNSW",
                            columns=lambda c=conn, g=generation: self._metadata_columns(c, g), cache=self._records)
                return
            finally:
                if conn.in_transaction:
                    conn.execute("COMMIT")

    @property
    def dimension(self) -> int | None:
        with self._snapshot() as view:
            return view.dimension

    def get(self, ids: Sequence[str], with_vectors: bool = False) -> list[Record]:
        with self._snapshot() as view:
            return view.get(ids, with_vectors)

    def count(self, flt: Filter | None = None) -> int:
        with self._snapshot() as view:
            return view.count(flt)

    def ids_where(self, flt: Filter | None) -> list[str]:
        with self._snapshot() as view:
            return view.ids_where(flt)

    def iter_records(self, batch_size: int = 1000, with_vectors: bool = False) -> Iterator[list[Record]]:
        with self._snapshot() as view:
            yield from view.iter_records(batch_size, with_vectors)

    def similarity(self, vector: np.ndarray, k: int, flt: Filter | None = None,
                   with_vectors: bool = False) -> list[Hit]:
        if not with_vectors:
            hits = self._similarity_without_snapshot(vector, k, flt)
            if hits is not None:
                return hits
        with self._snapshot() as view:
            return view.similarity(vector, k, flt, with_vectors)

    def _committed_meta(self, conn: sqlite3.Connection) -> tuple[int, int | None]:
        """The committed (generation, dimension), re-read only after another connection committed."""
        version = conn.execute("PRAGMA data_version").fetchone()[0]  # read first: a later commit changes it
        known = getattr(self._local, "meta", None)
        if known is not None and known[0] == version:
            return known[1], known[2]
        generation, dim = self._read_meta(conn)
        self._local.meta = (version, generation, dim)
        return generation, dim

    def _similarity_without_snapshot(self, vector: np.ndarray, k: int, flt: Filter | None) -> list[Hit] | None:
        """The search path without a SQLite read transaction (None: answer from a snapshot instead).

        Committed rowids never change content (see ``stores.record_cache``), so the records of the
        committed generation's hits can be read outside a transaction: a record is either the one the
        index meant, or gone because a newer commit deleted it, and then the snapshot path answers.
        """
        _configure_search_threads()
        conn = self._conn()
        generation, dim = self._committed_meta(conn)
        if dim is None:
            return None
        columns = None
        if flt is not None:  # only columns built in a snapshot of this generation may answer a filter
            built = self._columns_cache
            if built is None or built[0] != generation:
                return None
            columns = built[1]
        try:
            index = self._load_index(generation)
        except RuntimeError:  # its file was replaced by two newer commits meanwhile
            return None
        view = _View(conn, index, dim, self.keywords, self.settings["type"] == "HNSW",
                     columns=(lambda: columns) if columns is not None else None, cache=self._records)
        pairs = view.ranked(vector, k, flt)
        records = view._records_by_rowid([r for r, _ in pairs], False)
        if len(records) < len(pairs):
            return None
        return [Hit(records[r], s) for r, s in pairs]

    def keyword(self, query: str, k: int, flt: Filter | None = None) -> list[Hit]:
        with self._snapshot() as view:
            return view.keyword(query, k, flt)

    # --- writing -----------------------------------------------------------------------------

    def begin(self, timeout: float = 30.0) -> FaissTransaction:
        lock_file = acquire_writer_lock(self.dir / "writer.lock", timeout, self.context.kb_id)
        conn = _connect(self.db_path)
        try:
            conn.execute("BEGIN IMMEDIATE")
            generation, dim = self._read_meta(conn)
            base = self._load_index(generation) if dim is not None else None
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            conn.close()
            lock_file.close()
            raise
        self._remove_stale_index_files(generation)
        return FaissTransaction(self, conn, lock_file, base, generation, dim)

    def _remove_stale_index_files(self, generation: int) -> None:
        for path in self.dir.glob("index-*.faiss"):
            try:
                gen = int(path.stem.split("-", 1)[1])
            except ValueError:
                continue
            if gen > generation or gen < generation - 1:  # orphans of crashed commits, or long replaced
                path.unlink(missing_ok=True)

    def answers_quickly(self, filtered: bool) -> bool:
        # In memory and cheap: an HNSW graph, or a flat index small enough to scan in a few milliseconds.
        # A filter also needs the generation's metadata columns already built (building them reads every row).
        generation, index = self._cached
        if index is None or self._closed:
            return False
        if filtered and (self._columns_cache is None or self._columns_cache[0] != generation):
            return False
        return self.settings["type"] == "HNSW" or index.ntotal * index.d <= _QUICK_FLAT_FLOATS

    def new_index(self, dim: int) -> faiss.Index:
        if self.settings["type"] == "HNSW":
            inner = faiss.IndexHNSWFlat(dim, self.settings["m"], faiss.METRIC_INNER_PRODUCT)
            inner.hnsw.efConstruction = self.settings["ef_construction"]
            inner.hnsw.efSearch = self.settings["ef_search"]
        else:
            inner = faiss.IndexFlatIP(dim)
        return faiss.IndexIDMap2(inner)

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
            self._local.meta = None
        with self._cache_lock:
            self._cached = (-1, None)

    def destroy(self) -> None:
        self.close()
        self._closed = True
        shutil.rmtree(self.dir, ignore_errors=True)


class FaissTransaction(DelegatingReader, StoreTransaction):
    def __init__(self, store: FaissStore, conn: sqlite3.Connection, lock_file: Any,
                 base: faiss.Index | None, generation: int, dim: int | None) -> None:
        self.store, self.conn, self.lock_file = store, conn, lock_file
        self.generation, self._dim = generation, dim
        self.index = base
        self._owns_index = False  # copy-on-write: the committed index is shared with readers
        self._dirty = False
        self._open = True
        self.staging = store.dir / "staging" / uuid.uuid4().hex
        self._wal_flush: Background | None = None
        row = conn.execute("SELECT MAX(rowid) FROM records").fetchone()
        counter = conn.execute("SELECT value FROM meta WHERE key = 'next_rowid'").fetchone()
        # Rowids are never reused: not while the keyword index holds a tombstone for one, and not ever
        # once committed (the counter commits with the records), which is what lets readers cache
        # records by rowid and read them outside a snapshot.
        self._next_rowid = max(int(row[0] or 0) + 1, store.keywords.highest_tombstone(conn) + 1,
                               int(counter[0]) if counter else 1)

    def _view(self) -> _View:
        self._check_open()
        return _View(self.conn, self.index, self._dim, self.store.keywords, self.store.settings["type"] == "HNSW")

    def _check_open(self) -> None:
        if not self._open:
            raise WriterClosedError("this transaction is already committed or rolled back")

    @property
    def dimension(self) -> int | None:
        return self._dim

    def _writable_index(self, dim: int) -> faiss.Index:
        if self.index is None:
            self.index = self.store.new_index(dim)
            self._owns_index = True
        elif not self._owns_index:
            self.index = faiss.clone_index(self.index)
            self._owns_index = True
        self._dirty = True
        return self.index

    def _rowids_of(self, ids: Sequence[str]) -> list[int]:
        rowids: list[int] = []
        for part in _chunks(list(ids)):
            marks = ",".join("?" * len(part))
            query = f"SELECT rowid FROM records WHERE id IN ({marks})"
            rowids.extend(r[0] for r in self.conn.execute(query, list(part)))
        return rowids

    def _remove_rowids(self, rowids: list[int]) -> None:
        if not rowids:
            return
        index = self._writable_index(self._dim or 0)
        if self.store.settings["type"] == "HNSW":
            self._rebuild_without(index, np.asarray(rowids, dtype=np.int64))
        else:
            index.remove_ids(np.asarray(rowids, dtype=np.int64))
        self.store.keywords.remove(self.conn, rowids)
        self.conn.executemany("DELETE FROM records WHERE rowid = ?", [(r,) for r in rowids])

    def _rebuild_without(self, index: faiss.Index, removed: np.ndarray) -> None:
        """HNSW graphs cannot drop nodes: rebuild from the remaining vectors (cost: O(n) per commit with deletes)."""
        ids = faiss.vector_to_array(index.id_map).astype(np.int64)
        keep = ~np.isin(ids, removed)
        vectors = index.index.reconstruct_n(0, index.ntotal)[keep] if index.ntotal else np.zeros((0, self._dim))
        fresh = self.store.new_index(int(self._dim or 0))
        if keep.any():
            fresh.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids[keep])
        self.index = fresh

    def upsert(self, records: Sequence[Record]) -> None:
        self._check_open()
        if not records:
            return
        vectors = normalise(checked_vectors(records, self._dim))
        dim = int(vectors.shape[1])
        self._remove_rowids(self._rowids_of([r.id for r in records]))
        rowids = np.arange(self._next_rowid, self._next_rowid + len(records), dtype=np.int64)
        self._next_rowid += len(records)
        rows = [(rowid, record.id, record.text, metadata_json(record)) for rowid, record
                in zip(rowids.tolist(), records, strict=True)]
        self.conn.executemany("INSERT INTO records(rowid, id, text, metadata) VALUES (?, ?, ?, ?)", rows)
        self.store.keywords.add(self.conn, [(r[0], r[2]) for r in rows])
        self._writable_index(dim).add_with_ids(vectors, rowids)
        if self._dim is None:
            self._dim = dim
            self.conn.execute("UPDATE meta SET value = ? WHERE key = 'dimension'", (str(dim),))
        # the pages SQLite spilled to the WAL during this batch go to disk while the caller prepares the next
        if self._wal_flush is None or not self._wal_flush.running:
            self._wal_flush = Background(self._flush_wal, "kb-wal-flush")

    def _flush_wal(self) -> None:
        flush_to_disk(self.store.db_path.with_name(self.store.db_path.name + "-wal"))

    def delete(self, ids: Sequence[str]) -> int:
        self._check_open()
        rowids = self._rowids_of(ids)
        self._remove_rowids(rowids)
        return len(rowids)

    def clear(self) -> None:
        self._check_open()
        self.conn.execute("DELETE FROM records")
        self.store.keywords.clear(self.conn)
        self.conn.execute("UPDATE meta SET value = '' WHERE key = 'dimension'")
        self._dim = None
        self.index = None
        self._owns_index = True
        self._dirty = True

    def commit(self) -> None:
        self._check_open()
        writer: Background | None = None
        try:
            if self._dirty:
                new_generation = self.generation + 1
                if self.index is not None:
                    # the index file is written and fsynced on a helper thread while this one flushes the WAL;
                    # both are waited for before the SQLite commit that makes the new generation visible
                    writer = Background(lambda: self._write_index(new_generation), "kb-index-write")
                    self._join_wal_flush()
                    self._flush_wal()
                    writer.join()
                # After clear() there is no index file: dimension '' tells readers the store is empty.
                self.conn.execute("UPDATE meta SET value = ? WHERE key = 'generation'", (str(new_generation),))
                self.conn.execute("INSERT OR REPLACE INTO meta VALUES ('next_rowid', ?)", (str(self._next_rowid),))
            _fault("before_sqlite_commit")
            self.conn.execute("COMMIT")
            _fault("after_sqlite_commit")
        except BaseException as exc:
            if writer is not None:
                try:
                    writer.join()  # not left writing into the staging folder that _finish removes
                except BaseException:  # the first failure is the one reported
                    pass
            self._abort()
            if isinstance(exc, sqlite3.Error | OSError | RuntimeError):
                raise StoreError(f"commit to knowledge bank {self.store.context.kb_id} failed: {exc}") from exc
            raise
        self._finish()

    def _write_index(self, generation: int) -> None:
        """Stage the index file, fsync it, rename it to its generation's name, fsync the folder."""
        assert self.index is not None
        self.staging.mkdir(parents=True, exist_ok=True)
        staged = self.staging / "index.faiss"
        faiss.write_index(self.index, str(staged))
        _fault("index_written")
        with open(staged, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(staged, self.store.index_path(generation))
        _fault("index_renamed")
        _fsync_dir(self.store.dir)

    def _join_wal_flush(self) -> None:
        if self._wal_flush is not None:
            self._wal_flush.join()
            self._wal_flush = None

    def rollback(self) -> None:
        if not self._open:
            return
        self._abort()
        self._finish()

    def _abort(self) -> None:
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")

    def _finish(self) -> None:
        self._open = False
        self._join_wal_flush()
        self.conn.close()
        shutil.rmtree(self.staging, ignore_errors=True)
        self.lock_file.close()  # releases the flock

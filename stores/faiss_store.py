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

import json
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
)
from stores.columnar_filter import MetadataColumns
from stores.keyword_index import KeywordIndex
from stores.sql_filters import filter_to_sql
from stores.sqlite_meta import connect_durable, read_meta

log = logging.getLogger(__name__)

def _fault(point: str) -> None:
    """Test-only fault injection: ``KB_FAULT_POINT=<point>`` kills the process there (like a power cut)."""
    if os.environ.get("KB_FAULT_POINT") == point:
        os.kill(os.getpid(), signal.SIGKILL)


# One query at a time is kb's common case, and OpenMP's thread hand-off costs more than it saves
# there (10k x 384 flat search: 8.1 ms with 2 threads, 0.85 ms with 1, on the 2-core CI machine).
faiss.omp_set_num_threads(int(os.environ.get("KB_FAISS_THREADS", "1")))

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
# Below this many filter matches, HNSW search is replaced by exact search over the matches:
# graph search with a very selective filter loses recall, brute force on a few vectors does not.
_BRUTE_FORCE_MATCHES = 20_000

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
                 keyword_index: KeywordIndex, hnsw: bool, columns: Callable[[], MetadataColumns] | None = None) -> None:
        self.conn, self.index, self._dim, self.keywords, self.hnsw = conn, index, dim, keyword_index, hnsw
        self._columns = columns  # committed snapshots only: filters evaluated on in-memory columns

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
        out: dict[int, Record] = {}
        for part in _chunks(list(rowids)):
            marks = ",".join("?" * len(part))
            rows = self.conn.execute(
                f"SELECT rowid, id, text, metadata FROM records WHERE rowid IN ({marks})", list(part)
            )
            for rowid, rid, text, metadata in rows:
                out[rowid] = Record(rid, text, json.loads(metadata))
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
        query = normalise(check_query_vector(vector, self._dim).reshape(1, -1))
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
        pairs = [(int(r), float(s)) for r, s in zip(rowids[0], scores[0], strict=True) if r >= 0]
        records = self._records_by_rowid([r for r, _ in pairs], with_vectors)
        return [Hit(records[r], s) for r, s in pairs if r in records]

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
                            columns=lambda c=conn, g=generation: self._metadata_columns(c, g))
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
        with self._snapshot() as view:
            return view.similarity(vector, k, flt, with_vectors)

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
        # never reuse a rowid the keyword index still holds a tombstone for
        self._next_rowid = max(int(row[0] or 0), store.keywords.highest_tombstone(conn)) + 1

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

"""FAISS driver: vectors in a FAISS index file, records and keyword index in SQLite.

Layout of ``<kb folder>/store/``::

    store.sqlite        records (rowid, id, text, metadata JSON), keyword index, meta,
                        segments (which segment files make up each generation), tombstones
    segments/<n>.faiss  one immutable FAISS index per segment (``stores.faiss.segments``)
    segments/<n>.vectors.npy  a compressed segment's exact float32 vectors, read row by row for
                        re-ranking (``stores.faiss.vector_file``)
    writer.lock         flock'ed by the single writer

Commit protocol (crash-safe at any point):
1. the vectors the commit adds are written as one new segment in the writer's
   staging folder (``O_DIRECT`` where the file system allows,
   ``stores.faiss.index_file``), fsynced, then renamed to ``segments/<n>.faiss``
   (an orphan until step 2 lands);
2. one SQLite transaction applies the record and keyword changes, the segment's
   row, a tombstone per deleted or replaced vector of an older segment, and sets
   ``meta.generation = gen+1``; SQLite (WAL, synchronous=FULL) makes it
   atomic and durable;
3. after the commit returns, a thread copies the WAL into the database file
   (``stores.sqlite.wal_checkpoint``), and the store's merger thread is woken and may
   combine small segments (``stores.faiss.merge``): nothing durable depends on either.
Readers take a SQLite read snapshot, read the generation in it and search the
segments of that generation, so they see either the old or the new state, never
a mix; a new generation costs them its new segments only
(``stores.faiss.generation_loader``). Retired segment files are kept one
generation so a reader that raced a commit can still open them. Similarity
searches skip the snapshot: rowids are never reused, so the hits of the
committed generation's segments are read by rowid (from a record cache, else
SQLite), and a hit that a newer commit removed meanwhile sends the search to
the snapshot path.

Modules of ``stores/faiss/``: this one (the driver and its reads), ``view`` (reads
over one connection and one index), ``transaction`` (the writer and its commit),
``filtered`` (filtered similarity), ``segments`` (a generation's segments and their search),
``segment_columns`` (their metadata columns for filters),
``generation_loader``, ``segment_files``, ``merge`` (the tiered merge policy and merger),
``merge_thread`` (the merger's one thread), ``segment_spans`` (each segment's rowids, for the policy),
``index`` (index settings and threads), ``compressed`` and ``compressed_segments`` (the
compressed index types and how their segments are written and merged), ``spill`` (a compressed
type's writer's vectors, in a file as they arrive), ``index_file`` (the index file's direct writes),
``vector_buffers``, ``huge_pages``,
``record_cache`` and ``langchain`` (the knowledge bank as LangChain's ``FAISS``).

Vectors are L2-normalised on the way in, so inner product is cosine
similarity; scores are cosine similarities. ``FLAT`` (exact, the default),
``HNSW`` (approximate) or a compressed type, ``HNSW_SQ8`` or ``IVF_PQ`` (approximate
candidates, exact scores), is chosen in the KB's store settings.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from kb_base.errors import InvalidInputError, WriterClosedError
from kb_base.filters import Filter
from stores.base import (
    Capabilities,
    Hit,
    RankedLists,
    Record,
    StoreContext,
    StoreTransaction,
    VectorStoreDriver,
    acquire_writer_lock,
)
from stores.faiss.compressed import is_compressed, vectors_path
from stores.faiss.generation_loader import GenerationLoader
from stores.faiss.huge_pages import start_backing
from stores.faiss.index import SEARCH_TIME_SETTINGS, configure_search_threads, index_settings, new_index
from stores.faiss.langchain import KBFaissVectorStore
from stores.faiss.merge import Merger
from stores.faiss.record_cache import RecordCache
from stores.faiss.segment_columns import GenerationColumns, generation_columns
from stores.faiss.segment_files import SEGMENTS, adopt_single_index, remove_stale
from stores.faiss.segment_spans import SCHEMA as SPAN_SCHEMA
from stores.faiss.segments import SCHEMA as SEGMENT_SCHEMA
from stores.faiss.segments import SegmentSet
from stores.faiss.transaction import FaissTransaction
from stores.faiss.view import FaissView, read_row_tuples, read_rows
from stores.keyword import KeywordIndex, NoKeywordIndex
from stores.sqlite.meta import connect_durable, read_meta
from stores.sqlite.wal_checkpoint import BackgroundCheckpoints
from stores.sqlite.wal_watch import WalWatch

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    rowid INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    text TEXT NOT NULL,
    metadata TEXT NOT NULL
);
"""
_READ_MMAP_BYTES = 1 << 30
# Pages of a new store's database. Records (about 1 KB of text each) and postings blobs fill 16 KB pages with
# less per-page overhead and fewer overflow chains: a 100k bulk load's inserts and commit took 0.5-0.6 s instead
# of 0.77-0.95 s with 4 KB pages (the same 100k rows through sqlite3 alone, WAL, synchronous=FULL). Existing stores keep
# the page size they were created with.
_PAGE_BYTES = 16384
_RECORD_CACHE_ENTRIES = int(os.environ.get("KB_RECORD_CACHE", "50000"))
_RECORD_CACHE_BYTES = int(os.environ.get("KB_RECORD_CACHE_MB", "64")) * 2**20
# A flat scan of up to this many floats (100k x 384) takes a few milliseconds on one core.
_QUICK_FLAT_FLOATS = 40_000_000

_connect = connect_durable


class FaissStore(VectorStoreDriver):
    store_type = "FAISS"
    capabilities = Capabilities(keyword=True, approximate=True)

    def __init__(self, context: StoreContext) -> None:
        super().__init__(context)
        self.settings = index_settings(context.settings)
        self.dir = Path(context.folder) / "store"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.db_path = self.dir / "store.sqlite"
        self.keywords = KeywordIndex(context.keyword_analyzer) if context.keyword_index else NoKeywordIndex()
        if not context.keyword_index:
            self.capabilities = Capabilities(keyword=False, approximate=True)
        self._local = threading.local()
        self._cache_lock = threading.Lock()
        self.huge_pages: threading.Thread | None = None  # a loaded segment's move onto huge pages, while it runs
        self.loader = GenerationLoader(self.dir / SEGMENTS, self.settings.get("ef_search"), self._on_segment_load,
                                       self.settings if is_compressed(self.settings) else None, self.db_path)
        self.loader.folder.mkdir(exist_ok=True)
        self._columns_cache: tuple[int, GenerationColumns] | None = None
        # records parsed into metadata columns by this store's searches (tests read it; the loader's helper threads
        # count theirs in loader.metadata_rows_preread)
        self.metadata_rows_read = 0
        self.merger = Merger(self)
        self._records = RecordCache(_RECORD_CACHE_ENTRIES, _RECORD_CACHE_BYTES)
        self._closed = False
        self.checkpoints = BackgroundCheckpoints(self.db_path)  # writers' commits leave checkpoints to it
        conn = _connect(self.db_path, page_size=_PAGE_BYTES)
        try:
            # opened right after a big commit, the WAL may still be long: its copy is the checkpointer's, not
            # this (tiny) transaction's
            conn.execute("PRAGMA wal_autocheckpoint=0")
            conn.execute("BEGIN IMMEDIATE")
            had_segments = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'segments'").fetchone()
            for statement in (_SCHEMA + SEGMENT_SCHEMA + SPAN_SCHEMA).strip().split(";"):
                if statement.strip():
                    conn.execute(statement)
            self.keywords.create(conn)
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('generation', '0')")
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('dimension', '')")
            generation, dim = read_meta(conn)
            if not had_segments and generation > 0 and dim is not None:
                adopt_single_index(conn, self.dir, generation, self.settings["type"].lower())
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

    def _on_segment_load(self, index: faiss.Index) -> None:
        # searches go on meanwhile; ~2x faster flat scans once it is done (stores.faiss.huge_pages)
        started = start_backing(index)
        if started is not None:
            self.huge_pages = started

    def segments_at(self, conn: sqlite3.Connection, generation: int, dim: int | None) -> SegmentSet:
        """The segments of ``generation`` (``conn`` in a read transaction that sees it), built from the last."""
        return self.loader.get(conn, generation, dim)

    _read_meta = staticmethod(read_meta)

    def _view(self, conn: sqlite3.Connection, segments: SegmentSet, dim: int | None,
              columns: Any, one_thread: bool = False) -> FaissView:
        return FaissView(conn, segments, dim, self.keywords, self.settings["type"] == "HNSW", columns=columns,
                         cache=self._records, generation=segments.generation, one_thread=one_thread,
                         ef_search=self.settings.get("ef_search", 0))

    def _metadata_columns(self, conn: sqlite3.Connection | None, segments: SegmentSet) -> GenerationColumns | None:
        """Columns of the committed generation's metadata: its segments' columns, of which only those not read yet
        are read (``conn`` in a snapshot of the generation; None: only from columns already read)."""
        generation = segments.generation
        with self._cache_lock:
            cached = self._columns_cache
            if cached is not None and cached[0] == generation:
                return cached[1]
        columns = generation_columns(conn, segments.segments, generation)
        if columns is None:
            return None
        with self._cache_lock:
            self.metadata_rows_read += columns.rows_read
            if self._columns_cache is None or self._columns_cache[0] <= generation:
                self._columns_cache = (generation, columns)
        return columns

    @contextmanager
    def _snapshot(self) -> Iterator[FaissView]:
        configure_search_threads()
        conn = self._conn()
        for attempt in range(5):
            conn.execute("BEGIN")
            try:
                generation, dim = self._read_meta(conn)
                try:
                    segments = self.segments_at(conn, generation, dim)
                except RuntimeError:
                    # A segment file of an old snapshot went away under us: retry with a fresh one.
                    conn.execute("COMMIT")
                    if attempt == 4:
                        raise
                    continue
                yield self._view(conn, segments, dim, lambda c=conn, s=segments: self._metadata_columns(c, s))
                return
            finally:
                if conn.in_transaction:
                    conn.execute("COMMIT")

    @contextmanager
    def _records_snapshot(self) -> Iterator[FaissView]:
        """A snapshot for reads of records alone (no vectors, no filter): the segments are not loaded for it, so a
        process that only writes (an ingestion's or a folder sync's look-up of the chunks it stores) never holds
        the knowledge bank's vectors."""
        conn = self._conn()
        conn.execute("BEGIN")
        try:
            generation, dim = self._read_meta(conn)
            yield FaissView(conn, None, dim, self.keywords, self.settings["type"] == "HNSW", cache=self._records,
                            generation=generation)
        finally:
            if conn.in_transaction:
                conn.execute("COMMIT")

    @property
    def dimension(self) -> int | None:
        with self._records_snapshot() as view:
            return view.dimension

    def get(self, ids: Sequence[str], with_vectors: bool = False) -> list[Record]:
        with self._snapshot() if with_vectors else self._records_snapshot() as view:
            return view.get(ids, with_vectors)

    def count(self, flt: Filter | None = None) -> int:
        with self._snapshot() if flt is not None else self._records_snapshot() as view:
            return view.count(flt)

    def ids_where(self, flt: Filter | None) -> list[str]:
        with self._records_snapshot() as view:  # SQL over the records, filtered or not
            return view.ids_where(flt)

    def iter_records(self, batch_size: int = 1000, with_vectors: bool = False) -> Iterator[list[Record]]:
        with self._snapshot() if with_vectors else self._records_snapshot() as view:
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
        """The committed (generation, dimension), re-read only after another connection committed.

        Whether one did is first asked of the wal-index header in shared memory (no system call; see
        ``stores.sqlite.wal_watch``), then of ``PRAGMA data_version`` when the header moved.
        """
        local = self._local
        watch = getattr(local, "wal_watch", None)
        header = watch.header() if watch is not None else None  # read before data_version: see wal_watch
        known = getattr(local, "meta", None)
        if header is not None and known is not None and known[3] == header:
            return known[1], known[2]
        cursor = getattr(local, "version_cursor", None)
        if cursor is None or cursor.connection is not conn:
            cursor = local.version_cursor = conn.cursor()
        version = next(cursor.execute("PRAGMA data_version"))[0]  # read first: a later commit changes it
        if watch is None:  # the connection has the database open now: its -shm file exists (WAL mode)
            local.wal_watch = WalWatch(self.db_path)
        if known is not None and known[0] == version:
            local.meta = (version, known[1], known[2], header)
            return known[1], known[2]
        generation, dim = self._read_meta(conn)
        local.meta = (version, generation, dim, header)
        return generation, dim

    def _committed_view(self, flt: Filter | None) -> FaissView | None:
        """A view of the committed generation outside any SQLite read transaction, for the similarity hot path
        (None: answer from a snapshot instead).

        Committed rowids never change content (see ``stores.faiss.record_cache``), so the records of the
        committed generation's hits can be read outside a transaction: a record is either the one the
        index meant, or gone because a newer commit deleted it, and then the snapshot path answers.
        An unfiltered view is kept per thread until the generation changes (it holds that thread's connection).
        """
        configure_search_threads()
        conn = self._conn()
        generation, dim = self._committed_meta(conn)
        if dim is None:
            return None
        loader = self.loader
        # while a big commit's segments load on helper threads, the generation this reader has answers
        segments = loader.current if loader.is_current(generation) else loader.deferred(generation)
        if segments is None or segments.dim != dim:
            conn.execute("BEGIN")  # the segments and tombstones of one generation, read in one snapshot
            try:
                generation, dim = self._read_meta(conn)
                segments = loader.get(conn, generation, dim, background=True)
            except RuntimeError:  # a segment file was retired by two newer commits meanwhile
                return None
            finally:
                conn.execute("COMMIT")
            if dim is None:
                return None
        assert segments is not None
        kept = getattr(self._local, "view", None)
        if flt is None and kept is not None and kept.segments is segments and kept.conn is conn:
            return kept
        columns = None
        if flt is not None:  # only columns read in a snapshot at or before this generation may answer a filter
            columns = self._metadata_columns(None, segments)
            if columns is None:
                return None
        view = self._view(conn, segments, dim, (lambda: columns) if columns is not None else None,
                          one_thread=flt is None)
        if flt is None:
            self._local.view = view
        return view

    def _similarity_without_snapshot(self, vector: np.ndarray, k: int, flt: Filter | None) -> list[Hit] | None:
        view = self._committed_view(flt)
        if view is None:
            return None
        pairs = view.ranked(vector, k, flt)
        records = view._records_by_rowid([r for r, _ in pairs], False)
        if len(records) < len(pairs):
            return None
        return [Hit(records[r], s) for r, s in pairs]

    def similarity_rows(self, vector: np.ndarray, k: int,
                        flt: Filter | None = None) -> list[tuple[str, str, dict[str, Any], float]]:
        view = self._committed_view(flt)
        if view is not None:
            rowids, scores = view.nearest(vector, k, flt)
            rows = self._records.hits(rowids, scores)  # the common case: every hit's record is in memory
            if rows is not None:
                return rows
            found = read_row_tuples(view.conn, rowids, self._records)
            if len(found) == len(rowids):
                return [(*found[r], s) for r, s in zip(rowids, scores, strict=True)]
        return super().similarity_rows(vector, k, flt)

    def keyword(self, query: str, k: int, flt: Filter | None = None) -> list[Hit]:
        with self._snapshot() as view:
            return view.keyword(query, k, flt)

    def ranked_lists(self, vector: np.ndarray, query: str, depth: int,
                     flt: Filter | None = None) -> RankedLists | None:
        """Both hybrid lists from one snapshot as ids and scores; records are read later for the fused few,
        by rowid outside the snapshot (committed rowids never change content; a vanished one is reported)."""
        if not self.capabilities.keyword:
            return None
        with self._snapshot() as view:
            dense = view.ranked(vector, depth, flt)
            keyword = view.keyword_ranked(query, depth, flt)
            ids = view.ids_by_rowid(list({r for r, _ in dense} | {r for r, _ in keyword}))
        rowid_of = {record_id: rowid for rowid, record_id in ids.items()}

        def records(wanted: Sequence[str]) -> dict[str, Record] | None:
            rowids = [rowid_of[i] for i in wanted]
            found = read_rows(self._conn(), rowids, self._records)
            if len(found) < len(rowids):
                return None
            return {found[r].id: found[r] for r in rowids}

        return RankedLists([(ids[r], s) for r, s in dense if r in ids],
                           [(ids[r], s) for r, s in keyword if r in ids], records)

    # --- writing -----------------------------------------------------------------------------

    def begin(self, timeout: float = 30.0) -> FaissTransaction:
        lock_file = acquire_writer_lock(self.dir / "writer.lock", timeout, self.context.kb_id)
        try:
            conn = _connect(self.db_path)
        except BaseException:
            lock_file.close()  # now, not when the lock file object is collected
            raise
        try:
            conn.execute("PRAGMA wal_autocheckpoint=0")  # checkpointed after the commit, on self.checkpoints
            conn.execute("BEGIN IMMEDIATE")
            generation, dim = self._read_meta(conn)
            remove_stale(conn, self.dir, generation)
            return FaissTransaction(self, conn, lock_file, generation, dim)
        except BaseException:
            try:
                conn.close()  # rolls back
            finally:
                lock_file.close()
            raise

    def committed_index(self) -> faiss.Index | None:
        """The committed generation's FAISS index, the very object searches use (None while empty).

        For tools that measure or inspect it (kb bench times raw faiss on it): treat it as read-only. A generation
        of several segments (or with deletions) is first merged into one (a commit, as Lucene's forceMerge(1)).
        """
        with self._snapshot() as view:
            index, total = view.index, view.segments.ntotal if view.segments is not None else 0
        if index is None and total:
            self.merger.merge_now(force=True)
            with self._snapshot() as view:
                index = view.index
        return index

    def index_info(self) -> dict[str, Any]:
        """Index type; memory: each live segment's index (its file's size: faiss writes its in-memory layout)
        and id map; disk: segment files, vector files (memory-mapped: in the page cache when used, not counted
        as memory) and the SQLite database."""
        with self._snapshot() as view:
            segments = view.segments.segments if view.segments is not None else ()
        folder = self.loader.folder
        memory = disk = vector_files = trained = 0
        for segment in segments:
            size = self.loader.path(segment.number).stat().st_size if segment.number > 0 else 0
            memory += size + segment.layout.rowids.nbytes
            disk += size
            if segment.layout.vectors is not None:
                trained += 1
                vector_files += vectors_path(folder, segment.number).stat().st_size
        database = sum(p.stat().st_size for p in self.dir.glob("store.sqlite*") if p.is_file())
        return {"index_type": self.settings["type"], "memory_bytes": memory,
                "disk_bytes": disk + vector_files + database, "vector_file_bytes": vector_files,
                "segments": len(segments), "compressed_segments": trained,
                "vectors": sum(s.live for s in segments)}

    def answers_quickly(self, filtered: bool) -> bool:
        # In memory and cheap: an HNSW graph, or a flat index small enough to scan in a few milliseconds.
        # A filter also needs the generation's metadata columns already built (building them reads every row).
        segments = self.loader.current
        if segments is None or not segments.ntotal or self._closed:
            return False
        generation = segments.generation
        if filtered and (self._columns_cache is None or self._columns_cache[0] != generation):
            return False
        if is_compressed(self.settings):
            return False  # re-ranking reads the vector files, which may have to come from disk
        if self.settings["type"] == "HNSW":
            # a filter evaluates columns over every row and may scan up to 8k matches exactly: a few ms at 1M
            # chunks, not event-loop work
            return not filtered
        return segments.ntotal * segments.d <= _QUICK_FLAT_FLOATS

    @classmethod
    def check_settings(cls, settings: dict[str, Any]) -> None:
        index_settings(settings)

    @classmethod
    def check_settings_change(cls, old: dict[str, Any], new: dict[str, Any]) -> None:
        def built(settings: dict[str, Any]) -> dict[str, Any]:
            shape = index_settings(settings)
            for key in SEARCH_TIME_SETTINGS:  # read when an index is loaded or searched: may change at any time
                shape.pop(key, None)
            return shape

        if built(old) != built(new):
            raise InvalidInputError("the FAISS index type of a non-empty knowledge bank cannot change yet "
                                    f"(only {', '.join(SEARCH_TIME_SETTINGS)} can)")

    def new_index(self, dim: int) -> faiss.Index:
        return new_index(self.settings, dim)

    def langchain_vectorstore(self, core: Any, tx: StoreTransaction | None, **kwargs: Any) -> KBFaissVectorStore:
        """A FAISS knowledge bank hands out an instance of langchain-community's FAISS class."""
        if kwargs:
            raise InvalidInputError(f"unexpected vector store options: {', '.join(sorted(kwargs))}")
        return KBFaissVectorStore(core, tx)

    def close(self) -> None:
        self.merger.close()
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
            self._local.meta = None
            self._local.view = None
            watch = getattr(self._local, "wal_watch", None)
            if watch is not None:
                watch.close()
                self._local.wal_watch = None
        self.loader.clear()

    def destroy(self) -> None:
        self.close()
        self.checkpoints.wait()
        self._closed = True
        shutil.rmtree(self.dir, ignore_errors=True)



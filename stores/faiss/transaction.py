"""The FAISS knowledge bank's single write transaction and its crash-safe commit (see ``stores.faiss.store``).

The vectors a transaction adds go into an index of their own (a compressed type's into a file in its staging
folder instead, ``stores.faiss.spill``), written at commit as one new segment; vectors it deletes or replaces in
committed segments become tombstones, committed in the same SQLite transaction. So a commit writes what it
changed, whatever the size of the knowledge bank.
"""

from __future__ import annotations

import shutil
import sqlite3
import uuid
from collections.abc import Sequence
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any

import faiss
import numpy as np

from kb_base.errors import StoreError, WriterClosedError
from stores.base import DelegatingReader, Record, StoreTransaction, fault_point, release_after_failure
from stores.faiss.compressed import is_compressed
from stores.faiss.compressed_segments import write_spilled_segment
from stores.faiss.segment_files import next_segment, write_segment
from stores.faiss.segment_spans import add_span, clear_spans
from stores.faiss.segments import Segment, SegmentSet
from stores.faiss.spill import SpilledVectors
from stores.faiss.vector_buffers import NormalisedBuffers
from stores.faiss.view import FaissView, _chunks
from stores.keyword import PendingKeywords
from stores.record_batch import RecordBatch
from stores.record_checks import checked_vectors, metadata_json
from stores.sqlite.background_io import Background, flush_to_disk

if TYPE_CHECKING:
    from stores.faiss.store import FaissStore


PENDING_KEYWORD_DOCUMENTS = 100_000  # documents analysed and not yet written, at most (about 1 KB each)
# Writes below this many records run on the writer's own thread: its vector adds, its segment file's write and
# fsync, and no early WAL flush (little or nothing spilled to flush). Starting a helper thread waits until it is
# scheduled: on the 2-core machine at a load average of 13, three of them cost a one-document commit at 1M chunks
# ~80 ms of its ~180 ms (cProfile: Thread.start), for a few milliseconds of work.
SMALL_WRITE = 256


class FaissTransaction(DelegatingReader, StoreTransaction):
    def __init__(self, store: FaissStore, conn: sqlite3.Connection, lock_file: Any,
                 generation: int, dim: int | None) -> None:
        self.store, self.conn, self.lock_file = store, conn, lock_file
        self.generation, self._dim, self._committed_dim = generation, dim, dim
        self.index: faiss.Index | None = None  # the vectors this transaction adds: its segment, at commit
        # a compressed type's vectors go to a file instead (its segment's vector file at commit): bounded memory
        self._spills = is_compressed(store.settings)
        self._spill: SpilledVectors | None = None
        self._tombstones: set[int] = set()  # committed rowids this transaction deletes or replaces
        self._cleared = False  # clear() retires every committed segment
        self._segments: SegmentSet | None = None  # what this transaction's own reads search, until it writes
        self._segment_row: tuple[int, int, int, int] | None = None  # (segment, lowest, highest rowid, count)
        self._segment_index: faiss.Index | None = None  # the index written as that segment, offered to readers
        self._dirty = False
        self._open = True
        self.staging = store.dir / "staging" / uuid.uuid4().hex
        self._wal_flush: Background | None = None
        self._index_writer: Background | None = None  # the commit's index file write, on a helper thread
        # Upserted documents being analysed for the keyword index on a helper thread while the caller goes on
        # (prepares its next batch); written into this transaction, all buffered batches at once, before its
        # next read, delete, replacement or commit (or at PENDING_KEYWORD_DOCUMENTS).
        self._pending_keywords = PendingKeywords(store.keywords)
        # Vectors added to the index on a helper thread (faiss releases the GIL; growing a 100k index is mostly
        # page faults and copies, ~0.25 s), one batch after another; waited for before anything reads, removes
        # from or writes out the index.
        self._adding: Background | None = None
        self._normalised = NormalisedBuffers()
        self._broken = False
        row = conn.execute("SELECT MAX(rowid) FROM records").fetchone()
        counter = conn.execute("SELECT value FROM meta WHERE key = 'next_rowid'").fetchone()
        # Rowids are never reused: not while the keyword index holds a tombstone for one, and not ever
        # once committed (the counter commits with the records), which is what lets readers cache
        # records by rowid and read them outside a snapshot.
        self._next_rowid = max(int(row[0] or 0) + 1, store.keywords.highest_tombstone(conn) + 1,
                               int(counter[0]) if counter else 1)
        # While the store was empty when this writer began, the only ids that can exist are the ones it wrote:
        # an upsert then looks up only those (a bulk load into a new knowledge bank looks up none).
        self._written_ids: set[str] | None = set() if row[0] is None else None
        self._first_rowid = self._next_rowid  # rowids from here on are this transaction's own

    def _view(self) -> FaissView:
        self._check_open()
        self._write_pending_keywords()
        self._join_adds()
        return FaissView(self.conn, self._own_segments(), self._dim, self.store.keywords,
                         self.store.settings["type"] == "HNSW", ef_search=self.store.settings.get("ef_search", 0))

    def _own_segments(self) -> SegmentSet:
        """The committed segments with this transaction's tombstones, and its own vectors as one more."""
        if self._segments is not None:
            return self._segments
        parts: list[Segment] = []
        if not self._cleared and self._committed_dim is not None:
            base = self.store.segments_at(self.conn, self.generation, self._committed_dim)
            dead = np.fromiter(sorted(self._tombstones), dtype=np.int64)
            parts = [s.with_tombstones(dead) if dead.size else s for s in base.segments]
        own = self._spill.searchable() if self._spill is not None and self._spill.count else self.index
        if own is not None and own.ntotal:
            parts.append(Segment(-1, own))
        self._segments = SegmentSet(self.generation, self._dim, parts)
        return self._segments

    def _check_open(self) -> None:
        if not self._open:
            raise WriterClosedError("this transaction is already committed or rolled back")

    @property
    def dimension(self) -> int | None:
        return self._dim

    def _writable_index(self, dim: int) -> faiss.Index | SpilledVectors:
        if self._spills:
            if self._spill is None:
                self.store.new_index(dim)  # checks the settings that depend on the dimension
                self._spill = SpilledVectors(self.staging, dim)
        elif self.index is None:
            self.index = self.store.new_index(dim)
        self._dirty = True
        self._segments = None
        return self._spill if self._spills else self.index

    def _rowids_of(self, ids: Sequence[str]) -> list[int]:
        if self._written_ids is not None:
            ids = [i for i in ids if i in self._written_ids]
        rowids: list[int] = []
        for part in _chunks(list(ids)):
            marks = ",".join("?" * len(part))
            query = f"SELECT rowid FROM records WHERE id IN ({marks})"
            rowids.extend(r[0] for r in self.conn.execute(query, list(part)))
        return rowids

    def _remove_rowids(self, rowids: list[int]) -> None:
        if not rowids:
            return
        self._join_adds()
        own = np.asarray([r for r in rowids if r >= self._first_rowid], dtype=np.int64)
        self._tombstones.update(r for r in rowids if r < self._first_rowid)
        self._dirty = True
        self._segments = None
        if own.size and self._spill is not None:
            self._spill.remove(own)
        elif own.size and self.index is not None:  # this transaction's own vectors: out of its segment now
            if self.store.settings["type"] == "HNSW":
                self._rebuild_without(self.index, own)
            else:
                self.index.remove_ids(own)
        self.store.keywords.remove(self.conn, rowids)
        self.conn.executemany("DELETE FROM records WHERE rowid = ?", [(r,) for r in rowids])

    def _rebuild_without(self, index: faiss.Index, removed: np.ndarray) -> None:
        """HNSW graphs cannot drop nodes: rebuild this transaction's own segment from its remaining vectors."""
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
        batch = records.columns() if isinstance(records, RecordBatch) else None
        ids = list(batch.ids) if batch is not None else [r.id for r in records]
        texts = batch.texts if batch is not None else [r.text for r in records]
        rowids = np.arange(self._next_rowid, self._next_rowid + len(records), dtype=np.int64)
        # analysed for the keyword index on a helper thread from now on, while the records and vectors are
        # checked and written here and the caller prepares its next batch; buffered, and written with the
        # batches after it (one row per bucket of terms for all of them) at this transaction's next read, delete,
        # replacement or commit
        analysing = self._pending_keywords.start(rowids, texts)
        try:
            vectors, buffer = self._normalised.into_free_buffer(checked_vectors(records, self._dim))
            dim = int(vectors.shape[1])
            replaced = self._rowids_of(ids)
            if replaced or self._pending_keywords.documents >= PENDING_KEYWORD_DOCUMENTS:
                self._write_pending_keywords()  # a removal needs the postings in; and memory stays bounded
            self._remove_rowids(replaced)
            self._next_rowid += len(records)
            if batch is not None and batch.metadatas is None:
                metadata: Sequence[str] = batch.encoded  # type: ignore[assignment]
            elif batch is not None:
                metadata = [e if e is not None else metadata_json(Record(i, "", m))
                            for i, m, e in zip(ids, batch.metadatas, batch.encoded, strict=True)]
            else:
                metadata = [metadata_json(record) for record in records]
            self.conn.executemany("INSERT INTO records(rowid, id, text, metadata) VALUES (?, ?, ?, ?)",
                                  zip(rowids.tolist(), ids, texts, metadata, strict=True))
        except BaseException:
            self._pending_keywords.forget(analysing)
            raise
        self._pending_keywords.keep(analysing)
        if self._written_ids is not None:
            self._written_ids.update(ids)
        self._add_vectors(self._writable_index(dim), vectors, rowids)
        self._normalised.lent(buffer, self._adding)
        if self._dim is None:
            self._dim = dim  # into meta at commit, with the generation (see ``_write_meta``)
        # the pages SQLite spilled to the WAL during this batch go to disk while the caller prepares the next
        if len(records) >= SMALL_WRITE and (self._wal_flush is None or not self._wal_flush.running):
            self._wal_flush = Background(self._flush_wal, "kb-wal-flush")

    def _add_vectors(self, index: faiss.Index | SpilledVectors, vectors: np.ndarray, rowids: np.ndarray) -> None:
        previous = self._adding
        if previous is None and len(rowids) < SMALL_WRITE:
            try:
                index.add_with_ids(vectors, rowids)  # a few vectors: quicker here than a thread's start
            except BaseException:
                self._broken = True  # records are in without their vectors: this transaction must not commit
                raise
            return

        def add() -> None:
            if previous is not None:
                previous.join()  # in order; an earlier failure fails this one too, and is what join raises
            index.add_with_ids(vectors, rowids)

        self._adding = Background(add, "kb-vector-add")

    def _join_adds(self) -> None:
        adding, self._adding = self._adding, None
        if adding is not None:
            try:
                adding.join()
            except BaseException:
                self._broken = True  # records are in without their vectors: this transaction must not commit
                raise

    def _discard_adds(self) -> None:
        """Wait for the adds (no thread outlives its writer, nor writes into an index being dropped); what they
        raised no longer matters."""
        adding, self._adding = self._adding, None
        if adding is not None:
            try:
                adding.join()
            except Exception:
                pass

    def _flush_wal(self) -> None:
        flush_to_disk(self.store.db_path.with_name(self.store.db_path.name + "-wal"))

    def _write_pending_keywords(self) -> None:
        try:
            self._pending_keywords.write(self.conn)
        except BaseException:
            self._broken = True  # records are in without their postings: this transaction must not commit
            raise

    def delete(self, ids: Sequence[str]) -> int:
        self._check_open()
        self._write_pending_keywords()
        rowids = self._rowids_of(ids)
        self._remove_rowids(rowids)
        return len(rowids)

    def clear(self) -> None:
        self._check_open()
        self._drop_pending_keywords()
        self._discard_adds()
        self.conn.execute("DELETE FROM records")
        self._written_ids = set()  # empty again: only what this writer adds from here on can exist
        self.store.keywords.clear(self.conn)
        self._dim = None
        self.index = None
        if self._spill is not None:
            self._spill.discard()
            self._spill = None
        self._cleared = True
        self._tombstones.clear()
        self._segments = None
        self._dirty = True

    def commit(self) -> None:
        self._check_open()
        try:
            self._commit()
        except BaseException as exc:
            release_after_failure(self, exc)  # rolled back and unlocked now, however long the caller keeps exc
            if isinstance(exc, sqlite3.Error | OSError | RuntimeError):
                raise StoreError(f"commit to knowledge bank {self.store.context.kb_id} failed: {exc}") from exc
            raise
        try:
            self.store.checkpoints.after_commit()  # committed: a long WAL is copied into the database from here
        finally:
            self._finish()
        # after the lock is released: the merger takes it for its own commit (a commit that changed nothing made
        # no generation, so no merge either)
        if self._dirty:
            self.store.merger.after_commit()

    def _commit(self) -> None:
        if self._broken:
            raise StoreError("an earlier write of this transaction failed: roll it back")
        new_generation = self.generation + 1
        if self._small():
            self._join_adds()
            if self._dirty:
                self._write_segment(next_segment(self.conn))
        elif self._dirty and (self.index is not None or self._spill is not None):
            # the segment file is written and fsynced on a helper thread, once the vector adds it waits for are
            # done, while this one writes the buffered keyword postings and flushes the WAL; both are waited
            # for before the SQLite commit that makes the new generation visible (a failure before it leaves
            # an unreferenced file, as ever; a failed add fails the join below)
            adding, self._adding = self._adding, None
            number = next_segment(self.conn)
            self._index_writer = Background(lambda: self._write_segment(number, after=adding), "kb-index-write")
        else:
            self._join_adds()
        self._write_pending_keywords()
        if self._dirty:
            if self._index_writer is not None:
                # most of a big write's WAL is on disk before the commit's own fsync
                self._join_wal_flush()
                self._flush_wal()
                writer, self._index_writer = self._index_writer, None
                writer.join()
            self._write_segments(new_generation)
            self._write_meta(new_generation)
        offered = self._offer()
        try:
            fault_point("before_sqlite_commit")
            self.conn.execute("COMMIT")
        except BaseException:
            if offered is not None:  # before the lock goes: the next commit reuses the number
                self.store.loader.withdraw(offered)
            raise
        self.index = self._segment_index = None  # the store's readers may hold it now: nothing here touches it
        self._segments = None
        fault_point("after_sqlite_commit")

    def _offer(self) -> int | None:
        """Hand the new segment's index, already in memory, to this store's readers before the commit point, so
        that a search in this process that sees the new generation reads no file for it (whichever thread it
        runs on). Nothing changes the index after this: the transaction only commits or rolls back from here."""
        if self._segment_row is None or self._segment_index is None:
            return None
        number = self._segment_row[0]
        self.store.loader.offer(number, self._segment_index)
        return number

    def _small(self) -> bool:
        """A commit of fewer than ``SMALL_WRITE`` added and deleted records: its segment file is written on this
        thread, and the SQLite commit's fsync is the WAL's only one (an early flush would be a second)."""
        if self._cleared:  # deleting every record fills the WAL: the early flush pays
            return False
        return self._next_rowid - self._first_rowid + len(self._tombstones) < SMALL_WRITE

    def _write_segments(self, generation: int) -> None:
        """The generation's segment rows and tombstones; with clear(), every committed segment retires."""
        if self._cleared:
            self.conn.execute("UPDATE segments SET retired = ? WHERE retired IS NULL", (generation,))
            self.conn.execute("DELETE FROM tombstones")  # their segments retire: no newer reader needs them
            clear_spans(self.conn)
        if self._segment_row is not None:
            number, lo, hi, count = self._segment_row
            self.conn.execute("INSERT INTO segments(segment, added, retired, rowid_lo, rowid_hi, count, kind) "
                              "VALUES (?, ?, NULL, ?, ?, ?, 'commit')", (number, generation, lo, hi, count))
            add_span(self.conn, number, lo, hi)  # the merge policy counts its deletions in SQLite by it
            self.conn.execute("INSERT OR REPLACE INTO meta VALUES ('next_segment', ?)", (str(number + 1),))
        if self._tombstones:
            self.conn.executemany("INSERT OR REPLACE INTO tombstones(rowid, gen) VALUES (?, ?)",
                                  [(r, generation) for r in sorted(self._tombstones)])

    def _write_meta(self, generation: int) -> None:
        """The new generation, the vector dimension and the rowid counter, together and last of the transaction:
        the meta page is written once, at the end (the dimension used to be written at the first upsert, so a
        bulk load spilled that page to the WAL early and SQLite rewrote it in place at commit).
        After clear() there is no index file: dimension '' tells readers the store is empty.
        """
        dimension = "" if self._dim is None else str(self._dim)
        self.conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", [
            ("generation", str(generation)), ("dimension", dimension), ("next_rowid", str(self._next_rowid))])

    def _write_segment(self, number: int, after: Background | None = None) -> None:
        """Stage this transaction's segment, fsync it, rename it to its number's name, fsync the folder; first wait
        for ``after`` (the vector adds). An empty one (every vector added was removed again) is not written."""
        if after is not None:
            after.join()
        folder = self.store.loader.folder
        if self._spill is not None:
            # a compressed type's segment is trained and encoded here (stores.faiss.compressed_segments)
            written = write_spilled_segment(self.store.settings, self._spill, self.staging, folder, number,
                                            "index_written")
            if written is not None:
                span, self._segment_index = written
                self._segment_row = (number, *span)
            return
        index = self.index
        if index is None or index.ntotal == 0:
            return
        rowids = faiss.vector_to_array(index.id_map)
        write_segment(index, self.staging, folder, number, "index_written")
        self._segment_row = (number, int(rowids.min()), int(rowids.max()), int(index.ntotal))
        self._segment_index = index

    def _join_wal_flush(self) -> None:
        if self._wal_flush is not None:
            self._wal_flush.join()
            self._wal_flush = None

    def rollback(self) -> None:
        if not self._open:
            return
        try:
            self._abort()
        finally:
            self._finish()

    def _drop_pending_keywords(self) -> None:
        self._pending_keywords.discard()

    def _abort(self) -> None:
        """Undo what is not committed: helper threads stopped (none left writing into the staging folder that
        ``_finish`` removes), buffered postings dropped, the SQLite transaction rolled back."""
        writer, self._index_writer = self._index_writer, None
        if writer is not None:
            try:
                writer.join()
            except BaseException:  # noqa: BLE001 - the commit's own failure is the one reported
                pass
        self._drop_pending_keywords()
        self._discard_adds()
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")

    def _finish(self) -> None:
        """Release everything this transaction holds, each step even if one before it failed; the flock last."""
        if not self._open:
            return
        self._open = False
        with ExitStack() as release:  # last in, first out; each runs even when one before it raised
            release.callback(self.lock_file.close)  # releases the flock
            release.callback(shutil.rmtree, self.staging, ignore_errors=True)
            if self._spill is not None:
                release.callback(self._spill.discard)  # its descriptor closed before the folder goes
            release.callback(self.conn.close)  # rolls back what is still open
            self._join_wal_flush()

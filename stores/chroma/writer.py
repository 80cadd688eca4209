"""The write side of the Chroma driver: one transaction at generation committed + 1 (design in store.py)."""

from __future__ import annotations

import json
import logging
import secrets
import sqlite3
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from kb_base.errors import InvalidInputError, KBError, WriterClosedError
from stores.base import DelegatingReader, Record, StoreTransaction, fault_point, release_after_failure
from stores.chroma.codec import DEL, GEN, ID, NEVER, encode
from stores.chroma.reader import BATCH, ChromaView, Snap, chunks, marks, meta_value, set_meta
from stores.generations import PartialWrites, flip_generation, split_by_generation
from stores.record_checks import check_records, normalise

if TYPE_CHECKING:
    from stores.chroma.shared import SharedWrite
    from stores.chroma.store import ChromaStore

log = logging.getLogger(__name__)


class ChromaTransaction(DelegatingReader, StoreTransaction):
    def __init__(self, store: ChromaStore, conn: sqlite3.Connection, lock: Any, snap: Snap,
                 shared: SharedWrite | None = None) -> None:
        # ``lock``: the flock, or with a shared database the write under the lease (closing either releases it)
        self.store, self.conn, self.lock, self.shared = store, conn, lock, shared
        self.committed, self.generation = snap.generation, snap.generation + 1
        self.live = self.collection = snap.collection
        self._dim = snap.dim
        self.switched = self._switching = False
        self._open = True
        self._done = False  # past the commit point: a failure from here on must undo nothing
        self._partial = PartialWrites()  # a write failed part way: the transaction can only roll back
        self._added: dict[str, list[str]] = {}  # collection → physical ids added (undone by rollback)
        self._marked: list[str] = []  # live physical ids marked __kb_del = G (unmarked by rollback)
        top = int(conn.execute("SELECT COALESCE(MAX(rowid), 0) FROM records").fetchone()[0])
        self._next_rowid = max(top, store.keywords.highest_tombstone(conn)) + 1  # rowids are never reused

    def snap(self) -> Snap:
        return Snap(self.generation, self.collection, self._dim)

    def _view(self) -> ChromaView:
        if not self._open:
            raise WriterClosedError("this transaction is already committed or rolled back")
        return ChromaView(self.store, self.conn, self)

    @property
    def dimension(self) -> int | None:
        self._view()
        return self._dim

    def _call(self, method: str, **kwargs: Any) -> Any:
        self._fence()
        return self.store.chroma.call(self.collection, method, **kwargs)

    def _fence(self) -> None:
        """Before a Chroma write: a writer whose lease may have lapsed stops (a no-op under the flock)."""
        if self.shared is not None:
            self.shared.write.fence()

    def _switch(self) -> None:
        """Write into a fresh, empty collection from now on (see the module docstring)."""
        name = f"{self.store.collection_base}-g{self.generation}"
        self._fence()
        self._switching = True  # from here on, a rollback deletes that collection
        self.store.chroma.delete_collection(name)  # this transaction's earlier one, or a dead writer's
        self.store.chroma.collection(name, create=True, configuration=self.store.configuration)
        self._added.pop(name, None)
        self.collection, self.switched, self._dim = name, True, None
        self.conn.execute("DELETE FROM records")
        self.conn.execute("DELETE FROM retired")  # they are in the old collection, which goes as a whole
        if self.shared is not None:
            self.shared.switched()
        self.store.keywords.clear(self.conn)
        set_meta(self.conn, "dimension", "")

    def _retire(self, ids: Sequence[str]) -> int:
        """Hide the records of ``ids`` from this generation on; returns how many existed."""
        rows: list[tuple[int, str, int]] = []
        for part in chunks(ids):
            rows += self.conn.execute(f"SELECT rowid, physical, gen FROM records WHERE id IN ({marks(len(part))})",
                                      part).fetchall()
        if not rows:
            return 0
        own, older = split_by_generation(((physical, gen) for _, physical, gen in rows), self.generation)
        for part in chunks(own):
            self._call("delete", ids=part)
        for part in chunks(older):
            self._marked += part  # before the call: a call that times out may still have been applied
            self._call("update", ids=part, metadatas=[{DEL: self.generation}] * len(part))  # Chroma merges keys
        if self.shared is None:
            self.conn.executemany("INSERT INTO retired VALUES (?, ?)", [(p, self.generation) for p in older])
        else:  # the change log says what to vacuum, whichever server commits next
            for _, physical, gen in rows:
                record_id = physical.split(":", 1)[1]
                if gen == self.generation:
                    self.shared.unadded(record_id)
                else:
                    self.shared.retired(record_id, physical)
        self.store.keywords.remove(self.conn, [r[0] for r in rows])
        self.conn.executemany("DELETE FROM records WHERE rowid = ?", [(r[0],) for r in rows])
        return len(rows)

    def upsert(self, records: Sequence[Record]) -> None:
        self._view()
        if not records:
            return
        dim = check_records(records, self._dim)
        if self.shared is not None:  # rowids in id order, as other servers' caches give them (shared.py: adopt)
            records = sorted(records, key=lambda r: r.id)
        copies = []
        for record in records:
            try:
                copies.append(json.dumps(record.metadata, allow_nan=False, ensure_ascii=False))
            except (TypeError, ValueError) as exc:
                raise InvalidInputError(f"document {record.id!r}: metadata is not JSON-serialisable: {exc}") from exc
        metadatas = [encode(r.id, dict(r.metadata)) for r in records]
        with self._partial.writing():
            self._write(records, dim, copies, metadatas)

    def _write(self, records: Sequence[Record], dim: int, copies: list[str], metadatas: list[dict[str, Any]]) -> None:
        if self._dim is None and not self.switched:
            # The KB is empty: write into a fresh collection, which takes any dimension (the old one keeps the
            # dimension of its first vector) and exists wherever the KB's connection now points.
            self._switch()
        self._retire([r.id for r in records])
        vectors = normalise(np.stack([np.asarray(r.vector, dtype=np.float32) for r in records]))
        # A fresh part per call: an add never meets an id already there (Chroma would silently keep the old one).
        nonce = secrets.token_hex(4)
        physical = [f"{self.generation}.{nonce}:{r.id}" for r in records]
        for metadata, record in zip(metadatas, records, strict=True):
            metadata.update({ID: record.id, GEN: self.generation, DEL: NEVER})
        added = self._added.setdefault(self.collection, [])
        for start in range(0, len(records), BATCH):
            end = start + BATCH
            added += physical[start:end]
            self._call("add", ids=physical[start:end], embeddings=vectors[start:end],
                       metadatas=metadatas[start:end], documents=[r.text for r in records[start:end]])
        fault_point("store_records_written")
        rows = [(self._next_rowid + i, r.id, p, self.generation, m, r.text, v.tobytes())
                for i, (r, p, m, v) in enumerate(zip(records, physical, copies, vectors, strict=True))]
        self._next_rowid += len(rows)
        self.conn.executemany("INSERT INTO records (rowid, id, physical, gen, metadata, text, vector) "
                              "VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        if self.shared is not None:
            for row in rows:
                self.shared.added(row[1], row[2])
        self.store.keywords.add(self.conn, [(row[0], r.text) for row, r in zip(rows, records, strict=True)])
        if self._dim is None:
            self._dim = dim
            set_meta(self.conn, "dimension", str(dim))

    def delete(self, ids: Sequence[str]) -> int:
        self._view()
        with self._partial.writing():
            return self._retire(list(dict.fromkeys(ids)))

    def clear(self) -> None:
        self._view()
        with self._partial.writing():
            self._switch()

    def commit(self) -> None:
        self._view()
        self._partial.refuse_commit(self, self.store.context.kb_id)
        if self.shared is not None:
            self._commit_shared(self.shared)
            return
        try:
            if self.switched:
                set_meta(self.conn, "collection", self.collection)
                if self.live:
                    drops = json.loads(meta_value(self.conn, "drops"))
                    set_meta(self.conn, "drops", json.dumps([*drops, [self.live, self.generation]]))
            flip_generation(self.conn, self.generation)
            set_meta(self.conn, "dirty", "0")
            fault_point("before_sqlite_commit")
            self.conn.execute("COMMIT")  # the commit point: visibility, keywords and the id map flip together
            self._done = True
            fault_point("after_sqlite_commit")
        except BaseException as exc:
            release_after_failure(self, exc)  # rolled back and unlocked now, however long the caller keeps exc
            raise
        try:
            self.store.chroma.committed(self.committed, self.generation)
            self._collect_garbage()
        finally:
            self._finish()

    def _collect_garbage(self) -> None:
        """After the commit point of G: delete from Chroma the records retired at G-1 or before and the
        collections switched away from then, which no reader of G-1 or later sees. Not before the commit point:
        the newest reader that may still be reading them is at G-2, and it must find the committed generation
        past G-1 once done, so as to know it was lapped and read again (ChromaView._whole). Garbage never fails a
        commit: what is left here (Chroma refused, or the process died) the next commit deletes."""
        try:
            stale = [r[0] for r in self.conn.execute("SELECT physical FROM retired WHERE gen <= ?",
                                                     (self.committed,))]
            for part in chunks(stale):
                self._call("delete", ids=part)
            self.conn.execute("DELETE FROM retired WHERE gen <= ?", (self.committed,))
        except (KBError, sqlite3.Error) as exc:
            log.warning("could not delete replaced Chroma records: %s", exc)
        try:
            drops = json.loads(meta_value(self.conn, "drops"))
            kept = []
            for name, gen in drops:
                if gen <= self.committed:
                    try:
                        self.store.chroma.delete_collection(name)
                        continue
                    except KBError as exc:
                        log.warning("could not delete old Chroma collection %s: %s", name, exc)
                kept.append([name, gen])
            if kept != drops:
                set_meta(self.conn, "drops", json.dumps(kept))
        except sqlite3.Error as exc:
            log.warning("could not note the deletion of old Chroma collections: %s", exc)

    def _commit_shared(self, shared: SharedWrite) -> None:
        """The commit point in the shared database (stores/chroma/shared.py), then this server's cache."""
        sides = self.store.shared
        assert sides is not None
        try:
            drops = list(shared.drops)
            if self.switched:
                if self.live:
                    drops.append((self.live, self.generation))
                vacuumed = self.committed  # what older generations retired goes with the old collection
            else:
                # What G-1 retired stays until G+1's writer: the vacuum runs before the commit point (its
                # progress is noted in it), so deleting it now could lap a reader of G-2 that still sees the
                # committed generation at G-1 (ChromaView._whole)
                vacuumed = sides.vacuum(shared, self.collection, self.committed - 1)
            kept = []
            for name, gen in drops:
                if gen < self.committed:  # switched away from two generations ago: unused now (as above)
                    try:
                        self._fence()
                        self.store.chroma.delete_collection(name)
                        continue
                    except KBError as exc:  # garbage never fails a commit; the next one tries again
                        log.warning("could not delete old Chroma collection %s: %s", name, exc)
                kept.append([name, gen])
            sides.commit_statements(shared, self.generation, self.collection, kept, vacuumed)
            shared.write.dim = self._dim
            shared.write.commit()  # the commit point (with its fault points); fenced off: WriterFencedError
            self._done = True
        except BaseException as exc:
            release_after_failure(self, exc)
            raise
        try:  # this server's cache: if it fails, the cache is behind and catches up like any other server's
            sides.adopt(self.conn, shared, self.generation, self._dim, self.collection)
        except sqlite3.Error as exc:
            log.warning("knowledge bank %s: generation %d committed, but this server's cache of it was not "
                        "(%s); it catches up on the next read", self.store.context.kb_id, self.generation, exc)
        finally:
            self._finish()

    def rollback(self) -> None:
        if not self._open:
            return
        try:
            if self._done:  # a failure after the commit point undoes nothing
                return
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            if self.shared is not None:
                self._undo_shared(self.shared)
                return
            self._undo_chroma()
            set_meta(self.conn, "dirty", "0")  # only once Chroma is clean; otherwise the next writer cleans
        finally:
            self._finish()

    def _undo_shared(self, shared: SharedWrite) -> None:
        """Undo this writer's Chroma writes, only while it provably holds the lease: a fenced writer's
        'above C' may be its successor's work, which the successor's own cleanup handles."""
        if not shared.write.holds_lock():
            return
        self._undo_chroma()
        assert self.store.shared is not None
        self.store.shared.set_clean()

    def _undo_chroma(self) -> None:
        if self._switching:
            self.store.chroma.delete_collection(f"{self.store.collection_base}-g{self.generation}")
        for name, physical in self._added.items():
            if name != self.collection or not self.switched:
                for part in chunks(physical):
                    self.store.chroma.call(name, "delete", ids=part)
        for part in chunks(self._marked):
            self.store.chroma.call(self.live, "update", ids=part, metadatas=[{DEL: NEVER}] * len(part))

    def _finish(self) -> None:
        self._open = False
        try:
            self.conn.close()
        finally:
            self.lock.close()  # releases the flock

"""Chroma driver: embedded (PersistentClient in the KB folder) or a Chroma server (HttpClient).

Files: this module (driver, commit point, recovery), stores/chroma/repair.py (damaged
HNSW files found and rebuilt from kb's copy of every record), stores/chroma/reader.py
(reads at a snapshot), stores/chroma/writer.py (the transaction), stores/chroma/codec.py
(metadata encoding, ``where`` translation), stores/chroma/client.py (clients,
errors, embedded mode across processes), stores/chroma/langchain.py.

Chroma has no multi-record transactions, so kb keeps its guarantees with
the generation scheme of stores/generations.py (shared with Elasticsearch and
Azure AI Search), here with a richer commit point:

- Every physical Chroma record carries ``__kb_gen`` (the generation that
  wrote it) and ``__kb_del`` (the generation that retired it, or NEVER). The
  state at generation C is the records with ``__kb_gen <= C < __kb_del``.
- The commit point is one SQLite transaction in the KB folder
  (``chroma-store/chroma-meta.sqlite``, WAL, synchronous=FULL): the committed
  generation, the live collection's name, the id → physical record map with
  a copy of each record's metadata, and the BM25 keyword index. SQLite makes
  it atomic and durable, so vectors, keywords and visibility flip together.
  This holds in server mode too: the kb service is the only writer of its
  collections, and the writer lock is a flock in the KB folder. With a
  database URL (several kb servers) a Chroma server's commit point is in the
  database instead, and this SQLite file each server's cache of it
  (stores/chroma/shared.py).
- A writer at G = C + 1 adds physical records ``G.<random>:<id>`` and marks
  the records it replaces or deletes ``__kb_del = G``: readers at C still
  see them. Nothing it does is visible before the commit point; a rollback
  deletes what it added and unmarks what it marked. Before its first Chroma
  write it durably sets a ``dirty`` flag in SQLite; a writer that finds the
  flag set (its predecessor died, or could not clean up because Chroma was
  down) first removes that predecessor's leftovers. A retried write is
  therefore never duplicated: ids are unique in the id map, and the failed
  attempt's records are gone before the retry writes.
- Emptying the KB (``clear``), and the first write into an empty KB, switch
  to a fresh collection instead: O(1) rather than a mark per record, a new
  vector dimension becomes possible (a Chroma collection keeps the
  dimension of its first vector forever, even once emptied), and so does a
  new connection. The collection's name is part of the commit point.
- Records replaced at G, and collections switched away from at G, are
  deleted by the commit after G, once past its commit point (a reader that
  read generation G-1 just before commit G can still finish); with a shared
  database, by the writer after that (its vacuum runs before its commit
  point, see writer.py).

Reads take a SQLite read snapshot (generation, live collection, id map) and
query Chroma at that generation. Once the Chroma calls are over a read reads
the committed generation again: a reader lapped by two commits may have lost
records of its generation to the second one's vacuum, and reads again at the
newer generation (reader.py: ``ChromaView._whole``; iter_records, which has
handed pages out already, raises StoreUnavailableError instead). Every hit is
checked against the reader's generation in Python too, whatever the query's
``where``. Unfiltered similarity asks Chroma for
k + max(k, 10) neighbours without the visibility filter and keeps the
visible ones: when at least k are visible they are exactly the top k (any
better visible record would have ranked among them). Only when a write in
progress, or records awaiting deletion, crowd the top does it repeat the
query with the ``__kb_gen``/``__kb_del`` filter in Chroma, which costs ~20x
more (chromadb 1.5.9 evaluates a where over every record: ~41 ms against
~2 ms at 10k records). Filtered similarity finds the matching records in
memory (the committed generation's metadata as typed columns, built once
per generation; SQL over the metadata copy inside a transaction) and
restricts the Chroma query to their ids, which is faster than Chroma's where
at every size measured and exact for every filter; beyond
``id_query_limit`` matches it uses Chroma's where (stores/chroma/codec.py) and
refuses, with a FilterError, a filter where cannot express. count, ids_where
and filtered keyword search never call Chroma; get fetches by physical id.

Costs: a replace or delete is one extra metadata update per record, and one
delete a commit later; a commit makes no Chroma call unless something is due
for deletion; the metadata is stored twice (Chroma and SQLite); a read
makes one more SQLite read (the committed generation, after its Chroma
calls), and a lapped one reads again.

Keyword search uses kb's BM25 index in the same SQLite file, committed with
the records: chromadb 1.5.9 has no local BM25 or sparse-vector ranking
(``Collection.search`` raises NotImplementedError outside Chroma Cloud), and
``where_document`` ``$contains`` filters but does not rank.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import shutil
import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from kb_base.errors import InvalidInputError, KBError, StoreRecoveringError, WriterBusyError
from kb_base.filters import Filter
from stores.base import (
    Capabilities,
    DelegatingReader,
    Hit,
    Record,
    StoreCheck,
    StoreContext,
    StoreTransaction,
    VectorStoreDriver,
    acquire_writer_lock,
)
from stores.chroma import repair as damage
from stores.chroma.client import ChromaClient, DamagedIndexError
from stores.chroma.codec import DEL, GEN, NEVER, decode, visibility
from stores.chroma.langchain import KBChromaVectorStore
from stores.chroma.reader import ChromaView, Columns, Snap, build_columns, chunks, meta_value, read_snap, set_meta
from stores.chroma.shared import SharedChroma
from stores.chroma.writer import ChromaTransaction
from stores.generations import open_writer
from stores.keyword import KeywordIndex
from stores.sqlite.meta import ThreadConnections, connect_durable, create_meta

log = logging.getLogger(__name__)
T = TypeVar("T")

_HNSW_KEYS = {"ef_search": (1, 10_000), "ef_construction": (1, 10_000), "max_neighbors": (2, 512)}


def hnsw_configuration(settings: dict[str, Any]) -> dict[str, Any]:
    """Chroma collection configuration from the KB's store settings (``{"hnsw": {"ef_search": 200}}``)."""
    raw = settings.get("hnsw") or {}
    if not isinstance(raw, dict):
        raise InvalidInputError("Chroma store setting 'hnsw' must be an object")
    hnsw: dict[str, Any] = {"space": "cosine"}
    for key, value in raw.items():
        if key not in _HNSW_KEYS:
            raise InvalidInputError(f"unknown Chroma hnsw setting {key!r}; known: {', '.join(sorted(_HNSW_KEYS))}")
        low, high = _HNSW_KEYS[key]
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise InvalidInputError(f"Chroma hnsw setting {key!r} must be an integer in [{low}, {high}]")
        hnsw[key] = value
    return {"hnsw": hnsw}


class ChromaStore(DelegatingReader, VectorStoreDriver):
    store_type = "CHROMA"
    capabilities = Capabilities(keyword=True, approximate=True)
    # Filtered similarity restricts the Chroma query to the matching ids up to this many matches (an id list
    # of 20k is ~0.5 MB over HTTP), and uses Chroma's where beyond.
    id_query_limit = 20_000

    def __init__(self, context: StoreContext) -> None:
        super().__init__(context)
        self.dir = Path(context.folder) / "chroma-store"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.configuration = hnsw_configuration(context.settings or {})
        self.chroma_dir = self.dir / "chroma"
        self.chroma = ChromaClient(self.chroma_dir, context.connection or {}, context.kb_id)
        self.keywords = KeywordIndex(context.keyword_analyzer)
        self._connections = ThreadConnections(self.dir / "chroma-meta.sqlite")
        self._columns: tuple[int, Columns] | None = None
        self._columns_lock = threading.Lock()
        self.recovered: list[str] = []  # rebuilds this driver did (kb doctor reports them)
        if self._create_schema():
            self._migrate_first_format()
        self.collection_base = meta_value(self._conn(), "collection_base")
        # a Chroma server with a shared database: the commit point there, the SQLite file a cache (shared.py)
        self.shared = SharedChroma(self, context.database_url) if context.database_url and context.connection \
            else None
        if self.shared is not None:
            self.collection_base = self.shared.collection_base
            self.shared.own_cache(self._conn())
        if self.chroma.embedded is not None:
            self._check_on_open()

    # --- plumbing -------------------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        return self._connections.get()

    def _create_schema(self) -> bool:
        """Create the SQLite side; True if it holds a store of the first format (no metadata copy)."""
        conn = connect_durable(self._connections.path)
        try:
            conn.execute("BEGIN IMMEDIATE")
            create_meta(conn)
            columns = {row[1] for row in conn.execute("PRAGMA table_info(records)")}
            first_format = bool(columns) and "metadata" not in columns
            # text and vector: kb's own copy of each record, from which a damaged Chroma index is rebuilt
            # (stores/chroma/repair.py); NULL in records written before kb kept it
            conn.execute("CREATE TABLE IF NOT EXISTS records (rowid INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, "
                         "physical TEXT NOT NULL, gen INTEGER NOT NULL, metadata TEXT, text TEXT, vector BLOB)")
            if columns and "vector" not in columns:
                conn.execute("ALTER TABLE records ADD COLUMN text TEXT")
                conn.execute("ALTER TABLE records ADD COLUMN vector BLOB")
            # physical records replaced or deleted at ``gen``, deleted from Chroma by a later commit
            conn.execute("CREATE TABLE IF NOT EXISTS retired (physical TEXT NOT NULL, gen INTEGER NOT NULL)")
            self.keywords.create(conn)
            meta = dict(conn.execute("SELECT key, value FROM meta"))
            if "collection_base" not in meta:
                # A random part keeps two KBs apart on one server even if their folders reuse an id.
                safe = re.sub(r"[^A-Za-z0-9._-]", "-", self.context.kb_id)[:48].strip("-._") or "kb"
                conn.execute("INSERT INTO meta VALUES ('collection_base', ?)", (f"kb-{safe}-{secrets.token_hex(4)}",))
            legacy = first_format or int(meta["generation"]) > 0
            if "collection" not in meta:  # the first format kept everything in a collection named after the id
                conn.execute("INSERT INTO meta VALUES ('collection', ?)",
                             (f"kb-{self.context.kb_id}".lower() if legacy else "",))
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('drops', '[]'), ('dirty', '0')")
            conn.execute("COMMIT")
        finally:
            conn.close()
        return first_format

    def _migrate_first_format(self) -> None:
        """Copy metadata from Chroma into SQLite (filters are answered there now), under the writer lock."""
        lock = acquire_writer_lock(self.dir / "writer.lock", 60.0, self.context.kb_id)
        try:
            conn = connect_durable(self._connections.path)
        except BaseException:
            lock.close()  # not held until garbage collection
            raise
        try:
            conn.execute("BEGIN IMMEDIATE")
            if "metadata" not in {row[1] for row in conn.execute("PRAGMA table_info(records)")}:
                conn.execute("ALTER TABLE records ADD COLUMN metadata TEXT")
                snap = read_snap(conn)
                self.chroma.refresh(snap.generation)
                offset = 0
                while snap.collection:
                    page = self.chroma.call(snap.collection, "get", where=visibility(snap.generation),
                                            include=["metadatas"], limit=1000, offset=offset)
                    if not page["ids"]:
                        break
                    conn.executemany("UPDATE records SET metadata = ? WHERE physical = ?", [
                        (json.dumps(decode(m), ensure_ascii=False), p) for p, m in zip(page["ids"], page["metadatas"],
                                                                                       strict=True)])
                    offset += len(page["ids"])
                set_meta(conn, "dirty", "1")  # the next writer removes what the first format left behind
            conn.execute("COMMIT")
        finally:
            try:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            finally:
                conn.close()
                lock.close()

    def _view(self) -> ChromaView:
        self._follow()
        return ChromaView(self, self._conn(), None)

    def _follow(self) -> None:
        """With a shared database: this server's cache at the committed generation (no round trip if it is)."""
        if self.shared is not None:
            self.shared.catch_up(self.shared.ledger.committed()[0])

    def metadata_columns(self, conn: sqlite3.Connection, generation: int) -> Columns:
        """The committed generation's metadata columns, built once per generation (``conn`` in its snapshot)."""
        with self._columns_lock:
            if self._columns is not None and self._columns[0] == generation:
                return self._columns[1]
        columns = build_columns(conn)
        with self._columns_lock:
            self._columns = (generation, columns)
        return columns

    def live_collection(self) -> Any:
        """The Chroma collection holding the committed state (None before the first write)."""
        self._follow()
        snap = read_snap(self._conn())
        self.chroma.refresh(snap.generation)
        return self.chroma.collection(snap.collection) if snap.collection else None

    # --- damaged indexes (stores/chroma/repair.py) ---------------------------------------------------

    # How long a reader waits for the writer lock to rebuild a damaged index before a StoreRecoveringError
    recovery_wait = 30.0

    def _check_on_open(self) -> None:
        """Embedded: probe the live collection if Chroma wrote its HNSW files since kb last found them sound."""
        conn = self._conn()
        seen = damage.fingerprint(self.chroma_dir)
        if seen == damage.remembered_fingerprint(conn):
            return
        snap = read_snap(conn)
        try:
            self.chroma.reopen(snap.generation)  # load the files as they are on disk, not as this process knew them
            problem = damage.probe(self, conn, snap)
        except KBError as exc:  # not a damaged index (a collection deleted outside kb, ...): reads will say so
            log.warning("knowledge bank %s: could not check its Chroma index on open: %s", self.context.kb_id, exc)
            return
        if problem is None:
            if damage.fingerprint(self.chroma_dir) == seen:  # nobody wrote them while we looked
                damage.remember_fingerprint(conn, seen)
            return
        self.recover(problem)

    def recover(self, problem: str) -> None:
        """Rebuild a damaged live collection from kb's copy, under the writer lock (re-probed there: another
        process may have rebuilt it meanwhile). StoreRecoveringError when the lock stays taken."""
        log.warning("knowledge bank %s: %s; rebuilding its Chroma collection from kb's copy", self.context.kb_id,
                    problem)
        try:
            lock, conn = open_writer(self.dir, self._connections.path, self.recovery_wait, self.context.kb_id)
        except WriterBusyError as exc:
            raise StoreRecoveringError(f"knowledge bank {self.context.kb_id}: its Chroma index was damaged by a crash "
                                       "and is being rebuilt; retry in a moment") from exc
        try:
            snap = read_snap(conn)
            self.chroma.reopen(snap.generation)
            if damage.probe(self, conn, snap) is None:
                damage.remember_fingerprint(conn, damage.fingerprint(self.chroma_dir))
                return
            written = damage.rebuild_locked(self, conn, snap)
            self.recovered.append(f"rebuilt the Chroma collection from kb's copy ({written} records) on open: "
                                  f"{problem}")
        finally:
            conn.close()
            lock.close()

    def _healing(self, read: Callable[[], T]) -> T:
        """Embedded: a read that meets a damaged index rebuilds it and reads again (a server: the error says
        to run ``kb repair``)."""
        try:
            return read()
        except DamagedIndexError as exc:
            if self.chroma.embedded is None:
                raise
            self.recover(str(exc))
            return read()

    def get(self, ids: Sequence[str], with_vectors: bool = False) -> list[Record]:
        return self._healing(lambda: super(ChromaStore, self).get(ids, with_vectors))

    def similarity(self, vector: np.ndarray, k: int, flt: Filter | None = None,
                   with_vectors: bool = False) -> list[Hit]:
        return self._healing(lambda: super(ChromaStore, self).similarity(vector, k, flt, with_vectors))

    def keyword(self, query: str, k: int, flt: Filter | None = None) -> list[Hit]:
        return self._healing(lambda: super(ChromaStore, self).keyword(query, k, flt))

    def check_vectors(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        """kb's own copy (what Chroma must give back), or Chroma's vector for records written before it."""
        found: dict[str, np.ndarray] = {}
        for part in chunks(list(ids)):
            found.update((i, np.frombuffer(v, dtype=np.float32)) for i, v in self._conn().execute(
                f"SELECT id, vector FROM records WHERE vector IS NOT NULL AND id IN ({','.join('?' * len(part))})",
                part))
        rest = [i for i in ids if i not in found]
        return found | (super().check_vectors(rest) if rest else {})

    def check(self, full: bool = False, sample: int = 32) -> StoreCheck:
        try:  # kb's copy against what Chroma returns, before any read could heal it
            self._follow()  # with a shared database: probe the committed generation's collection
            conn = self._conn()
            problem = damage.probe(self, conn, read_snap(conn), sample)
        except KBError as exc:
            problem = str(exc)
        report = super().check(full, sample) if problem is None else StoreCheck(
            self.context.kb_id, self.store_type, self.count(), problems=[problem])
        # with a shared database kb's copy is a cache filled from Chroma: it cannot rebuild Chroma, nor need to
        uncopied = 0 if self.shared is not None else int(
            self._conn().execute("SELECT COUNT(*) FROM records WHERE vector IS NULL").fetchone()[0])
        report.checked["without_kb_copy"] = uncopied
        report.repaired += self.recovered
        if uncopied and report.ok:
            report.repaired.append(f"{uncopied} records were written before kb kept its own copy: `kb repair` "
                                   "copies them now, so that a damaged index can be rebuilt later")
        return report

    def repair(self) -> StoreCheck:
        """Rebuild the live collection from kb's copy when the check finds it damaged; fill kb's copy for records
        written before it existed."""
        before = self.check()
        if self.shared is not None or (before.ok and not before.checked.get("without_kb_copy")):
            return before
        done = damage.repair(self, rebuild=not before.ok, copy=bool(before.checked.get("without_kb_copy")),
                             why=before.problems[0] if before.problems else "")
        after = self.check()
        after.repaired = done + after.repaired
        return after

    # --- writes -----------------------------------------------------------------------------------

    def begin(self, timeout: float = 30.0) -> ChromaTransaction:
        if self.shared is not None:
            shared, cache, snap = self.shared.begin(timeout)
            return ChromaTransaction(self, cache, shared.write, snap, shared)
        lock, conn = open_writer(self.dir, self._connections.path, timeout, self.context.kb_id)
        try:
            snap = read_snap(conn)
            self.chroma.refresh(snap.generation)
            if meta_value(conn, "dirty") == "1":
                try:
                    self._clean_leftovers(snap)  # a writer died mid-transaction
                except DamagedIndexError:
                    if self.chroma.embedded is None:
                        raise
                    damage.rebuild_locked(self, conn, snap)  # a fresh collection: the leftovers go with the old one
                    set_meta(conn, "dirty", "1")
            else:
                set_meta(conn, "dirty", "1")  # durable before the first Chroma write of this transaction
            conn.execute("BEGIN IMMEDIATE")
            return ChromaTransaction(self, conn, lock, read_snap(conn))
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            conn.close()
            lock.close()
            raise

    def _clean_leftovers(self, snap: Snap) -> None:
        """Undo a dead writer: its records, its deletion marks, the collection it may have switched to."""
        pending = f"{self.collection_base}-g{snap.generation + 1}"
        if pending != snap.collection:
            self.chroma.delete_collection(pending)
        if not snap.collection:
            return
        stale = self.chroma.call(snap.collection, "get", where={"$or": [
            {GEN: {"$gt": snap.generation}},
            {DEL: {"$lt": snap.generation}},  # retired before the previous commit (an unfinished vacuum)
        ]}, include=[])["ids"]
        for part in chunks(stale):
            self.chroma.call(snap.collection, "delete", ids=part)
        marked = self.chroma.call(snap.collection, "get", where={"$and": [
            {DEL: {"$gt": snap.generation}}, {DEL: {"$lt": NEVER}}]}, include=[])["ids"]
        for part in chunks(marked):
            self.chroma.call(snap.collection, "update", ids=part, metadatas=[{DEL: NEVER}] * len(part))

    def langchain_vectorstore(self, core: Any, tx: StoreTransaction | None, **kwargs: Any) -> Any:
        if kwargs:
            raise InvalidInputError(f"unexpected vector store options: {', '.join(sorted(kwargs))}")
        return KBChromaVectorStore(core, tx)

    def close(self) -> None:
        self._connections.close()

    def destroy(self) -> None:
        conn = self._conn()
        snap = read_snap(conn)
        names = {snap.collection, f"{self.collection_base}-g{snap.generation + 1}",
                 *(name for name, _ in json.loads(meta_value(conn, "drops")))} - {""}
        if self.shared is not None:
            names = self.shared.collections()
        try:
            for name in sorted(names):
                self.chroma.delete_collection(name)
        except KBError as exc:  # the KB goes anyway; say what is left on the server
            log.warning("knowledge bank %s deleted, but Chroma collections %s at %s remain: %s",
                        self.context.kb_id, sorted(names), self.chroma.where, exc)
        if self.shared is not None:
            self.shared.destroy()
        self.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        self.chroma.forget_generation()

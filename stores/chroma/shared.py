"""A knowledge bank on a Chroma server, written and searched by several kb servers (issue 28).

With a database URL (``KB_DATABASE_URL``), the commit point of a Chroma-server knowledge bank moves into the
shared database, as Elasticsearch's does: the committed generation, the dimension and the id map in
``DatabaseLedger`` (``stores/commit_point/database.py``), the writer's lease with its epoch, the compare-and-set
commit that fences off a writer whose lease was taken over. Its notes are in ``kb_meta``: the live collection,
the collections switched away from (``drops``), ``dirty``, ``collection_base``, ``vacuumed``, ``reset`` and
``log_floor`` (below).

What kb keeps beside Chroma on one machine (the metadata copy that answers filters, kb's BM25 keyword index, a
copy of every record: ``chroma-meta.sqlite``) becomes a **cache** in each server's knowledge bank folder,
derived from a committed generation (its ``generation`` meta). The committing writer adds to ``kb_changes``,
in the commit's own transaction, one row per id its generation changed: the physical record now live (None:
deleted) and the older one it retired. A server whose watch (LISTEN/NOTIFY) shows the generation past its
cache's catches up before it reads: it reads the committed generation's changes since its own, fetches
those records (text and metadata) from Chroma by physical id, and applies them to its cache in one SQLite
transaction. It rebuilds the cache from the whole id map instead when the log no longer reaches back to its
generation (``log_floor``: the log keeps ``KEEP_GENERATIONS``), when a generation switched to a fresh
collection since (``reset``: a clear, or the first write into an empty knowledge bank), or when the cache
belongs to another knowledge bank of the same id (``collection_base`` differs). A search reads only the cache
and Chroma: the committed generation comes from the watch, so no database round trip unless it moved.

The catch-up reads the database without a snapshot transaction (SQLite has none across statements): it
reads the generation first and again last, and starts over if a commit came between. A record Chroma no
longer has (a later commit retired it and the one after vacuumed it) likewise means the generation moved on:
it starts over at the newer one.

The writer works on its own server's cache (caught up under the lease, so exact at C) inside one SQLite
transaction, as on one machine, and Chroma as before (``stores/chroma/writer.py``). The database commit is the
commit point; the cache's SQLite COMMIT follows it, and if it fails or the process dies in between, the cache
is merely behind and catches up like any other server's. The vacuum (deleting from Chroma what a generation
retired, once no reader can see it) reads what to delete from the log (``vacuumed``: the generation up to
which it is done), since the writer's server did not necessarily write those generations.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, delete, insert, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from kb_base.errors import KBError, StoreError, StoreUnavailableError
from stores.chroma.codec import decode, visible
from stores.chroma.reader import Snap, chunks, meta_value, read_snap, set_meta
from stores.commit_point.database import DatabaseLedger, DatabaseWrite
from stores.commit_point.schema import kb_changes, kb_commit, kb_meta, kb_records
from stores.generations import LedgerNotes
from stores.sqlite.meta import connect_durable

if TYPE_CHECKING:
    from stores.chroma.store import ChromaStore

log = logging.getLogger(__name__)

KEEP_GENERATIONS = 1000  # of change log: a cache further behind rebuilds from the whole id map
_ATTEMPTS = 20  # catch-up restarts when commits keep coming while it reads


def _order(row: tuple[str, str, int]) -> tuple[int, str]:
    """The order a cache gives its records' rowids: by the generation that wrote them, then id, however it got
    there (caught up one generation at a time, several at once, or rebuilt), so that every server breaks ties
    between equal keyword scores (by rowid) the same way."""
    return row[2], row[0]


@dataclass
class Plan:
    """What a cache at ``since`` needs to reach ``generation``: ``rows`` (id, physical, gen) to (re)write,
    ``gone`` ids to remove; ``rebuild``: replace everything with ``rows``."""

    generation: int
    dimension: int | None
    collection: str
    rebuild: bool
    rows: list[tuple[str, str, int]] = field(default_factory=list)
    gone: list[str] = field(default_factory=list)


@dataclass
class SharedWrite:
    """One writer's view of the shared side: its lease and commit point, the notes it read under the lease,
    and the change log of its generation (id -> [older physical it retired, physical it added])."""

    write: DatabaseWrite
    drops: list[tuple[str, int]]
    vacuumed: int
    changes: dict[str, list[str | None]] = field(default_factory=dict)
    reset: bool = False

    def retired(self, record_id: str, physical: str) -> None:
        self.changes.setdefault(record_id, [None, None])[0] = physical

    def unadded(self, record_id: str) -> None:
        """A record this generation wrote and then replaced or deleted again."""
        entry = self.changes.get(record_id)
        if entry is not None:
            entry[1] = None

    def added(self, record_id: str, physical: str) -> None:
        self.changes.setdefault(record_id, [None, None])[1] = physical

    def switched(self) -> None:
        """A fresh collection: the old one goes as a whole, with everything retired in it."""
        self.changes.clear()
        self.reset = True


class SharedChroma:
    """The shared-database side of one Chroma-server knowledge bank, as one process sees it."""

    def __init__(self, store: ChromaStore, database_url: str) -> None:
        self.store, self.kb_id = store, store.context.kb_id
        self.ledger = DatabaseLedger(database_url, self.kb_id)
        self._catching_up = threading.Lock()
        try:
            self.collection_base = self._collection_base()
        except SQLAlchemyError as exc:
            raise self.ledger._unavailable(exc) from exc

    # --- notes --------------------------------------------------------------------------------------

    def _collection_base(self) -> str:
        """The knowledge bank's collection names' stem, made once by whichever server opens it first. Read on the
        pre-pinged write pool, as every read here: opening a knowledge bank must not fail on a connection a
        database restart left dead in the read pool."""
        found = self._note("collection_base")
        if found is not None:
            return found
        safe = re.sub(r"[^A-Za-z0-9._-]", "-", self.kb_id)[:48].strip("-._") or "kb"
        try:
            with self.ledger.engine.begin() as conn:
                conn.execute(insert(kb_meta).values(kb=self.kb_id, key="collection_base",
                                                    value=f"kb-{safe}-{secrets.token_hex(4)}"))
        except IntegrityError:
            pass  # another server made it first: theirs stands
        return str(self._note("collection_base"))

    def _note(self, key: str) -> str | None:
        with self.ledger.engine.connect() as conn:
            return self._notes(conn).get(key)

    def _notes(self, conn: Connection) -> dict[str, str]:
        return dict(conn.execute(select(kb_meta.c.key, kb_meta.c.value).where(kb_meta.c.kb == self.kb_id)).all())

    def own_cache(self, conn: sqlite3.Connection) -> None:
        """Empty the cache if it was built for another knowledge bank of this id (deleted and made again)."""
        if meta_value(conn, "collection_base") == self.collection_base:
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            self._empty(conn)
            for key, value in (("generation", "0"), ("dimension", ""), ("collection", ""),
                               ("collection_base", self.collection_base)):
                set_meta(conn, key, value)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _empty(self, conn: sqlite3.Connection) -> None:
        conn.execute("DELETE FROM records")
        conn.execute("DELETE FROM retired")
        self.store.keywords.clear(conn)

    # --- readers: the cache follows the committed generation ---------------------------------------

    def catch_up(self, target: int | None = None) -> None:
        """Bring this server's cache to the committed generation (``target``: the watch's, no round trip when the
        cache has it already; None: read it from the database, as a writer under its lease must)."""
        conn = self.store._conn()
        if target is not None and read_snap(conn).generation >= target:
            return
        with self._catching_up:  # one catch-up per process at a time; the others find it done
            for _ in range(_ATTEMPTS):
                since = read_snap(conn).generation
                if target is not None and since >= target:
                    return
                plan = self._plan(since)
                if plan is None or plan.generation <= since:
                    return
                fetched = self._fetch(plan)
                if fetched is None:
                    continue  # a commit came meanwhile: start over at the newer generation
                self._apply(conn, plan, fetched)
                return
        raise StoreUnavailableError(f"knowledge bank {self.kb_id}: its cache could not catch up with the committed "
                                    f"generation: commits kept coming ({_ATTEMPTS} attempts); retry")

    def _read_generation(self, conn: Connection) -> tuple[int, int | None]:
        row = conn.execute(select(kb_commit.c.generation, kb_commit.c.dimension)
                           .where(kb_commit.c.kb == self.kb_id)).one()
        return int(row[0]), (None if row[1] is None else int(row[1]))

    def _plan(self, since: int) -> Plan | None:
        """The changes from ``since`` to the committed generation, read consistently (None: read again)."""
        try:
            with self.ledger.engine.connect() as conn:
                generation, dimension = self._read_generation(conn)
                if generation <= since:
                    return Plan(generation, dimension, "", False)
                notes = self._notes(conn)
                rebuild = (since < int(notes.get("log_floor", "0")) or since < int(notes.get("reset", "0")))
                plan = Plan(generation, dimension, notes.get("collection", ""), rebuild)
                if rebuild:
                    plan.rows = sorted(((r[0], r[1], int(r[2])) for r in conn.execute(
                        select(kb_records.c.id, kb_records.c.physical, kb_records.c.gen)
                        .where(kb_records.c.kb == self.kb_id))), key=_order)
                else:
                    latest: dict[str, tuple[str | None, int]] = {}
                    for record_id, added, gen in conn.execute(
                            select(kb_changes.c.id, kb_changes.c.added, kb_changes.c.gen)
                            .where(kb_changes.c.kb == self.kb_id, kb_changes.c.gen > since,
                                   kb_changes.c.gen <= generation).order_by(kb_changes.c.gen)):
                        latest[record_id] = (added, int(gen))
                    plan.rows = sorted(((i, p, g) for i, (p, g) in latest.items() if p is not None), key=_order)
                    plan.gone = [i for i, (p, _) in latest.items() if p is None]
                if self._read_generation(conn)[0] != generation:
                    return None  # a commit came between the reads
                return plan
        except SQLAlchemyError as exc:
            raise self.ledger._unavailable(exc) from exc

    def _fetch(self, plan: Plan) -> dict[str, tuple[str, str]] | None:
        """physical -> (text, metadata JSON) of the plan's records, from Chroma; None when some are gone (the
        generation moved on and vacuumed them, or switched collections)."""
        found: dict[str, tuple[str, str]] = {}
        wanted = [physical for _, physical, _ in plan.rows]
        try:
            for part in chunks(wanted):
                page = self.store.chroma.call(plan.collection, "get", ids=part, include=["documents", "metadatas"])
                for physical, metadata, text in zip(page["ids"], page["metadatas"], page["documents"], strict=True):
                    if metadata and visible(metadata, plan.generation):
                        found[physical] = (text or "", json.dumps(decode(metadata), ensure_ascii=False))
        except KBError:
            if self._moved(plan.generation):
                return None
            raise
        if len(found) < len(set(wanted)):
            if self._moved(plan.generation):
                return None
            raise StoreError(f"knowledge bank {self.kb_id}: the Chroma collection {plan.collection} lacks "
                             f"{len(set(wanted)) - len(found)} records of committed generation {plan.generation} "
                             "(deleted outside kb?)")
        return found

    def _moved(self, generation: int) -> bool:
        try:
            with self.ledger.engine.connect() as conn:
                return self._read_generation(conn)[0] != generation
        except SQLAlchemyError as exc:
            raise self.ledger._unavailable(exc) from exc

    def _apply(self, conn: sqlite3.Connection, plan: Plan, fetched: dict[str, tuple[str, str]]) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            since = read_snap(conn).generation
            if since >= plan.generation:  # another process sharing this folder caught up first
                conn.execute("ROLLBACK")
                return
            if plan.rebuild:
                self._empty(conn)
            else:
                changed = [i for i, _, _ in plan.rows] + plan.gone
                rowids: list[int] = []
                for part in chunks(changed):
                    rowids += [r[0] for r in conn.execute(
                        f"SELECT rowid FROM records WHERE id IN ({','.join('?' * len(part))})", part)]
                self.store.keywords.remove(conn, rowids)
                conn.executemany("DELETE FROM records WHERE rowid = ?", [(r,) for r in rowids])
            top = int(conn.execute("SELECT COALESCE(MAX(rowid), 0) FROM records").fetchone()[0])
            first = max(top, self.store.keywords.highest_tombstone(conn)) + 1  # rowids are never reused
            rows = [(first + n, record_id, physical, gen, fetched[physical][1], fetched[physical][0])
                    for n, (record_id, physical, gen) in enumerate(plan.rows)]
            conn.executemany("INSERT INTO records (rowid, id, physical, gen, metadata, text) VALUES (?, ?, ?, ?, ?, ?)",
                             rows)
            self.store.keywords.add(conn, [(row[0], row[5]) for row in rows])
            set_meta(conn, "generation", str(plan.generation))
            set_meta(conn, "dimension", "" if plan.dimension is None else str(plan.dimension))
            set_meta(conn, "collection", plan.collection)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        log.info("knowledge bank %s: this server's cache moved from generation %d to %d (%s, %d records)",
                 self.kb_id, since, plan.generation, "rebuilt" if plan.rebuild else "caught up", len(plan.rows))

    def adopt(self, conn: sqlite3.Connection, shared: SharedWrite, generation: int, dimension: int | None,
              collection: str) -> None:
        """After the commit point: this server's cache takes the writer's generation from its own open SQLite
        transaction, in the order every other server's catch-up gives it (``_order``): as written when it wrote
        its records in id order (one upsert, which sorts them), else applied again in that order (no Chroma
        fetch either way)."""
        ids = [r[0] for r in conn.execute("SELECT id FROM records WHERE gen = ? ORDER BY rowid", (generation,))]
        if ids == sorted(ids):
            set_meta(conn, "generation", str(generation))
            set_meta(conn, "dimension", "" if dimension is None else str(dimension))
            set_meta(conn, "collection", collection)
            conn.execute("COMMIT")
            return
        written = {r[1]: (r[3] or "", r[2] or "{}") for r in conn.execute(
            "SELECT id, physical, metadata, text FROM records WHERE gen = ?", (generation,))}
        rows = sorted(((i, a, generation) for i, (_, a) in shared.changes.items() if a is not None), key=_order)
        gone = [i for i, (_, a) in shared.changes.items() if a is None]
        conn.execute("ROLLBACK")
        self._apply(conn, Plan(generation, dimension, collection, shared.reset, rows, gone), written)

    # --- the writer ------------------------------------------------------------------------------

    def prepare(self, notes: LedgerNotes) -> None:
        """Under the new lease: undo a dead writer's leftovers, and mark the knowledge bank dirty before any write."""
        if self._note("dirty") == "1":  # on the pre-pinged pool (``notes.meta`` reads on the read pool)
            snap = Snap(notes.committed, self._note("collection") or "", None)
            self.store._clean_leftovers(snap)
        else:
            notes.set_meta("dirty", "1")

    def begin(self, timeout: float) -> tuple[SharedWrite, sqlite3.Connection, Snap]:
        """Take the lease, bring this server's cache to C under it, and open the cache's write transaction."""
        write = self.ledger.begin(timeout, prepare=self.prepare)
        conn: sqlite3.Connection | None = None
        try:
            self.catch_up()
            try:
                with self.ledger.engine.connect() as db:
                    notes = self._notes(db)
            except SQLAlchemyError as exc:
                raise self.ledger._unavailable(exc) from exc
            conn = connect_durable(self.store._connections.path)
            conn.execute("BEGIN IMMEDIATE")
            snap = read_snap(conn)
            if snap.generation != write.committed:
                raise StoreError(f"knowledge bank {self.kb_id}: this server's cache is at generation "
                                 f"{snap.generation}, the database at {write.committed}; no write was made")
            drops = [(str(name), int(gen)) for name, gen in json.loads(notes.get("drops", "[]"))]
            return SharedWrite(write, drops, int(notes.get("vacuumed", "0"))), conn, snap
        except BaseException:
            if conn is not None:
                conn.close()  # rolls back
            write.close()
            raise

    def vacuum(self, shared: SharedWrite, collection: str, committed: int) -> int:
        """Delete from Chroma what generations up to ``committed`` retired (no reader can see it any more);
        returns the generation the vacuum is done to (the old mark when Chroma refused: a later commit retries)."""
        if committed <= shared.vacuumed:
            return shared.vacuumed
        try:
            with self.ledger.engine.connect() as conn:
                stale = list(conn.execute(select(kb_changes.c.retired).where(
                    kb_changes.c.kb == self.kb_id, kb_changes.c.gen > shared.vacuumed,
                    kb_changes.c.gen <= committed, kb_changes.c.retired.is_not(None))).scalars())
        except SQLAlchemyError as exc:
            raise self.ledger._unavailable(exc) from exc
        try:
            for part in chunks(stale):
                shared.write.fence()
                self.store.chroma.call(collection, "delete", ids=part)
        except KBError as exc:  # invisible garbage never fails a commit; the next one tries again
            log.warning("could not delete %d replaced Chroma records: %s", len(stale), exc)
            return shared.vacuumed
        return committed

    def commit_statements(self, shared: SharedWrite, generation: int, collection: str, drops: Iterable[list[Any]],
                          vacuumed: int) -> None:
        """Queue the id map, the change log and the notes for the commit's own transaction."""
        kb = self.kb_id
        changes = dict(shared.changes)
        notes = {"collection": collection, "drops": json.dumps(list(drops)), "dirty": "0", "vacuumed": str(vacuumed)}
        prune = min(vacuumed, generation - KEEP_GENERATIONS)
        if shared.reset:
            notes["reset"] = str(generation)
            prune = generation - 1  # every cache older than this generation rebuilds anyway

        def statements(conn: Connection) -> None:
            if shared.reset:
                conn.execute(delete(kb_records).where(kb_records.c.kb == kb))
            else:
                ids = list(changes)
                for part in chunks(ids):
                    conn.execute(delete(kb_records).where(kb_records.c.kb == kb, kb_records.c.id.in_(part)))
            added = [{"kb": kb, "id": i, "physical": a, "gen": generation} for i, (_, a) in changes.items() if a]
            for part in chunks(added):
                conn.execute(insert(kb_records), part)
            log_rows = [{"kb": kb, "gen": generation, "id": i, "added": a, "retired": r}
                        for i, (r, a) in changes.items() if a is not None or r is not None]
            for part in chunks(log_rows):
                conn.execute(insert(kb_changes), part)
            if prune > 0:
                conn.execute(delete(kb_changes).where(kb_changes.c.kb == kb, kb_changes.c.gen <= prune))
                floor = int(self._notes(conn).get("log_floor", "0"))
                notes["log_floor"] = str(max(floor, prune))
            for key, value in notes.items():
                if not conn.execute(update(kb_meta).where(kb_meta.c.kb == kb, kb_meta.c.key == key)
                                    .values(value=value)).rowcount:
                    conn.execute(insert(kb_meta).values(kb=kb, key=key, value=value))

        shared.write.in_commit.append(statements)

    def set_clean(self) -> None:
        """A rolled-back writer removed everything it wrote from Chroma: the next writer need not clean."""
        self.ledger.set_meta("dirty", "0")

    # --- the whole knowledge bank ----------------------------------------------------------------

    def collections(self) -> set[str]:
        """Every Chroma collection the knowledge bank may have: live, pending, switched away from."""
        with self.ledger.engine.connect() as conn:
            generation, _ = self._read_generation(conn)
            notes = self._notes(conn)
        drops = {str(name) for name, _ in json.loads(notes.get("drops", "[]"))}
        return {notes.get("collection", ""), f"{self.collection_base}-g{generation + 1}", *drops} - {""}

    def destroy(self) -> None:
        with self.ledger.engine.begin() as conn:
            conn.execute(delete(kb_changes).where(kb_changes.c.kb == self.kb_id))
        self.ledger.destroy()

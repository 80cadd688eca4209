"""The commit point of a remote-store knowledge bank in a shared database (issue 28): ``DatabaseLedger``.

The same interface as the KB folder's ``GenerationLedger`` (``stores.generations.CommitPoint``), for
Elasticsearch and Azure AI Search, so several kb servers can write one knowledge bank. The record-level
generation scheme is unchanged; what moves is where C and the id map live, and the lock:

- The writer takes the knowledge bank's lease (``stores/commit_point/lease.py``) instead of the flock; taking it
  bumps the epoch. ``prepare`` then removes a dead writer's leftovers above C, as the next writer does today.
- The write keeps its id-map changes in memory (ids retired, ids added at G = C + 1) rather than in an open
  database transaction: a transaction held for a whole ingest would hold row locks a paused writer never lets
  go of, and its successor would wait on them.
- The commit is one short transaction: first the compare-and-set
  ``UPDATE kb_commit SET generation = G WHERE kb = :kb AND epoch = :epoch AND generation = G - 1`` (its row
  lock also orders two commits), then the id-map changes, then COMMIT: the commit point. Zero rows means a
  successor took the lease: everything rolls back and ``WriterFencedError`` is raised.
- A fenced writer must not clean the store (what lies above its C may be its successor's work):
  ``holds_lock`` proves the lease by renewing it, and the drivers clean only when it says so.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from sqlalchemy import Connection, Engine, delete, insert, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from kb_base.errors import StoreUnavailableError, WriterFencedError
from stores.base import fault_point
from stores.commit_point.lease import Lease
from stores.commit_point.schema import (
    engine_for,
    kb_commit,
    kb_lease,
    kb_meta,
    kb_records,
    missing_tables,
    read_engine_for,
)
from stores.commit_point.watch import notify_commit, watch_for
from stores.generations import CommitPoint, GenerationLedger, LedgerNotes

log = logging.getLogger(__name__)
_CHUNK = 500  # ids per IN (...) query


def open_ledger(folder: Path, database: str, kb_id: str, database_url: str | None) -> CommitPoint:
    """The KB folder's SQLite ledger without a database URL (exactly as before issue 28), else the shared one
    (seeded from the folder's ledger the first time, so an existing knowledge bank keeps its contents)."""
    if not database_url:
        return GenerationLedger(folder, database, kb_id)
    return DatabaseLedger(database_url, kb_id, seed=folder / database)


class DatabaseLedger:
    """One knowledge bank's commit point in the shared database."""

    def __init__(self, url: str, kb_id: str, seed: Path | None = None, lease_seconds: float | None = None) -> None:
        self.kb_id, self.lease_seconds = kb_id, lease_seconds
        self._last_committed: tuple[int, int | None] | None = None
        self.engine = engine_for(url)
        self.reads = read_engine_for(url)
        self.watch = watch_for(self.reads)  # committed generations cached in this process (PostgreSQL)
        try:
            self._ensure_rows(seed)
        except SQLAlchemyError as exc:
            missing = _missing_tables(self.engine)
            if missing:
                raise StoreUnavailableError(
                    f"knowledge bank {kb_id}: the database {self.engine.url.render_as_string(hide_password=True)} "
                    f"has no commit-point tables ({', '.join(missing)}): run `kb db upgrade --database-url ...` "
                    "on it once, before the servers") from exc
            raise self._unavailable(exc) from exc

    def _unavailable(self, exc: BaseException) -> StoreUnavailableError:
        return StoreUnavailableError(f"knowledge bank {self.kb_id}: the commit-point database is unavailable: {exc}")

    def _ensure_rows(self, seed: Path | None) -> None:
        with self.engine.connect() as conn:
            if conn.execute(select(kb_commit.c.kb).where(kb_commit.c.kb == self.kb_id)).first() is not None:
                return
        generation, dim, records, notes = _read_sqlite_ledger(seed) if seed is not None else (0, None, [], {})
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(kb_commit).values(kb=self.kb_id, generation=generation, dimension=dim, epoch=0))
                conn.execute(insert(kb_lease).values(kb=self.kb_id, holder=None, expires_at=None, epoch=0))
                for start in range(0, len(records), _CHUNK):
                    conn.execute(insert(kb_records), [{"kb": self.kb_id, "id": i, "physical": p, "gen": g}
                                                      for i, p, g in records[start : start + _CHUNK]])
                if notes:
                    conn.execute(insert(kb_meta), [{"kb": self.kb_id, "key": k, "value": v} for k, v in notes.items()])
        except IntegrityError:
            pass  # another server created the rows first: theirs stand
        if records or generation:
            log.info("knowledge bank %s: commit point moved from %s into the database (generation %d, %d ids)",
                     self.kb_id, seed, generation, len(records))

    def committed(self) -> tuple[int, int | None]:
        """The committed generation and dimension, for a reader: from this process's cache while its listener
        is fresh (no round trip; ``stores/commit_point/watch.py``), else from the database. While the database
        cannot be reached, the last ones seen (readers keep answering from a whole generation): no writer can
        commit meanwhile, since a commit needs the database, so they are stale only by the commits made between
        that read and the outage."""
        cached = self.watch.cached(self.kb_id)
        if cached is not None:
            self._last_committed = cached
            return cached
        session = self.watch.session()
        try:
            value = self._read_committed()
        except (SQLAlchemyError, OSError) as exc:  # OSError: a socket error the driver let through unwrapped
            if self._last_committed is not None:
                log.warning("knowledge bank %s: the commit-point database is unavailable (%s); answering from "
                            "generation %d, the last read", self.kb_id, type(exc).__name__, self._last_committed[0])
                return self._last_committed
            raise self._unavailable(exc) from exc
        self.watch.store(self.kb_id, value, session)
        self._last_committed = value
        return value

    def _read_committed(self, engine: Engine | None = None) -> tuple[int, int | None]:
        """From the database, always (what a writer under its lease must use, on the pre-pinged write pool)."""
        with (engine or self.reads).connect() as conn:
            row = conn.execute(select(kb_commit.c.generation, kb_commit.c.dimension)
                               .where(kb_commit.c.kb == self.kb_id)).one()
        return int(row[0]), (int(row[1]) if row[1] is not None else None)

    def ids(self) -> list[str]:
        with self.reads.connect() as conn:
            return list(conn.execute(select(kb_records.c.id).where(kb_records.c.kb == self.kb_id)).scalars())

    def meta(self, key: str, engine: Engine | None = None) -> str | None:
        with (engine or self.reads).connect() as conn:
            return conn.execute(select(kb_meta.c.value)
                                .where(kb_meta.c.kb == self.kb_id, kb_meta.c.key == key)).scalar_one_or_none()

    def set_meta(self, key: str, value: str) -> None:
        with self.engine.begin() as conn:
            done = conn.execute(update(kb_meta).where(kb_meta.c.kb == self.kb_id, kb_meta.c.key == key)
                                .values(value=value)).rowcount
            if not done:
                conn.execute(insert(kb_meta).values(kb=self.kb_id, key=key, value=value))

    def begin(self, timeout: float, prepare: Callable[[LedgerNotes], None] | None = None) -> DatabaseWrite:
        """Take the lease (a new epoch), let ``prepare`` clean up under it, and open the write at C + 1."""
        lease = Lease(self.engine, self.kb_id, self.lease_seconds)
        lease.acquire(timeout)
        try:
            # never the cache: cleaning up above a stale C would remove a committed generation
            if prepare is not None:
                prepare(_DatabaseNotes(self, self._read_committed(self.engine)[0]))
            generation, dim = self._read_committed(self.engine)
        except SQLAlchemyError as exc:
            lease.release()
            raise self._unavailable(exc) from exc
        except BaseException:
            lease.release()
            raise
        return DatabaseWrite(self, lease, generation, dim)

    def close(self) -> None:
        """Nothing to close per knowledge bank: the engine's pool is shared by every one on this database."""

    def destroy(self) -> None:
        """Forget the knowledge bank: its commit point, id map, lease and notes."""
        with self.engine.begin() as conn:
            for table in (kb_records, kb_meta, kb_lease, kb_commit):
                conn.execute(delete(table).where(table.c.kb == self.kb_id))
            notify_commit(conn, self.kb_id, None, None)  # every server's cache forgets it
        self.watch.forget(self.kb_id)


class _DatabaseNotes:
    def __init__(self, ledger: DatabaseLedger, committed: int) -> None:
        self.ledger, self.committed = ledger, committed

    def meta(self, key: str) -> str | None:
        # the writer's pre-pinged pool: the read pool's first read after a database restart fails by design,
        # and a writer's cleanup must not turn that into a 503
        return self.ledger.meta(key, self.ledger.engine)

    def set_meta(self, key: str, value: str) -> None:
        self.ledger.set_meta(key, value)


class DatabaseWrite:
    """One write at generation committed + 1 under the lease; its id-map changes wait in memory for the commit."""

    def __init__(self, ledger: DatabaseLedger, lease: Lease, committed: int, dim: int | None) -> None:
        self.ledger, self.lease = ledger, lease
        self.committed, self.generation, self.dim = committed, committed + 1, dim
        self.done = False  # past the commit point: a failure from here on must undo nothing
        self._added: dict[str, str] = {}  # id -> physical id written by this generation
        self._removed: set[str] = set()  # committed ids this write retired
        self._outcome_unknown = False  # the COMMIT failed in flight: it may or may not have happened
        # more statements for the commit's own transaction, after the compare-and-set (a driver's notes and change
        # log: Chroma's, stores/chroma/shared.py), so that they commit exactly when the generation does
        self.in_commit: list[Callable[[Connection], None]] = []

    def _committed_rows(self, ids: Sequence[str]) -> list[tuple[str, str]]:
        rows: list[tuple[str, str]] = []
        with self.ledger.reads.connect() as conn:
            for start in range(0, len(ids), _CHUNK):
                rows += [(r[0], r[1]) for r in conn.execute(
                    select(kb_records.c.id, kb_records.c.physical)
                    .where(kb_records.c.kb == self.ledger.kb_id, kb_records.c.id.in_(ids[start : start + _CHUNK])))]
        return rows

    def retire(self, ids: Sequence[str]) -> tuple[list[str], list[str]]:
        """Drop ``ids`` from the id map: (physical ids this generation wrote, older physical ids to mark).
        Every store write starts here, so this is also where a writer that lost its lease stops."""
        self.fence()
        own = [self._added.pop(i) for i in ids if i in self._added]
        lookup = [i for i in ids if i not in self._removed]
        rows = self._committed_rows(lookup) if lookup else []
        self._removed.update(i for i, _ in rows)
        return own, [physical for _, physical in rows]

    def add(self, pairs: Iterable[tuple[str, str]], dim: int | None = None) -> None:
        for doc_id, physical in pairs:
            self._added[doc_id] = physical
        if dim is not None and self.dim is None:
            self.set_dimension(dim)

    def all_ids(self) -> list[str]:
        with self.ledger.reads.connect() as conn:
            committed = conn.execute(select(kb_records.c.id).where(kb_records.c.kb == self.ledger.kb_id)).scalars()
            ids = [i for i in committed if i not in self._removed and i not in self._added]
        return ids + list(self._added)

    def set_dimension(self, dim: int) -> None:
        self.dim = dim

    def fence(self) -> None:
        self.lease.check()

    def commit(self) -> None:
        kb = self.ledger.kb_id
        try:
            with self.ledger.engine.connect() as conn:
                with conn.begin():
                    matched = conn.execute(
                        update(kb_commit)
                        .where(kb_commit.c.kb == kb, kb_commit.c.epoch == self.lease.epoch,
                               kb_commit.c.generation == self.generation - 1)
                        .values(generation=self.generation, dimension=self.dim)).rowcount
                    if matched != 1:
                        self.lease.lost = True
                        raise WriterFencedError(f"knowledge bank {kb}: another writer took this writer's lease over "
                                                f"(epoch {self.lease.epoch} is no longer current); generation "
                                                f"{self.generation} was not committed, the successor's work stands")
                    removed = sorted(self._removed)
                    for start in range(0, len(removed), _CHUNK):
                        conn.execute(delete(kb_records).where(kb_records.c.kb == kb,
                                                              kb_records.c.id.in_(removed[start : start + _CHUNK])))
                    added = [{"kb": kb, "id": i, "physical": p, "gen": self.generation} for i, p in self._added.items()]
                    for start in range(0, len(added), _CHUNK):
                        conn.execute(insert(kb_records), added[start : start + _CHUNK])
                    for statements in self.in_commit:
                        statements(conn)
                    notify_commit(conn, kb, self.generation, self.dim)  # sent by the COMMIT, if it happens
                    fault_point("before_sqlite_commit")
                    self._outcome_unknown = True  # until COMMIT answers
                # the COMMIT above is the commit point
        except SQLAlchemyError as exc:
            if self._outcome_unknown and self._committed_after_all():
                self._outcome_unknown = False
            else:
                raise self.ledger._unavailable(exc) from exc
        self._outcome_unknown = False
        self.done = True
        self.ledger.watch.saw(kb, (self.generation, self.dim))  # this server reads its own write at once
        fault_point("after_sqlite_commit")

    def _committed_after_all(self) -> bool:
        """After a COMMIT that failed in flight: did it happen? (False also when the database cannot say.)"""
        try:
            with self.ledger.engine.connect() as conn:
                row = conn.execute(select(kb_commit.c.generation, kb_commit.c.epoch)
                                   .where(kb_commit.c.kb == self.ledger.kb_id)).one()
        except SQLAlchemyError:
            return False
        if int(row[1]) == self.lease.epoch:
            self._outcome_unknown = False  # the database answered: whichever way, we know now
        return int(row[0]) == self.generation and int(row[1]) == self.lease.epoch

    def rollback(self) -> None:
        self._added.clear()
        self._removed.clear()

    def holds_lock(self) -> bool:
        """True only when this writer provably still holds the lease and knows the outcome of its commit: then it
        may clean the store above its C. Otherwise the next lease holder cleans."""
        return not self._outcome_unknown and self.lease.holds()

    def set_meta(self, key: str, value: str) -> None:
        self.ledger.set_meta(key, value)

    def close(self) -> None:
        self.lease.release()


def _missing_tables(engine: Engine) -> list[str]:
    try:
        return missing_tables(engine)
    except SQLAlchemyError:
        return []  # the database cannot be asked: it is unavailable, which the caller says


def _read_sqlite_ledger(path: Path) -> tuple[int, int | None, list[tuple[str, str, int]], dict[str, str]]:
    """(generation, dimension, id map, other notes) of a KB folder's SQLite ledger; an empty one if none."""
    if not path.exists():
        return 0, None, [], {}
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        meta = dict(conn.execute("SELECT key, value FROM meta"))
        records = [(r[0], r[1], int(r[2])) for r in conn.execute("SELECT id, physical, gen FROM records")]
    finally:
        conn.close()
    generation = int(meta.pop("generation", "0"))
    dimension = meta.pop("dimension", "")
    return generation, (int(dimension) if dimension else None), records, meta

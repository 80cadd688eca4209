"""The generation scheme: atomic writers on stores that have no multi-document transactions.

Chroma, Elasticsearch and Azure AI Search share it:

- Every physical record in the remote store carries the generation that wrote it (``kb_gen``) and the
  one that retired it (``kb_del``, ``NEVER`` while live). The state at generation C is the records with
  ``kb_gen <= C < kb_del``; readers add that condition to every query.
- The commit point is one SQLite transaction in the knowledge bank's folder (WAL, synchronous=FULL):
  the committed generation, the vector dimension and the id map (kb id -> physical id, generation).
  The store's single writer holds the KB's writer lock (a flock) and works at G = C + 1: it adds
  records tagged G and marks the ones it replaces or deletes ``kb_del = G``. Readers at C still see
  the old state; the commit flips the generation in SQLite, so everything appears at once.
- A rollback, or the next writer after a crash, removes records tagged above C and unmarks deletion
  marks above C. Records retired at C are deleted after the commit point of C+1 (a reader of C-1 may
  still be finishing when C commits).
- Whole reads. A reader reads C, then queries the store: a slow one can be lapped by two commits, the
  second of which deletes records it was about to read. So once its store calls are over it reads the
  committed generation again (``lapped``): at most C+1, nothing of C can have been deleted yet and its
  answer is exactly C's state; beyond, it reads again at the newer generation (``WholeGenerationReads``).

``GenerationLedger`` is the SQLite side for drivers whose id map is (id, physical, gen) (Elasticsearch,
Azure AI Search); Chroma keeps a richer map (metadata copy, keyword index) and uses the functions below.
``CommitPoint``/``CommitPointWrite`` are the interface those drivers see; ``stores/commit_point/database.py`` is its
other side (the commit point in a shared database, a lease instead of the flock, issue 28).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Protocol, TypeVar

import numpy as np

from kb_base.errors import KBError, StoreError, StoreUnavailableError
from kb_base.filters import Filter
from stores.base import (
    DelegatingReader,
    Hit,
    Record,
    StoreTransaction,
    acquire_writer_lock,
    fault_point,
    release_after_failure,
)
from stores.sqlite.meta import ThreadConnections, connect_durable, create_meta, read_meta

NEVER = 2**62  # kb_del of a live record: above every generation
_CHUNK = 500  # SQLite variables per IN (...) query
# How many times a read starts over at a newer generation when two commits lapped it, before it gives up
READ_ATTEMPTS = 5
T = TypeVar("T")


def lapped(read_at: int, committed_now: int) -> bool:
    """Whether a read at generation ``read_at`` may lack records, given the committed generation read once its
    store calls were over. What generation G retires is deleted from the store only once G+1 is committed
    (right after that commit point, or by the writer after it: Chroma on a shared database), and the records
    of ``read_at`` that a later generation retires were retired at ``read_at`` + 1 at the earliest: while the
    committed generation is at most ``read_at`` + 1, none of them can have been deleted, and the read saw the
    state at ``read_at`` whole."""
    return committed_now > read_at + 1


def lapped_error(kb_id: str, what: str = "a read") -> StoreUnavailableError:
    return StoreUnavailableError(f"knowledge bank {kb_id}: {what} was overtaken by two commits {READ_ATTEMPTS} times "
                                 "in a row (writers commit faster than it reads); retry")


def paging_lapped_error(kb_id: str, generation: int) -> StoreUnavailableError:
    """Pages already handed out cannot be taken back: a lapped paging says so rather than end short."""
    return StoreUnavailableError(f"knowledge bank {kb_id}: two commits came while its records were read page by "
                                 f"page (from generation {generation}), so some may be missing; read them again")


def open_writer(folder: Path, database: Path, timeout: float, kb_id: str) -> tuple[IO[str], sqlite3.Connection]:
    """Take the KB's writer lock and open a durable connection to its commit point (closed again on error)."""
    lock = acquire_writer_lock(folder / "writer.lock", timeout, kb_id)
    try:
        return lock, connect_durable(database)
    except BaseException:
        lock.close()
        raise


def flip_generation(conn: sqlite3.Connection, generation: int) -> None:
    """Record ``generation`` as committed (inside the caller's transaction: the COMMIT is the commit point)."""
    conn.execute("UPDATE meta SET value = ? WHERE key = 'generation'", (str(generation),))


class PartialWrites:
    """A write these stores refuse part way may be partly applied (none has multi-document transactions), so
    the transaction that saw it can only roll back: ``writing()`` notes the failure, ``refuse_commit`` turns the
    commit into a rollback and a StoreError."""

    def __init__(self) -> None:
        self.failed: BaseException | None = None

    @contextmanager
    def writing(self) -> Iterator[None]:
        try:
            yield
        except BaseException as exc:
            self.failed = exc
            raise

    def refuse_commit(self, transaction: StoreTransaction, kb_id: str) -> None:
        """Raise (after releasing ``transaction``) if a write of it failed; else nothing."""
        if self.failed is None:
            return
        refused = StoreError(f"knowledge bank {kb_id}: a write of this transaction failed ({self.failed}); "
                             "it was rolled back, nothing was committed")
        release_after_failure(transaction, refused)
        raise refused


def split_by_generation(rows: Iterable[tuple[str, int]], generation: int) -> tuple[list[str], list[str]]:
    """(physical ids written by this generation, to delete outright; older ones, to mark ``kb_del``)."""
    own, older = [], []
    for physical, gen in rows:
        (own if gen == generation else older).append(physical)
    return own, older


class LedgerNotes(Protocol):
    """What ``begin``'s ``prepare`` sees: under the writer lock (or lease), before the write opens."""

    committed: int

    def meta(self, key: str) -> str | None: ...

    def set_meta(self, key: str, value: str) -> None:
        """Durable at once (a note such as 'dirty' must be on disk before the store is written)."""


class CommitPointWrite(Protocol):
    """One write at generation committed + 1; its id map changes commit with it."""

    committed: int
    generation: int
    dim: int | None
    done: bool

    def retire(self, ids: Sequence[str]) -> tuple[list[str], list[str]]: ...
    def add(self, pairs: Iterable[tuple[str, str]], dim: int | None = None) -> None: ...
    def all_ids(self) -> list[str]: ...
    def set_dimension(self, dim: int) -> None: ...
    def fence(self) -> None:
        """Raise WriterFencedError if this writer may have lost the knowledge bank (before a store write or a
        long wait): a no-op under a flock, the lease's local deadline in a shared database."""
    def commit(self) -> None: ...
    def rollback(self) -> None: ...
    def holds_lock(self) -> bool:
        """Still the only writer? A writer fenced off (its lease taken over) must not clean the store up: what
        it would remove as 'above its committed generation' may be its successor's."""
    def set_meta(self, key: str, value: str) -> None: ...
    def close(self) -> None: ...


class CommitPoint(Protocol):
    """A knowledge bank's commit point: the KB folder's SQLite (``GenerationLedger``) or a shared database."""

    kb_id: str

    def committed(self) -> tuple[int, int | None]: ...
    def ids(self) -> list[str]: ...
    def meta(self, key: str) -> str | None: ...
    def set_meta(self, key: str, value: str) -> None: ...
    def begin(self, timeout: float, prepare: Callable[[LedgerNotes], None] | None = None) -> CommitPointWrite: ...
    def close(self) -> None: ...
    def destroy(self) -> None: ...


class _SqliteNotes:
    """``LedgerNotes`` on the writer's connection (outside its transaction: each statement is durable)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.committed = read_meta(conn)[0]

    def meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self.conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))


class WholeGenerationReads(DelegatingReader):
    """A driver's committed reads, each the whole state of one generation: the view (``_view()``, with its
    ``generation``) reads, then the committed generation is read again; a read ``lapped`` by two commits is
    done again at the newer generation (a failure too: the vacuum may have caused it). Elasticsearch and Azure
    AI Search; Chroma does the same around its own snapshots (stores/chroma/reader.py)."""

    ledger: CommitPoint
    context: Any

    def _whole(self, read: Callable[[Any], T]) -> T:
        for _ in range(READ_ATTEMPTS):
            view: Any = self._view()
            failure: KBError | None = None
            try:
                result = read(view)
            except KBError as exc:
                failure = exc
            if not lapped(view.generation, self.ledger.committed()[0]):
                if failure is not None:
                    raise failure
                return result
        raise lapped_error(self.context.kb_id)

    def get(self, ids: Sequence[str], with_vectors: bool = False) -> list[Record]:
        return self._whole(lambda view: view.get(ids, with_vectors))

    def count(self, flt: Filter | None = None) -> int:
        return self._whole(lambda view: view.count(flt))

    def ids_where(self, flt: Filter | None) -> list[str]:
        return self._whole(lambda view: view.ids_where(flt))

    def iter_records(self, batch_size: int = 1000, with_vectors: bool = False) -> Iterator[list[Record]]:
        view: Any = self._view()

        def check() -> None:
            if lapped(view.generation, self.ledger.committed()[0]):
                raise paging_lapped_error(self.context.kb_id, view.generation)

        for page in view.iter_records(batch_size, with_vectors):
            check()
            yield page
        check()  # after the last page too: ending early is what a vacuum under the paging looks like

    def similarity(self, vector: np.ndarray, k: int, flt: Filter | None = None,
                   with_vectors: bool = False) -> list[Hit]:
        return self._whole(lambda view: view.similarity(vector, k, flt, with_vectors))

    def keyword(self, query: str, k: int, flt: Filter | None = None) -> list[Hit]:
        return self._whole(lambda view: view.keyword(query, k, flt))


class GenerationLedger:
    """The commit point of one knowledge bank: committed generation, dimension, id -> (physical, gen)."""

    def __init__(self, folder: Path, database: str, kb_id: str) -> None:
        self.folder, self.kb_id = folder, kb_id
        folder.mkdir(parents=True, exist_ok=True)
        self._connections = ThreadConnections(folder / database)
        conn = connect_durable(self._connections.path)
        try:
            create_meta(conn)
            conn.execute("CREATE TABLE IF NOT EXISTS records (id TEXT PRIMARY KEY, physical TEXT NOT NULL, "
                         "gen INTEGER NOT NULL)")
        finally:
            conn.close()

    def committed(self) -> tuple[int, int | None]:
        """(committed generation, vector dimension or None) as this thread's connection sees them now."""
        return read_meta(self._connections.get())

    def ids(self) -> list[str]:
        """The committed records' ids, from the id map (not from the store: ``kb doctor`` compares the two)."""
        return [row[0] for row in self._connections.get().execute("SELECT id FROM records")]

    def meta(self, key: str) -> str | None:
        row = self._connections.get().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        """A durable note outside any write (such as 'the index exists'); not part of a generation."""
        self._connections.get().execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def begin(self, timeout: float, prepare: Callable[[LedgerNotes], None] | None = None) -> LedgerWrite:
        """Open the single write; ``prepare(notes)`` runs under the lock before the SQLite transaction opens
        (durable notes such as a dirty flag, and removing a dead writer's leftovers)."""
        lock, conn = open_writer(self.folder, self._connections.path, timeout, self.kb_id)
        try:
            if prepare is not None:
                prepare(_SqliteNotes(conn))
            conn.execute("BEGIN IMMEDIATE")
            generation, dim = read_meta(conn)
        except BaseException:
            try:
                conn.close()  # rolls back
            finally:
                lock.close()
            raise
        return LedgerWrite(conn, lock, generation, dim)

    def close(self) -> None:
        self._connections.close()

    def destroy(self) -> None:
        """Nothing beyond ``close``: the driver removes the KB folder, and this file with it."""
        self.close()


class LedgerWrite:
    """The SQLite side of one write at generation committed + 1 (its id map changes commit with it)."""

    def __init__(self, conn: sqlite3.Connection, lock: IO[str], committed: int, dim: int | None) -> None:
        self.conn, self.lock = conn, lock
        self.committed, self.generation, self.dim = committed, committed + 1, dim
        self.done = False  # past the commit point: a failure from here on must undo nothing

    def retire(self, ids: Sequence[str]) -> tuple[list[str], list[str]]:
        """Drop ``ids`` from the id map; returns (own physical ids, older physical ids) as split_by_generation."""
        rows: list[tuple[str, str, int]] = []
        for start in range(0, len(ids), _CHUNK):
            part = list(ids[start : start + _CHUNK])
            marks = ",".join("?" * len(part))
            rows += self.conn.execute(f"SELECT id, physical, gen FROM records WHERE id IN ({marks})", part).fetchall()
        self.conn.executemany("DELETE FROM records WHERE id = ?", [(r[0],) for r in rows])
        return split_by_generation(((physical, gen) for _, physical, gen in rows), self.generation)

    def add(self, pairs: Iterable[tuple[str, str]], dim: int | None = None) -> None:
        """Record (id, physical id) pairs written by this generation; ``dim``, the vectors' dimension, is kept
        from the first write on."""
        self.conn.executemany("INSERT INTO records VALUES (?, ?, ?)", [(i, p, self.generation) for i, p in pairs])
        if dim is not None and self.dim is None:
            self.set_dimension(dim)

    def all_ids(self) -> list[str]:
        return [row[0] for row in self.conn.execute("SELECT id FROM records")]

    def set_dimension(self, dim: int) -> None:
        self.dim = dim
        self.conn.execute("UPDATE meta SET value = ? WHERE key = 'dimension'", (str(dim),))

    def commit(self) -> None:
        flip_generation(self.conn, self.generation)
        fault_point("before_sqlite_commit")
        self.conn.execute("COMMIT")  # the commit point
        self.done = True
        fault_point("after_sqlite_commit")

    def rollback(self) -> None:
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")

    def holds_lock(self) -> bool:
        return True  # a flock is held until closed: nobody can take it over

    def fence(self) -> None:
        pass  # likewise

    def set_meta(self, key: str, value: str) -> None:
        """A durable note after the commit or rollback (outside the write's transaction)."""
        self.conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def close(self) -> None:
        """Close the connection and release the writer lock (the lock even if closing the connection fails)."""
        try:
            self.conn.close()
        finally:
            self.lock.close()

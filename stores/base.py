"""The store driver protocol: what every vector store behind a knowledge bank does.

A driver owns one knowledge bank's records (id, text, metadata, vector). Reads
go straight to the driver; writes go through a transaction (``begin``) that
is invisible to readers until ``commit`` and leaves nothing behind on
``rollback``. The single-operation helpers (``upsert``, ``delete``, ...) are
one-operation transactions. Scores are "higher is better" for every search.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import logging
import os
import random
import signal
import sqlite3
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import numpy as np

from kb_base import events
from kb_base.disk import disk_full_error, is_disk_full, reports_disk_full
from kb_base.errors import KBError, StoreError, UnsupportedSearchError, WriterBusyError
from kb_base.filters import Filter

log = logging.getLogger(__name__)


@dataclass
class Record:
    id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)
    vector: np.ndarray | None = None
    # the metadata as JSON text, when whoever validated it also encoded it (a write's fast path)
    encoded_metadata: str | None = field(default=None, repr=False, compare=False)


@dataclass
class Hit:
    record: Record
    score: float


@dataclass(frozen=True)
class Capabilities:
    """What a driver can do natively; kb's core fills the gaps or refuses clearly."""

    keyword: bool = False
    native_hybrid: bool = False
    approximate: bool = False
    persistent: bool = True


@dataclass
class StoreContext:
    """Everything a driver needs to open a knowledge bank's store."""

    kb_id: str
    folder: Path  # the knowledge bank's own folder; local drivers keep their files here
    settings: dict[str, Any] = field(default_factory=dict)  # the KB's "store" settings section
    connection: dict[str, Any] = field(default_factory=dict)  # remote stores: url, credentials, ...
    keyword_analyzer: dict[str, Any] = field(default_factory=dict)
    keyword_index: bool = True  # False: a vector-only knowledge bank (no BM25 index, no keyword or hybrid search)
    metadata_schema: dict[str, str] = field(default_factory=dict)  # declared key types (for fixed index schemas)
    # the shared database holding remote stores' commit points (issue 28); None: the KB folder's SQLite
    database_url: str | None = None


@dataclass
class RankedLists:
    """Both candidate lists of a hybrid search, best first, and how to read the records it keeps."""

    dense: list[tuple[str, float]]
    keyword: list[tuple[str, float]]
    # records of the given ids, or None when one of them went away since (a newer commit deleted it)
    records: Callable[[Sequence[str]], dict[str, Record] | None]


class StoreReader(ABC):
    """The read side, shared by drivers and open transactions (which read their own writes)."""

    @property
    @abstractmethod
    def dimension(self) -> int | None:
        """Vector dimension, or None while the store is empty and has never held a vector."""

    @abstractmethod
    def get(self, ids: Sequence[str], with_vectors: bool = False) -> list[Record]:
        """Records for ``ids`` in the order asked; unknown ids are left out."""

    @abstractmethod
    def count(self, flt: Filter | None = None) -> int: ...

    @abstractmethod
    def similarity(
        self, vector: np.ndarray, k: int, flt: Filter | None = None, with_vectors: bool = False
    ) -> list[Hit]:
        """The ``k`` nearest records to ``vector`` among those matching ``flt``, best first."""

    def similarity_rows(self, vector: np.ndarray, k: int,
                        flt: Filter | None = None) -> list[tuple[str, str, dict[str, Any], float]]:
        """``similarity`` as (id, text, metadata, score) tuples, each metadata dict the caller's own: for callers
        that build their own objects (LangChain Documents); a driver may answer it without Records and Hits."""
        return [(h.record.id, h.record.text, dict(h.record.metadata), h.score) for h in self.similarity(vector, k, flt)]

    def keyword(self, query: str, k: int, flt: Filter | None = None) -> list[Hit]:
        raise UnsupportedSearchError(f"{type(self).__name__} has no keyword search")

    def ranked_lists(self, vector: np.ndarray, query: str, depth: int,
                     flt: Filter | None = None) -> RankedLists | None:
        """Optional: a hybrid search's two candidate lists as ids and scores, the records read afterwards for
        the few the fusion keeps. None (the default): hybrid reads both lists' records."""
        return None

    @abstractmethod
    def iter_records(self, batch_size: int = 1000, with_vectors: bool = False) -> Iterator[list[Record]]:
        """Every record, in batches (export, copy, delete by filter)."""

    @abstractmethod
    def ids_where(self, flt: Filter | None) -> list[str]: ...


def fault_point(point: str) -> None:
    """Test-only fault injection: ``KB_FAULT_POINT=<point>`` kills the process there (like a power cut);
    ``KB_FAULT_RAISE=<point>`` raises an I/O error there instead (a failing disk or service), every time."""
    if os.environ.get("KB_FAULT_POINT") == point:
        os.kill(os.getpid(), signal.SIGKILL)
    if os.environ.get("KB_FAULT_RAISE") == point:
        raise OSError(errno.EIO, f"injected fault at {point} (KB_FAULT_RAISE)")


def _kb_of(transaction: Any) -> str:
    return getattr(getattr(getattr(transaction, "store", None), "context", None), "kb_id", "") or "?"


def release_after_failure(transaction: StoreTransaction, failure: BaseException) -> None:
    """Roll back and release a transaction whose commit failed: its lock, connections and staging files go now,
    not when the failed transaction is garbage-collected (the exception's traceback keeps it alive as long as
    the caller keeps the exception). A failure of the rollback itself is logged; ``failure`` is what the caller
    raises. ``rollback`` is a no-op on a transaction already closed."""
    try:
        transaction.rollback()
    except BaseException as undo:  # noqa: BLE001 - the commit's own failure is the one reported
        log.warning("knowledge bank %s: rollback after a failed commit (%s) failed too: %s: %s",
                    _kb_of(transaction), failure, type(undo).__name__, undo)


def _reporting_commit(commit: Callable[[Any], None]) -> Callable[[Any], None]:
    @functools.wraps(commit)
    def reporting(self: Any) -> None:
        started = time.perf_counter()
        ok = False
        try:
            commit(self)
            ok = True
        except BaseException as exc:
            # every store, whatever its own commit does: a failed commit leaves no lock or connection behind
            release_after_failure(self, exc)
            if isinstance(exc, Exception) and is_disk_full(exc):  # a full disk is a DiskFullError (507)
                raise disk_full_error(exc, f"commit to knowledge bank {_kb_of(self)}") from exc
            if isinstance(exc, OSError | sqlite3.Error) and not isinstance(exc, KBError):  # typed, as documented
                raise StoreError(f"commit to knowledge bank {_kb_of(self)} failed: {exc}") from exc
            raise
        finally:
            store = getattr(self, "store", None)
            events.emit("commit", store=getattr(store, "store_type", type(self).__name__),
                        kb_id=getattr(getattr(store, "context", None), "kb_id", ""),
                        seconds=time.perf_counter() - started, ok=ok)

    reporting.reports_commit = True  # type: ignore[attr-defined]
    return reporting


class StoreTransaction(StoreReader):
    """An open write. Reads on it see its own writes; nothing is visible elsewhere before commit."""

    @abstractmethod
    def upsert(self, records: Sequence[Record]) -> None:
        """Insert or replace records by id. Every record carries a vector."""

    @abstractmethod
    def delete(self, ids: Sequence[str]) -> int:
        """Delete by id; returns how many existed."""

    def delete_where(self, flt: Filter | None) -> int:
        return self.delete(self.ids_where(flt))

    @abstractmethod
    def clear(self) -> None: ...

    @abstractmethod
    def commit(self) -> None:
        """Make every write of this transaction visible at once, durably. Committed or not, the transaction is
        closed when this returns or raises: the writer lock, connections and staging files are released."""

    @abstractmethod
    def rollback(self) -> None:
        """Forget every write of this transaction not yet committed, and release it (lock, connections, staging
        files) even when the undo fails. A no-op on a closed transaction, so it is safe after a failed commit."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Every store's ``commit`` reports its duration and outcome (``kb_base.events``: metrics count them)."""
        super().__init_subclass__(**kwargs)
        commit = cls.__dict__.get("commit")
        if commit is not None and not getattr(commit, "reports_commit", False):
            cls.commit = _reporting_commit(commit)  # type: ignore[method-assign]
        for name in ("upsert", "delete", "clear"):  # local stores write pages to disk before the commit
            method = cls.__dict__.get(name)
            if method is not None and not getattr(method, "__wrapped__", None):
                setattr(cls, name, reports_disk_full(f"a write to a knowledge bank ({name})")(method))

    def __enter__(self) -> StoreTransaction:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.rollback()


@dataclass
class StoreCheck:
    """What ``check``/``repair`` found: the committed records against what the store answers."""

    kb_id: str
    store_type: str
    records: int  # committed records (the commit point's count)
    checked: dict[str, int] = field(default_factory=dict)  # what was looked at, and how much of it
    problems: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)  # what a repair rebuilt

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {"kb_id": self.kb_id, "store_type": self.store_type, "ok": self.ok, "records": self.records,
                "checked": self.checked, "problems": self.problems, "repaired": self.repaired}


def _first(ids: Sequence[str], n: int = 5) -> str:
    return ", ".join(repr(i) for i in list(ids)[:n]) + (", ..." if len(ids) > n else "")


class VectorStoreDriver(StoreReader):
    """One knowledge bank's store. Subclasses register a ``store_type`` with the factory."""

    store_type: str = ""
    capabilities: Capabilities = Capabilities()

    def __init__(self, context: StoreContext) -> None:
        self.context = context

    @classmethod
    def check_settings(cls, settings: dict[str, Any]) -> None:
        """Refuse store settings (a knowledge bank's ``settings["store"]``) this store cannot use: InvalidInputError."""

    @classmethod
    def check_settings_change(cls, old: dict[str, Any], new: dict[str, Any]) -> None:
        """Refuse a change of store settings that a knowledge bank holding records cannot take (InvalidInputError):
        the settings that shape what is already stored."""

    @abstractmethod
    def begin(self, timeout: float = 30.0) -> StoreTransaction:
        """Open the knowledge bank's single write transaction; WriterBusyError after ``timeout``."""

    def upsert(self, records: Sequence[Record]) -> None:
        with self.begin() as tx:
            tx.upsert(records)

    def delete(self, ids: Sequence[str]) -> int:
        with self.begin() as tx:
            return tx.delete(ids)

    def delete_where(self, flt: Filter | None) -> int:
        with self.begin() as tx:
            return tx.delete_where(flt)

    def clear(self) -> None:
        with self.begin() as tx:
            tx.clear()

    def close(self) -> None:
        """Release files, connections and memory. The driver may not be used afterwards."""

    def index_info(self) -> dict[str, Any]:
        """The vector index as ``kb info`` shows it: its type, and the bytes it holds in this process's memory
        and on disk (None where the store cannot tell, as for a server's index)."""
        return {"index_type": None, "memory_bytes": None, "disk_bytes": None}

    def answers_quickly(self, filtered: bool) -> bool:
        """Whether a similarity search is short in-memory work now (a service may run it on its event loop).

        False by default: network stores wait on I/O, which must never block a service's event loop.
        """
        return False

    @abstractmethod
    def destroy(self) -> None:
        """Delete everything this store holds (the knowledge bank is being deleted)."""

    # --- health: ``kb doctor`` and ``kb repair`` ---------------------------------------------------

    def check(self, full: bool = False, sample: int = 32) -> StoreCheck:
        """Check the store against the commit point: the count, every committed id readable, and vector search
        finding records by their own vector (a sample of ``sample`` records, every record when ``full``).
        Problems are reported, not raised; a store that cannot be reached at all raises."""
        ids = self.committed_ids()
        report = StoreCheck(self.context.kb_id, self.store_type, len(ids))
        counted = self.count()
        if counted != len(ids):
            report.problems.append(f"the store counts {counted} records, the commit point lists {len(ids)}")
        missing: list[str] = []
        try:
            for start in range(0, len(ids), 1000):
                part = ids[start : start + 1000]
                found = {r.id for r in self.get(part)}
                missing += [i for i in part if i not in found]
        except KBError as exc:
            report.problems.append(f"reading the committed records failed: {exc}")
            return report
        report.checked["readable"] = len(ids) - len(missing)
        if missing:
            report.problems.append(f"{len(missing)} committed records cannot be read from the store: {_first(missing)}")
        probes = ids if full else random.Random(len(ids)).sample(ids, min(sample, len(ids)))
        lost: list[str] = []
        try:
            for start in range(0, len(probes), 500):
                for record_id, vector in self.check_vectors(probes[start : start + 500]).items():
                    if record_id not in {h.record.id for h in self.similarity(vector, 10)}:
                        lost.append(record_id)
        except KBError as exc:
            report.problems.append(f"vector search failed: {exc}")
            return report
        report.checked["found_by_own_vector"] = len(probes) - len(lost)
        report.checked["vector_probes"] = len(probes)
        if lost:
            report.problems.append(f"vector search misses {len(lost)} of {len(probes)} records searched for by their "
                                   f"own vector: {_first(lost)}")
        return report

    def committed_ids(self) -> list[str]:
        """The ids the commit point lists (a driver whose reads ask a service returns its own id map's)."""
        return self.ids_where(None)

    def check_vectors(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        """The vectors ``check`` searches with; a driver that keeps its own copy returns that copy."""
        return {r.id: r.vector for r in self.get(ids, with_vectors=True) if r.vector is not None}

    def repair(self) -> StoreCheck:
        """Rebuild what the check finds damaged and can be rebuilt, then check again. The default rebuilds
        nothing (the store has no index kb could rebuild from its own data) and says so."""
        report = self.check()
        if not report.ok:
            report.repaired.append(f"nothing rebuilt: kb cannot rebuild a store of type {self.store_type} from its own "
                                   "data; restore a snapshot (kb export / kb import) or write the records again")
        return report


class DelegatingReader(StoreReader):
    """Reads answered by another reader: a driver's view of its committed state, or a transaction's own."""

    @abstractmethod
    def _view(self) -> StoreReader: ...

    @property
    def dimension(self) -> int | None:
        return self._view().dimension

    def get(self, ids: Sequence[str], with_vectors: bool = False) -> list[Record]:
        return self._view().get(ids, with_vectors)

    def count(self, flt: Filter | None = None) -> int:
        return self._view().count(flt)

    def ids_where(self, flt: Filter | None) -> list[str]:
        return self._view().ids_where(flt)

    def iter_records(self, batch_size: int = 1000, with_vectors: bool = False) -> Iterator[list[Record]]:
        return self._view().iter_records(batch_size, with_vectors)

    def similarity(self, vector: np.ndarray, k: int, flt: Filter | None = None,
                   with_vectors: bool = False) -> list[Hit]:
        return self._view().similarity(vector, k, flt, with_vectors)

    def keyword(self, query: str, k: int, flt: Filter | None = None) -> list[Hit]:
        return self._view().keyword(query, k, flt)


def acquire_writer_lock(path: Path, timeout: float, kb_id: str) -> IO[str]:
    """Take the knowledge bank's single-writer lock (flock: released by the kernel if the process dies)."""
    handle = open(path, "a+")  # noqa: SIM115 - the caller closes it to release the lock
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return handle
        except BlockingIOError:
            if time.monotonic() >= deadline:
                handle.close()
                raise WriterBusyError(f"knowledge bank {kb_id} is being written by another writer; "
                                      f"gave up after {timeout:g}s") from None
            time.sleep(0.02)

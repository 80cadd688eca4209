"""The store driver protocol: what every vector store behind a knowledge bank does.

A driver owns one knowledge bank's records (id, text, metadata, vector). Reads
go straight to the driver; writes go through a transaction (``begin``) that
is invisible to readers until ``commit`` and leaves nothing behind on
``rollback``. The single-operation helpers (``upsert``, ``delete``, ...) are
one-operation transactions. Scores are "higher is better" for every search.
"""

from __future__ import annotations

import fcntl
import functools
import json
import math
import os
import signal
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import numpy as np
import orjson

from kb import events
from kb.disk import disk_full_error, is_disk_full, reports_disk_full
from kb.errors import InvalidInputError, UnsupportedSearchError, WriterBusyError
from kb.filters import Filter
from stores.record_batch import RecordBatch

_JSON = json.JSONEncoder(allow_nan=False, ensure_ascii=False)  # one encoder: json.dumps builds one a call
_ORJSON_SCALARS = frozenset((str, int, float, bool))


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
    """Test-only fault injection: ``KB_FAULT_POINT=<point>`` kills the process there (like a power cut)."""
    if os.environ.get("KB_FAULT_POINT") == point:
        os.kill(os.getpid(), signal.SIGKILL)


def _kb_of(transaction: Any) -> str:
    return getattr(getattr(getattr(transaction, "store", None), "context", None), "kb_id", "") or "?"


def _reporting_commit(commit: Callable[[Any], None]) -> Callable[[Any], None]:
    @functools.wraps(commit)
    def reporting(self: Any) -> None:
        started = time.perf_counter()
        ok = False
        try:
            commit(self)
            ok = True
        except Exception as exc:  # every store: a full disk is a DiskFullError (507), whatever layer noticed it
            if is_disk_full(exc):
                raise disk_full_error(exc, f"commit to knowledge bank {_kb_of(self)}") from exc
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
        """Make every write of this transaction visible at once, durably."""

    @abstractmethod
    def rollback(self) -> None:
        """Forget every write of this transaction."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Every store's ``commit`` reports its duration and outcome (``kb.events``: metrics count them)."""
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


class VectorStoreDriver(StoreReader):
    """One knowledge bank's store. Subclasses register a ``store_type`` with the factory."""

    store_type: str = ""
    capabilities: Capabilities = Capabilities()

    def __init__(self, context: StoreContext) -> None:
        self.context = context

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

    def answers_quickly(self, filtered: bool) -> bool:
        """Whether a similarity search is short in-memory work now (a service may run it on its event loop).

        False by default: network stores wait on I/O, which must never block a service's event loop.
        """
        return False

    @abstractmethod
    def destroy(self) -> None:
        """Delete everything this store holds (the knowledge bank is being deleted)."""


def check_records(records: Sequence[Record], dimension: int | None) -> int:
    """Validate records before a write; returns the vector dimension they share."""
    return int(checked_vectors(records, dimension).shape[1]) if records else dimension or 0


def checked_vectors(records: Sequence[Record], dimension: int | None) -> np.ndarray:
    """Validate records before a write; returns their vectors as one float32 matrix.

    A whole-batch check first (one conversion, one finiteness test); if anything is off, the record by record
    check below names the first offending document, as it always has.
    """
    if not records:
        return np.zeros((0, dimension or 0), dtype=np.float32)
    batch = records.columns() if isinstance(records, RecordBatch) else None
    ids = batch.ids if batch is not None else [r.id for r in records]
    texts = batch.texts if batch is not None else [r.text for r in records]
    if (set(map(type, ids)) <= {str} and min(map(len, ids)) > 0 and max(map(len, ids)) <= 512
            and len(set(ids)) == len(ids) and set(map(type, texts)) <= {str}):
        matrix = records.vectors() if isinstance(records, RecordBatch) else None
        if matrix is None:
            try:
                matrix = np.asarray([r.vector for r in records])
            except (ValueError, TypeError):
                matrix = None
        if (matrix is not None and matrix.dtype.kind in "biuf" and matrix.ndim == 2 and matrix.shape[1] > 0
                and dimension in (None, matrix.shape[1]) and np.isfinite(matrix).all()):
            return np.asarray(matrix, dtype=np.float32)
    _check_one_by_one(records, dimension)
    return np.stack([np.asarray(r.vector, dtype=np.float32) for r in records])


def _check_one_by_one(records: Sequence[Record], dimension: int | None) -> None:
    dim = dimension
    seen: set[str] = set()
    for position, record in enumerate(records):
        label = f"document {record.id!r} (position {position})"
        if not isinstance(record.id, str) or not record.id or len(record.id) > 512:
            raise InvalidInputError(f"document at position {position}: id must be a non-empty string ≤512 chars")
        if record.id in seen:
            raise InvalidInputError(f"{label}: the same id appears twice in one write")
        seen.add(record.id)
        if not isinstance(record.text, str):
            raise InvalidInputError(f"{label}: text must be a string")
        if record.vector is None:
            raise InvalidInputError(f"{label}: no vector")
        vector = np.asarray(record.vector)
        if vector.ndim != 1 or vector.size == 0:
            raise InvalidInputError(f"{label}: vector must be one-dimensional and non-empty")
        if not np.all(np.isfinite(vector)):
            raise InvalidInputError(f"{label}: vector has NaN or infinite values")
        if dim is None:
            dim = int(vector.size)
        elif vector.size != dim:
            raise InvalidInputError(f"{label}: vector has {vector.size} dimensions, the store holds {dim}")


def plain_metadata_json(metadata: dict[str, Any]) -> str | None:
    """orjson's JSON for metadata of plain scalars with finite floats, which json.loads reads back equal
    (None where orjson refuses: a key that is not a string, an integer beyond 64 bits). A writer that has
    already checked the metadata this way (``writers.schema.plain_metadata``) stores the result on the
    record, so the transaction does not scan the values a second time."""
    try:
        return orjson.dumps(metadata).decode()
    except TypeError:  # orjson.JSONEncodeError is one
        return None


def metadata_json(record: Record) -> str:
    """A record's metadata as JSON text (json.loads gives back an equal dict); InvalidInputError if it has none.

    orjson, ten times faster than json.dumps, for flat metadata of plain scalars; json for the rest, because
    orjson turns things json refuses into JSON (NaN into null, dataclasses, enums, UUIDs, datetimes). None is
    left to json too, so a null in orjson's output can only be a NaN or an infinity, which json then refuses.
    """
    if record.encoded_metadata is not None:
        return record.encoded_metadata
    metadata = record.metadata
    if type(metadata) is dict and all(type(value) in _ORJSON_SCALARS for value in metadata.values()):
        encoded = plain_metadata_json(metadata)
        if encoded is not None and "null" not in encoded:
            return encoded
    try:
        return _JSON.encode(metadata)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"document {record.id!r}: metadata is not JSON-serialisable: {exc}") from exc


def check_query_vector(vector: Any, dimension: int | None) -> np.ndarray:
    array = np.asarray(vector, dtype=np.float32)
    if array.ndim != 1 or array.size == 0:
        raise InvalidInputError("query vector must be a non-empty list of numbers")
    if not np.isfinite(array).all():
        raise InvalidInputError("query vector has NaN or infinite values")
    if dimension is not None and array.size != dimension:
        raise InvalidInputError(f"query vector has {array.size} dimensions, the knowledge bank holds {dimension}")
    return array


def unit_query(vector: Any, dimension: int | None) -> np.ndarray:
    """A checked query vector as a unit-length (1, d) float32 row (zero stays zero).

    The hot path is one numpy call: a finite, positive squared norm means every value is finite. Anything
    else (NaN, infinities, an overflowing norm, zero, a wrong shape) takes ``check_query_vector``'s way.
    """
    array = np.asarray(vector, dtype=np.float32)
    if array.ndim == 1 and array.size == (dimension or array.size) and array.size:
        squared = float(np.dot(array, array))
        if 0.0 < squared < math.inf:
            # sqrt in double rounded once to float32 equals float32's correctly rounded sqrt
            return array.reshape(1, -1) / np.float32(math.sqrt(squared))
    array = check_query_vector(vector, dimension)
    norm = float(np.linalg.norm(array.astype(np.float64)))  # in double: a float32 norm may overflow
    row = array.reshape(1, -1)
    return (row.astype(np.float64) / norm).astype(np.float32) if norm > 0 else np.ascontiguousarray(row)


def normalise(vectors: np.ndarray) -> np.ndarray:
    """L2-normalise rows (cosine similarity becomes an inner product); zero rows stay zero."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    norms[norms == 0] = 1.0
    return vectors / norms


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

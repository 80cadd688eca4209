"""Checks and encodings of what goes into a store and what a search asks: a write's records (ids, texts,
vectors), their metadata as JSON, and query vectors. Shared by every driver."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson

from kb_base.errors import InvalidInputError
from stores.base import Record
from stores.record_batch import RecordBatch

_JSON = json.JSONEncoder(allow_nan=False, ensure_ascii=False)  # one encoder: json.dumps builds one a call
_ORJSON_SCALARS = frozenset((str, int, float, bool))


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
                and dimension in (None, matrix.shape[1]) and _all_finite(matrix)):
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


def unit_query(vector: Any, dimension: int | None, out: np.ndarray | None = None) -> np.ndarray:
    """A checked query vector as a unit-length (1, d) float32 row (zero stays zero); written into ``out`` (a
    (1, d) float32 row) and returned when given.

    The hot path is one numpy call: a finite, positive squared norm means every value is finite. Anything
    else (NaN, infinities, an overflowing norm, zero, a wrong shape) takes ``check_query_vector``'s way.
    """
    array = np.asarray(vector, dtype=np.float32)
    if array.ndim == 1 and array.size == (dimension or array.size) and array.size:
        squared = float(np.dot(array, array))
        if 0.0 < squared < math.inf:
            # sqrt in double rounded once to float32 equals float32's correctly rounded sqrt
            return np.divide(array.reshape(1, -1), np.float32(math.sqrt(squared)), out=out)
    array = check_query_vector(vector, dimension)
    norm = float(np.linalg.norm(array.astype(np.float64)))  # in double: a float32 norm may overflow
    row = array.reshape(1, -1)
    unit = (row.astype(np.float64) / norm).astype(np.float32) if norm > 0 else np.ascontiguousarray(row)
    if out is None:
        return unit
    out[...] = unit
    return out


# Rows per step when a batch is squared or tested: the temporaries stay small and reused. A whole 20k x 384
# batch made a 30 MB temporary each time, fresh memory that costs more than the arithmetic (page faults).
_ROWS_PER_STEP = 2048


def normalise(vectors: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """L2-normalise rows (cosine similarity becomes an inner product); zero rows stay zero. The norms are
    ``np.linalg.norm(vectors, axis=-1)``'s to the bit (the same per-row reduction), a few rows at a time.
    ``out``: a float32 array of the same shape to write the result into (and return)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    norms = np.empty((vectors.shape[0], 1), dtype=np.float32)
    for start in range(0, vectors.shape[0], _ROWS_PER_STEP):
        rows = vectors[start : start + _ROWS_PER_STEP]
        np.sqrt(np.add.reduce(rows * rows, axis=-1, keepdims=True), out=norms[start : start + _ROWS_PER_STEP])
    norms[norms == 0] = 1.0
    return np.divide(vectors, norms, out=out)


def _all_finite(matrix: np.ndarray) -> bool:
    return all(np.isfinite(matrix[start : start + _ROWS_PER_STEP]).all()
               for start in range(0, matrix.shape[0], _ROWS_PER_STEP))

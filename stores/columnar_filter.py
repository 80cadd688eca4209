"""Metadata filters evaluated on columns in memory (numpy), for committed snapshots.

Evaluating a filter in SQLite means ``json_extract`` over every row for every query (about 90 ms at
100k records). A committed generation never changes, so its metadata is turned into typed columns
once (kind, number, string, boolean per key) and each filter becomes a few vectorised comparisons.
Semantics are ``kb_base.filters.matches`` exactly; the conformance suite's property test checks it.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from kb_base.filters import And, Comparison, Filter, Not, Or

MISSING, BOOL, NUMBER, STRING, OTHER = 0, 1, 2, 3, 4


_SMALL_INTS = (np.int8, np.int16, np.int32)


def _as_float(value: int | float) -> float:
    """A filter's number as the float64 it compares as (an integer too big for a float: beyond every row)."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def _smallest(values: np.ndarray, signed_types: Sequence[type]) -> np.ndarray:
    """``values`` (integral) in the smallest of ``signed_types`` that holds them all exactly, else as they are."""
    if values.size == 0:
        return values.astype(signed_types[0])
    low, high = values.min(), values.max()
    for dtype in signed_types:
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return values.astype(dtype)
    return values


class _Column:
    """One metadata key's values, one row per record. Built wide (a kind, a float64, a bool and a string slot per
    row), then ``compact``: a slot no row uses is dropped, a kind shared by every row is kept once, integral numbers
    and string codes take the smallest integer type that holds them (a 0-9 ``part`` key: 1 byte a row, not 14;
    at 10M chunks that is the difference between 10 MB and 140 MB a key)."""

    def __init__(self, size: int, strings: bool = True) -> None:
        self.size = size
        self.kind: np.ndarray | None = np.zeros(size, dtype=np.int8)
        self.only = MISSING  # every row's kind, when ``kind`` is None
        self.number: np.ndarray | None = np.zeros(size, dtype=np.float64)
        self.string: np.ndarray | None = np.full(size, "", dtype=object) if strings else None  # until encode()
        self.boolean: np.ndarray | None = np.zeros(size, dtype=bool)
        self.codes: np.ndarray | None = np.zeros(0, dtype=np.int32)
        self.uniques = np.zeros(0, dtype=object)

    def is_kind(self, kind: int) -> np.ndarray:
        if self.kind is not None:
            return self.kind == kind
        return np.full(self.size, self.only == kind, dtype=bool)

    def kinds(self) -> np.ndarray:
        return self.kind if self.kind is not None else np.full(self.size, self.only, dtype=np.int8)

    def numbers(self) -> np.ndarray:
        return self.number.astype(np.float64) if self.number is not None else np.zeros(self.size, np.float64)

    def booleans(self) -> np.ndarray:
        return self.boolean if self.boolean is not None else np.zeros(self.size, dtype=bool)

    def all_codes(self) -> np.ndarray:
        return self.codes.astype(np.int32) if self.codes is not None else np.full(self.size, -1, dtype=np.int32)

    def nbytes(self) -> int:
        """Bytes held: the arrays and the dictionary's strings."""
        arrays = (self.kind, self.number, self.boolean, self.codes, self.uniques)
        return sum(a.nbytes for a in arrays if a is not None) + sum(sys.getsizeof(u) for u in self.uniques)

    def compact(self) -> None:
        """Drop what no row uses and narrow what is left (see the class docstring). Call once, after building."""
        assert self.kind is not None and self.number is not None and self.boolean is not None
        present = np.unique(self.kind)
        if present.size == 1:
            self.only, self.kind = int(present[0]), None
        if NUMBER not in present:
            self.number = None
        else:
            values = self.number[self.is_kind(NUMBER)]
            if np.all(np.isfinite(values)) and np.array_equal(values, np.trunc(values)):
                self.number = _smallest(self.number, _SMALL_INTS)
        if BOOL not in present:
            self.boolean = None
        if STRING not in present or self.codes is None or self.codes.size == 0:
            self.codes = None
        else:
            self.codes = _smallest(self.codes, _SMALL_INTS)

    def encode(self) -> None:
        """Dictionary-encode the strings: comparing a million Python strings took tens of ms per filter;
        integer codes in sorted-dictionary order answer equality and ordering with one integer comparison."""
        assert self.string is not None
        is_string = self.kind == STRING
        self.uniques, codes = np.unique(self.string[is_string], return_inverse=True)  # Python's str order
        self.codes = np.full(self.kind.size, -1, dtype=np.int32)
        self.codes[is_string] = codes
        self.string = None
        self.compact()


class MetadataColumns:
    def __init__(self, rowids: np.ndarray, metadata_json: Iterable[str]) -> None:
        self.rowids = rowids
        size = len(rowids)
        self.columns: dict[str, _Column] = {}
        # one string object per distinct value: a row's copy is freed at once, instead of a million of them living
        # until the dictionary is built and leaving the survivors scattered over memory the allocator cannot return
        distinct: dict[str, str] = {}
        for position, raw in enumerate(metadata_json):
            for key, value in json.loads(raw).items():
                column = self.columns.get(key)
                if column is None:
                    column = self.columns[key] = _Column(size)
                if isinstance(value, bool):
                    column.kind[position], column.boolean[position] = BOOL, value  # type: ignore[index]
                elif isinstance(value, int | float):
                    column.kind[position], column.number[position] = NUMBER, value  # type: ignore[index]
                elif isinstance(value, str):
                    column.kind[position] = STRING  # type: ignore[index]
                    column.string[position] = distinct.setdefault(value, value)  # type: ignore[index]
                else:
                    column.kind[position] = OTHER  # type: ignore[index]
        for column in self.columns.values():
            column.encode()

    def nbytes(self) -> int:
        """Bytes the columns hold, for memory reports (the rowids are the segment's own array, not counted)."""
        return sum(column.nbytes() for column in self.columns.values())

    def select(self, flt: Filter) -> np.ndarray:
        """Rowids of the records matching ``flt``."""
        return self.rowids[self.mask(flt)]

    def mask(self, flt: Filter) -> np.ndarray:
        if isinstance(flt, And):
            out = np.ones(len(self.rowids), dtype=bool)
            for clause in flt.clauses:
                out &= self.mask(clause)
            return out
        if isinstance(flt, Or):
            out = np.zeros(len(self.rowids), dtype=bool)
            for clause in flt.clauses:
                out |= self.mask(clause)
            return out
        if isinstance(flt, Not):
            return ~self.mask(flt.clause)
        assert isinstance(flt, Comparison)
        column = self.columns.get(flt.key)
        if column is None:
            missing = np.zeros(len(self.rowids), dtype=bool)
            return ~missing if flt.op in ("$ne", "$nin") else missing
        if flt.op == "$eq":
            return self._equal(column, flt.value)
        if flt.op == "$ne":
            return ~self._equal(column, flt.value)
        if flt.op in ("$in", "$nin"):
            out = np.zeros(len(self.rowids), dtype=bool)
            for value in flt.value:
                out |= self._equal(column, value)
            return out if flt.op == "$in" else ~out
        return self._order(column, flt.op, flt.value)

    @staticmethod
    def _equal(column: _Column, value: Any) -> np.ndarray:
        if isinstance(value, bool):
            if column.boolean is None:
                return np.zeros(column.size, dtype=bool)
            return column.is_kind(BOOL) & (column.boolean == value)
        if isinstance(value, int | float):
            if column.number is None:
                return np.zeros(column.size, dtype=bool)
            # as a float: a narrowed integer column then compares as the float64 one did, out-of-range values too
            return column.is_kind(NUMBER) & (column.number == _as_float(value))
        at = int(np.searchsorted(column.uniques, value))
        if column.codes is not None and at < column.uniques.size and column.uniques[at] == value:
            return column.codes == at
        return np.zeros(column.size, dtype=bool)

    @staticmethod
    def _order(column: _Column, op: str, value: Any) -> np.ndarray:
        if isinstance(value, str):
            # codes follow the sorted dictionary, so a bound in it orders every string at once
            if op in ("$gt", "$lte"):
                bound = int(np.searchsorted(column.uniques, value, side="right"))
            else:
                bound = int(np.searchsorted(column.uniques, value, side="left"))
            if column.codes is None:
                return np.zeros(column.size, dtype=bool)
            if op in ("$gt", "$gte"):
                return column.codes >= bound  # non-strings have code -1
            return (column.codes < bound) & column.is_kind(STRING)
        compare = {"$gt": np.greater, "$gte": np.greater_equal, "$lt": np.less, "$lte": np.less_equal}[op]
        out = np.zeros(column.size, dtype=bool)
        if column.number is None:
            return out
        selected = column.is_kind(NUMBER)
        if selected.any():
            out[selected] = compare(column.number[selected], _as_float(value)).astype(bool)
        return out


def gather_columns(parts: Sequence[MetadataColumns], rowids: np.ndarray) -> MetadataColumns:
    """Columns of ``rowids`` (sorted), each row taken from the one of ``parts`` that holds it (missing where none
    does), without reading any JSON: a merged FAISS segment's columns from its inputs'. String codes are
    re-encoded against the union of the parts' dictionaries, which keeps them in sorted order."""
    out = MetadataColumns(rowids, ())
    everything = np.concatenate([part.rowids for part in parts]) if parts else np.zeros(0, dtype=np.int64)
    if everything.size == 0 or rowids.size == 0:
        return out
    source = np.concatenate([np.full(part.rowids.size, i, dtype=np.int32) for i, part in enumerate(parts)])
    local = np.concatenate([np.arange(part.rowids.size) for part in parts])
    order = np.argsort(everything, kind="stable")
    at = order[np.minimum(np.searchsorted(everything[order], rowids), everything.size - 1)]
    found = everything[at] == rowids
    for key in dict.fromkeys(key for part in parts for key in part.columns):
        column = out.columns[key] = _Column(rowids.size, strings=False)
        having = [(i, part.columns[key]) for i, part in enumerate(parts) if key in part.columns]
        column.uniques = np.unique(np.concatenate([c.uniques for _, c in having]))
        column.codes = np.full(rowids.size, -1, dtype=np.int32)
        for i, part_column in having:
            rows = found & (source[at] == i)
            taken = local[at[rows]]
            column.kind[rows] = part_column.kinds()[taken]  # type: ignore[index]
            column.number[rows] = part_column.numbers()[taken]  # type: ignore[index]
            column.boolean[rows] = part_column.booleans()[taken]  # type: ignore[index]
            recoded = np.searchsorted(column.uniques, part_column.uniques).astype(np.int32)
            codes = part_column.all_codes()[taken]
            column.codes[rows] = np.where(codes >= 0, recoded[np.maximum(codes, 0)] if recoded.size else -1, -1)
        column.compact()
    return out

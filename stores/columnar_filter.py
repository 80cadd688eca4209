"""Metadata filters evaluated on columns in memory (numpy), for committed snapshots.

Evaluating a filter in SQLite means ``json_extract`` over every row for every query (about 90 ms at
100k records). A committed generation never changes, so its metadata is turned into typed columns
once (kind, number, string, boolean per key) and each filter becomes a few vectorised comparisons.
Semantics are ``kb_base.filters.matches`` exactly; the conformance suite's property test checks it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from kb_base.filters import And, Comparison, Filter, Not, Or

MISSING, BOOL, NUMBER, STRING, OTHER = 0, 1, 2, 3, 4


class _Column:
    def __init__(self, size: int, strings: bool = True) -> None:
        self.kind = np.zeros(size, dtype=np.int8)
        self.number = np.zeros(size, dtype=np.float64)
        self.string: np.ndarray | None = np.full(size, "", dtype=object) if strings else None  # until encode()
        self.boolean = np.zeros(size, dtype=bool)
        self.codes = np.zeros(0, dtype=np.int32)
        self.uniques = np.zeros(0, dtype=object)

    def encode(self) -> None:
        """Dictionary-encode the strings: comparing a million Python strings took tens of ms per filter;
        integer codes in sorted-dictionary order answer equality and ordering with one integer comparison."""
        assert self.string is not None
        is_string = self.kind == STRING
        self.uniques, codes = np.unique(self.string[is_string], return_inverse=True)  # Python's str order
        self.codes = np.full(self.kind.size, -1, dtype=np.int32)
        self.codes[is_string] = codes
        self.string = None


class MetadataColumns:
    def __init__(self, rowids: np.ndarray, metadata_json: Iterable[str]) -> None:
        self.rowids = rowids
        size = len(rowids)
        self.columns: dict[str, _Column] = {}
        for position, raw in enumerate(metadata_json):
            for key, value in json.loads(raw).items():
                column = self.columns.get(key)
                if column is None:
                    column = self.columns[key] = _Column(size)
                if isinstance(value, bool):
                    column.kind[position], column.boolean[position] = BOOL, value
                elif isinstance(value, int | float):
                    column.kind[position], column.number[position] = NUMBER, value
                elif isinstance(value, str):
                    column.kind[position], column.string[position] = STRING, value
                else:
                    column.kind[position] = OTHER
        for column in self.columns.values():
            column.encode()

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
            return (column.kind == BOOL) & (column.boolean == value)
        if isinstance(value, int | float):
            return (column.kind == NUMBER) & (column.number == value)
        at = int(np.searchsorted(column.uniques, value))
        if at < column.uniques.size and column.uniques[at] == value:
            return column.codes == at
        return np.zeros(column.kind.size, dtype=bool)

    @staticmethod
    def _order(column: _Column, op: str, value: Any) -> np.ndarray:
        if isinstance(value, str):
            # codes follow the sorted dictionary, so a bound in it orders every string at once
            if op in ("$gt", "$lte"):
                bound = int(np.searchsorted(column.uniques, value, side="right"))
            else:
                bound = int(np.searchsorted(column.uniques, value, side="left"))
            if op in ("$gt", "$gte"):
                return column.codes >= bound  # non-strings have code -1
            return (column.codes < bound) & (column.kind == STRING)
        compare = {"$gt": np.greater, "$gte": np.greater_equal, "$lt": np.less, "$lte": np.less_equal}[op]
        selected = column.kind == NUMBER
        out = np.zeros(len(column.kind), dtype=bool)
        if selected.any():
            out[selected] = compare(column.number[selected], value).astype(bool)
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
            column.kind[rows] = part_column.kind[taken]
            column.number[rows] = part_column.number[taken]
            column.boolean[rows] = part_column.boolean[taken]
            recoded = np.searchsorted(column.uniques, part_column.uniques).astype(np.int32)
            codes = part_column.codes[taken]
            column.codes[rows] = np.where(codes >= 0, recoded[np.maximum(codes, 0)] if recoded.size else -1, -1)
    return out

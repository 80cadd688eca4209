"""Records by rowid, kept in memory for the hottest search hits.

Safe without invalidation because a FAISS store never gives a committed rowid to another record:
rowids come from a counter that only grows and is committed with the records (``meta.next_rowid``),
and a replaced record gets a new rowid. So the content behind a committed rowid never changes;
a deleted rowid stays in the cache only until evicted, and no newer index returns it.

Callers must never share a mutable metadata dict with the cache: flat metadata (every value a string,
number, bool or null: most of it) is kept decoded and handed out as a shallow copy, which is then a
full copy; anything nested is kept as its JSON text and decoded per hit. Whether orjson may decode it
is decided once, when the record enters the cache.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterable
from typing import Any

from kb_base.jsonfast import loads_checked

# (id, text, metadata JSON, orjson decodes it exactly, the decoded metadata when it is flat else None)
CachedRow = tuple[str, str, str, bool, "dict[str, Any] | None"]
_SCALARS = (str, int, float, bool, type(None))


def flat_or_none(metadata: dict[str, Any]) -> dict[str, Any] | None:
    """``metadata`` itself when a shallow copy of it is a full copy (no list or dict inside), else None."""
    return metadata if all(isinstance(v, _SCALARS) for v in metadata.values()) else None


def cached_metadata(row: CachedRow) -> dict[str, Any]:
    """A fresh metadata dict for one cached row (the caller may mutate it)."""
    flat = row[4]
    return dict(flat) if flat is not None else loads_checked(row[2], row[3])


_ROW_OVERHEAD = 360  # bytes of a cached row beyond its strings: its tuple, dict entry, int key, flat metadata dict


def row_bytes(row: CachedRow) -> int:
    """About what one cached row holds in memory (its strings measured, the containers estimated)."""
    flat = row[4]
    metadata = 0 if flat is None else sys.getsizeof(flat) + sum(sys.getsizeof(v) for v in flat.values())
    return sys.getsizeof(row[0]) + sys.getsizeof(row[1]) + sys.getsizeof(row[2]) + metadata + _ROW_OVERHEAD


class RecordCache:
    """A bounded map rowid -> CachedRow; the oldest entries go first when it is full: more than ``max_entries``
    rows, or more than ``max_bytes`` (``row_bytes``). Bounded in bytes too because chunk texts vary tenfold: 50k
    entries were 28 MB of 20-character texts and would be ~150 MB of 2,000-character ones."""

    def __init__(self, max_entries: int = 50_000, max_bytes: int = 64 * 2**20) -> None:
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self._rows: dict[int, CachedRow] = {}
        self._sizes: dict[int, int] = {}
        self.bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._rows)

    def get_many(self, rowids: Iterable[int]) -> dict[int, CachedRow]:
        rows = self._rows
        return {r: rows[r] for r in rowids if r in rows}

    def hits(self, rowids: Iterable[int],
             scores: Iterable[float]) -> list[tuple[str, str, dict[str, Any], float]] | None:
        """(id, text, metadata, score) for each rowid and score, in order; None if any rowid is missing."""
        rows = self._rows
        out = []
        for rowid, score in zip(rowids, scores, strict=True):
            row = rows.get(rowid)
            if row is None:
                return None
            flat = row[4]  # cached_metadata(row), inline: this loop is on every similarity search's path
            out.append((row[0], row[1], dict(flat) if flat is not None else loads_checked(row[2], row[3]), score))
        return out

    def put_many(self, entries: Iterable[tuple[int, CachedRow]]) -> None:
        if self.max_entries <= 0 or self.max_bytes <= 0:
            return
        with self._lock:
            rows, sizes = self._rows, self._sizes
            for rowid, row in entries:
                size = row_bytes(row)
                self.bytes += size - sizes.get(rowid, 0)
                rows[rowid], sizes[rowid] = row, size
            overflow, excess = len(rows) - self.max_entries, self.bytes - self.max_bytes
            if overflow <= 0 and excess <= 0:
                return
            doomed = []
            for rowid in rows:  # dicts keep insertion order: the oldest first
                if len(doomed) >= overflow and excess <= 0:
                    break
                doomed.append(rowid)
                excess -= sizes[rowid]
            for rowid in doomed:
                del rows[rowid]
                self.bytes -= sizes.pop(rowid)

    def clear(self) -> None:
        with self._lock:
            self._rows.clear()
            self._sizes.clear()
            self.bytes = 0

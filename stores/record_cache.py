"""Records by rowid, kept in memory for the hottest search hits.

Safe without invalidation because a FAISS store never gives a committed rowid to another record:
rowids come from a counter that only grows and is committed with the records (``meta.next_rowid``),
and a replaced record gets a new rowid. So the content behind a committed rowid never changes;
a deleted rowid stays in the cache only until evicted, and no newer index returns it.
Metadata is kept as its JSON text and decoded per hit, so callers can never mutate a shared copy;
whether orjson may decode it is decided once, when the record enters the cache.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

CachedRow = tuple[str, str, str, bool]  # (id, text, metadata JSON, orjson decodes it exactly)


class RecordCache:
    """A bounded map rowid -> (id, text, metadata JSON, exact); the oldest entries go first when it is full."""

    def __init__(self, max_entries: int = 50_000) -> None:
        self.max_entries = max_entries
        self._rows: dict[int, CachedRow] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._rows)

    def get_many(self, rowids: Iterable[int]) -> dict[int, CachedRow]:
        rows = self._rows
        return {r: rows[r] for r in rowids if r in rows}

    def put_many(self, entries: Iterable[tuple[int, CachedRow]]) -> None:
        if self.max_entries <= 0:
            return
        with self._lock:
            rows = self._rows
            for rowid, row in entries:
                rows[rowid] = row
            overflow = len(rows) - self.max_entries
            if overflow > 0:  # dicts keep insertion order: drop the oldest
                for rowid in list(rows)[:overflow]:
                    del rows[rowid]

    def clear(self) -> None:
        with self._lock:
            self._rows.clear()

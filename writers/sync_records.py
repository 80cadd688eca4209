"""The record manager of folder sync: per knowledge bank, which file was synced with what content.

One SQLite file in the knowledge bank's own folder (``sync.sqlite``), one row
per (source folder, path): the file's sha256, the extraction settings it was
synced with, its chunk ids and its screenshot paths. Rows are written right
after the store commit that wrote those chunks; if a process dies between the
two, the next sync sees the old row, extracts the file again, finds its chunks
already stored with the same content hashes (nothing is embedded or written
again) and then records the row, so the two always converge.

Knowledge banks on a shared catalog (several servers) keep the same rows in the catalog database instead
(``kb.catalog_db.sync_records``); the target picks one (``KnowledgeBankTarget.sync_records``), and both
satisfy ``SyncRecordStore``.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

_SCHEMA = """
CREATE TABLE IF NOT EXISTS synced_files (
    folder_id TEXT NOT NULL,
    path TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    config TEXT NOT NULL,
    kind TEXT NOT NULL,
    pages INTEGER,
    chunk_ids TEXT NOT NULL,
    screenshots TEXT NOT NULL,
    synced_at REAL NOT NULL,
    PRIMARY KEY (folder_id, path)
)
"""


@dataclass
class FileRecord:
    folder_id: str
    path: str
    sha256: str
    config: str  # digest of the extraction settings: changing them re-extracts the file
    kind: str
    pages: int | None
    chunk_ids: list[str] = field(default_factory=list)
    screenshots: list[str] = field(default_factory=list)


class SyncRecordStore(Protocol):
    def files(self, folder_id: str) -> dict[str, FileRecord]: ...

    def all_screenshots(self) -> set[str]: ...

    def apply(self, upserts: Iterable[FileRecord], removals: Iterable[tuple[str, str]]) -> None: ...

    def close(self) -> None: ...


class SyncRecords:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute(_SCHEMA)

    def close(self) -> None:
        self._conn.close()

    def files(self, folder_id: str) -> dict[str, FileRecord]:
        rows = self._conn.execute("SELECT folder_id, path, sha256, config, kind, pages, chunk_ids, screenshots "
                                  "FROM synced_files WHERE folder_id = ?", (folder_id,))
        return {row[1]: FileRecord(*row[:6], json.loads(row[6]), json.loads(row[7])) for row in rows}

    def all_screenshots(self) -> set[str]:
        names: set[str] = set()
        for (raw,) in self._conn.execute("SELECT screenshots FROM synced_files"):
            names.update(json.loads(raw))
        return names

    def apply(self, upserts: Iterable[FileRecord], removals: Iterable[tuple[str, str]]) -> None:
        """Record synced files and forget removed ones, in one SQLite transaction."""
        now = time.time()
        with self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.executemany("DELETE FROM synced_files WHERE folder_id = ? AND path = ?", list(removals))
            self._conn.executemany(
                "INSERT OR REPLACE INTO synced_files VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(r.folder_id, r.path, r.sha256, r.config, r.kind, r.pages, json.dumps(r.chunk_ids),
                  json.dumps(r.screenshots), now) for r in upserts])

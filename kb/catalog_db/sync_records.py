"""Folder sync records in the shared catalog database, for knowledge banks several servers write.

The same record manager as ``writers.sync_records`` (one row per synced file: its sha256, settings digest,
chunk ids, screenshots), in the catalog's ``sync_files`` table instead of the KB folder's ``sync.sqlite``: a
sync that server B runs after A (or takes over from A, killed mid-job) sees what A committed, so it neither
re-extracts unchanged files nor misses the removal of files A had synced.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable

from sqlalchemy import delete, insert, select, tuple_

from kb.catalog_db.database import CatalogDatabase
from kb.catalog_db.tables import sync_files
from writers.sync_records import FileRecord

_FIELDS = (sync_files.c.folder_id, sync_files.c.path, sync_files.c.sha256, sync_files.c.config, sync_files.c.kind,
           sync_files.c.pages, sync_files.c.chunk_ids, sync_files.c.screenshots)


class DatabaseSyncRecords:
    def __init__(self, database: CatalogDatabase, kb_id: str) -> None:
        self.database, self.kb_id = database, kb_id

    def close(self) -> None:
        pass  # the catalog's engine is shared; nothing of this object's own to close

    def files(self, folder_id: str) -> dict[str, FileRecord]:
        with self.database.read() as conn:
            rows = conn.execute(select(*_FIELDS).where(sync_files.c.kb_id == self.kb_id,
                                                       sync_files.c.folder_id == folder_id)).all()
        return {row[1]: FileRecord(*row[:6], json.loads(row[6]), json.loads(row[7])) for row in rows}

    def all_screenshots(self) -> set[str]:
        names: set[str] = set()
        with self.database.read() as conn:
            for (raw,) in conn.execute(select(sync_files.c.screenshots).where(sync_files.c.kb_id == self.kb_id)):
                names.update(json.loads(raw))
        return names

    def apply(self, upserts: Iterable[FileRecord], removals: Iterable[tuple[str, str]]) -> None:
        """Record synced files and forget removed ones, in one transaction (delete then insert: portable)."""
        rows = [{"kb_id": self.kb_id, "folder_id": r.folder_id, "path": r.path, "sha256": r.sha256,
                 "config": r.config, "kind": r.kind, "pages": r.pages, "chunk_ids": json.dumps(r.chunk_ids),
                 "screenshots": json.dumps(r.screenshots), "synced_at": time.time()} for r in upserts]
        keys = list(removals) + [(r["folder_id"], r["path"]) for r in rows]
        with self.database.engine.connect() as conn:
            conn.execution_options(kb_write=True)
            with conn.begin():
                for start in range(0, len(keys), 500):
                    conn.execute(delete(sync_files).where(
                        sync_files.c.kb_id == self.kb_id,
                        tuple_(sync_files.c.folder_id, sync_files.c.path).in_(keys[start:start + 500])))
                if rows:
                    conn.execute(insert(sync_files), rows)

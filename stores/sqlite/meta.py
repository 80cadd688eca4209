"""SQLite plumbing shared by the drivers: durable connections, one per thread, and the generation pointer.

Every driver keeps its commit point in a SQLite database in the KB folder (WAL, ``synchronous=FULL``):
a ``meta`` table holds the committed ``generation`` and the vector ``dimension``.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path


def connect_durable(path: Path, page_size: int | None = None) -> sqlite3.Connection:
    """A connection in WAL mode with full fsyncs. ``page_size`` applies only to a database created here (SQLite
    fixes a WAL database's page size when it creates it)."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=60.0)
    try:
        if page_size is not None:
            conn.execute(f"PRAGMA page_size={int(page_size)}")
        conn.execute("PRAGMA journal_mode=WAL")  # fails on a full disk that has no room for the WAL index
        conn.execute("PRAGMA synchronous=FULL")
    except BaseException:
        conn.close()  # now, not when the exception's traceback lets go of it
        raise
    return conn


class ThreadConnections:
    """One connection per thread (SQLite connections must not be shared across concurrent threads)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()

    def get(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = connect_durable(self.path)
        return conn

    def close(self) -> None:
        """Close the calling thread's connection (other threads' close when they end)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


def create_meta(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    conn.execute("INSERT OR IGNORE INTO meta VALUES ('generation', '0'), ('dimension', '')")


def read_meta(conn: sqlite3.Connection) -> tuple[int, int | None]:
    """(committed generation, vector dimension or None while the store holds no vector)."""
    meta = dict(conn.execute("SELECT key, value FROM meta WHERE key IN ('generation', 'dimension')"))
    return int(meta["generation"]), (int(meta["dimension"]) if meta["dimension"] else None)

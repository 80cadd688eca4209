"""How a process learns that the catalog changed, without a database round trip per request.

Every catalog change increments ``catalog_state.version`` in its own transaction. Caches of settings and keys
are valid for one version. Reading that version is what differs:

- SQLite (one machine): read on every call, on this thread's own ``sqlite3`` connection. A WAL read of one
  row costs microseconds and makes a change visible to every process of the machine on its next request.
- PostgreSQL (several servers): a daemon thread reads it every ``POLL_SECONDS`` and requests compare with the
  number in memory, so the cache-hit path makes no round trip and a change reaches every server within a
  poll interval (plus the read's latency). A change made by this process is seen by it at once
  (``saw``, from the transaction that made it). While the database is unreachable the last version stays:
  cached settings and keys keep serving.
"""

from __future__ import annotations

import logging
import sqlite3
import threading

from sqlalchemy import Engine, select
from sqlalchemy.engine import URL

from kb.catalog_db.tables import catalog_state

log = logging.getLogger(__name__)

POLL_SECONDS = 0.2
_VERSION_SQL = "SELECT version FROM catalog_state WHERE id = 1"


class ChangeWatch:
    def __init__(self, engine: Engine, url: URL, poll_seconds: float = POLL_SECONDS) -> None:
        self._engine = engine
        self._sqlite_path = url.database if url.get_backend_name() == "sqlite" else None
        self._poll_seconds = poll_seconds
        self._local = threading.local()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._version = -1 if self._sqlite_path else self._read_database()

    def version(self) -> int:
        """The catalog's version: a cache built at another version is stale."""
        if self._sqlite_path is not None:
            return self._read_sqlite()
        if self._thread is None:
            self._start()
        return self._version

    def saw(self, version: int) -> None:
        """This process committed a change that made the catalog ``version``: its own caches go at once."""
        with self._lock:
            self._version = max(self._version, version)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self._stop = threading.Event()  # a closed client used again polls again
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def _read_sqlite(self) -> int:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self._sqlite_path or "", isolation_level=None, timeout=30.0,
                                   check_same_thread=False)
            self._local.conn = conn
        return int(conn.execute(_VERSION_SQL).fetchone()[0])

    def _read_database(self) -> int:
        with self._engine.connect() as conn:
            return int(conn.execute(select(catalog_state.c.version).where(catalog_state.c.id == 1)).scalar_one())

    def _start(self) -> None:
        with self._lock:
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._poll, name="kb-catalog-watch", daemon=True)
                self._thread.start()

    def _poll(self) -> None:
        failing = False
        while not self._stop.wait(self._poll_seconds):
            try:
                version = self._read_database()
            except Exception as exc:  # the database is down or unreachable: keep serving what is cached
                if not failing:
                    log.warning("cannot read the catalog's version (%s); cached settings and keys stay in use",
                                type(exc).__name__)
                failing = True
                continue
            if failing:
                log.info("the catalog database answers again")
                failing = False
            self.saw(version)

"""WAL checkpoints on a thread of their own, after a writer's commit instead of inside it.

By default SQLite checkpoints in the connection that commits, once the WAL passes 1000 pages: the ``COMMIT``
of a 100k-chunk bulk load copied its 146 MB of frames into the database file and fsynced it before
returning, 0.2-0.3 s of its 0.5-0.8 s commit. That copy adds nothing to durability: with
``synchronous=FULL`` the commit is durable once the WAL is fsynced, and recovery replays the WAL. SQLite's
documentation suggests exactly this split for applications that mind commit latency: turn the automatic
checkpoint off and checkpoint "in a separate thread or process" (https://www.sqlite.org/wal.html,
"Automatic Checkpoint" and "Application-Initiated Checkpoints").

So a writer's connection runs with ``wal_autocheckpoint=0`` and, after each commit, ``request()`` starts a
passive checkpoint here: readers and the next writer go on while it copies (a passive checkpoint takes no lock
they wait for). Its connection is opened before ``request`` returns, so the writer closing its own is never
the database's last close (that one checkpoints too, synchronously).

The thread is not a daemon: a process that ends right after a commit lets the checkpoint finish first. If
the process is killed instead, nothing is lost: the WAL still holds every committed frame and the next
checkpoint copies them.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path

from stores.sqlite_meta import connect_durable

log = logging.getLogger(__name__)


class BackgroundCheckpoints:
    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._last: threading.Thread | None = None  # still closing its connection after _thread is cleared
        self._again = False
        self.completed = 0  # checkpoints run (for tests and logs)

    def request(self) -> None:
        """Checkpoint soon: now on a new thread, or once more when the running one is done."""
        with self._lock:
            if self._thread is not None:
                self._again = True
                return
            try:
                conn = connect_durable(self.db_path)
            except sqlite3.Error as exc:  # the WAL stays as it is; the next commit asks again
                log.warning("kb: could not open %s to checkpoint its WAL: %s", self.db_path, exc)
                return
            self._thread = self._last = threading.Thread(target=self._run, args=(conn,), name="kb-wal-checkpoint")
            self._thread.start()

    def _run(self, conn: sqlite3.Connection) -> None:
        try:
            while True:
                with self._lock:
                    self._again = False
                try:
                    busy, frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    self.completed += 1
                    if busy or copied < frames:  # readers on older snapshots: the next checkpoint goes on
                        log.debug("kb: checkpoint of %s copied %d of %d frames", self.db_path, copied, frames)
                except sqlite3.Error as exc:
                    log.warning("kb: background checkpoint of %s failed (the WAL keeps the data): %s",
                                self.db_path, exc)
                with self._lock:
                    if not self._again:
                        self._thread = None
                        return
        finally:
            conn.close()

    def wait(self) -> None:
        """Wait for the checkpoints requested so far (before the folder is removed, say)."""
        while True:
            with self._lock:
                thread, last = self._thread, self._last
            if thread is None:
                if last is not None and last is not threading.current_thread():
                    last.join()
                return
            thread.join()

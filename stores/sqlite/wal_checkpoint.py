"""WAL checkpoints on a thread of their own, after a writer's commit instead of inside it.

By default SQLite checkpoints in the connection that commits, once the WAL passes 1000 pages: the ``COMMIT``
of a 100k-chunk bulk load copied its 146 MB of frames into the database file and fsynced it before
returning, 0.2-0.3 s of its 0.5-0.8 s commit. That copy adds nothing to durability: with
``synchronous=FULL`` the commit is durable once the WAL is fsynced, and recovery replays the WAL. SQLite's
documentation suggests exactly this split for applications that mind commit latency: turn the automatic
checkpoint off and checkpoint "in a separate thread or process" (https://www.sqlite.org/wal.html,
"Automatic Checkpoint" and "Application-Initiated Checkpoints").

So a writer's connection runs with ``wal_autocheckpoint=0`` and, after each commit, ``after_commit()`` starts
a passive checkpoint here once the WAL holds ``CHECKPOINT_FRAMES`` pages not yet copied (SQLite's own default
threshold: small commits are copied together, as before): readers and the next writer go on while it copies
(a passive checkpoint takes no lock they wait for). Its connection is opened before ``after_commit`` returns, so
the writer closing its own is never the database's last close (that one checkpoints too, synchronously).

The thread is not a daemon: a process that ends right after a commit lets the checkpoint finish first. If
the process is killed instead, nothing is lost: the WAL still holds every committed frame and the next
checkpoint copies them.
"""

from __future__ import annotations

import logging
import sqlite3
import sys
import threading
from pathlib import Path

from stores.sqlite.meta import connect_durable

log = logging.getLogger(__name__)

CHECKPOINT_FRAMES = 1000  # SQLite's default wal_autocheckpoint
# In the -shm file (https://www.sqlite.org/walformat.html): the first WalIndexHdr's mxFrame (the WAL's last
# valid frame) and WalCkptInfo's nBackfill (frames already copied), both 32-bit in the machine's byte order.
_MX_FRAME_AT, _BACKFILL_AT = 16, 96


def pending_frames(db_path: Path) -> int | None:
    """Frames in the WAL not checkpointed yet, read from the wal-index without a lock (a torn read only
    moves the next checkpoint by a commit); None when there is no wal-index to read."""
    try:
        with open(f"{db_path}-shm", "rb") as shm:
            head = shm.read(_BACKFILL_AT + 4)
    except OSError:
        return None
    if len(head) < _BACKFILL_AT + 4:
        return None
    frames = int.from_bytes(head[_MX_FRAME_AT : _MX_FRAME_AT + 4], sys.byteorder)
    copied = int.from_bytes(head[_BACKFILL_AT : _BACKFILL_AT + 4], sys.byteorder)
    return max(0, frames - copied)


class BackgroundCheckpoints:
    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._last: threading.Thread | None = None  # still closing its connection after _thread is cleared
        self._again = False
        self.completed = 0  # checkpoints run (for tests and logs)

    def after_commit(self) -> None:
        """Checkpoint in the background if the WAL holds enough uncopied frames (or if that cannot be read).
        Never raises: the commit it follows has landed, and a checkpoint left undone loses nothing."""
        try:
            pending = pending_frames(self.db_path)
            if pending is None or pending >= CHECKPOINT_FRAMES:
                self.request()
        except Exception as exc:  # e.g. no thread can be started: the next commit, or the last close, copies
            log.warning("kb: no background checkpoint of %s after a commit: %s", self.db_path, exc)

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
            thread = threading.Thread(target=self._run, args=(conn,), name="kb-wal-checkpoint")
            try:
                thread.start()
            except BaseException:  # no thread: nothing is left looking as if one ran (the next request tries)
                conn.close()
                raise
            self._thread = self._last = thread

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

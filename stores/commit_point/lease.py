"""A knowledge bank's writer lease in the shared database: the flock's replacement across servers (issue 28).

``kb_lease`` has one row per knowledge bank: holder, expiry (the database's clock) and an epoch that only
grows. Taking the lease (free, or expired) sets the holder, adds one to the epoch and writes that epoch into
``kb_commit`` in the same transaction, so only the newest holder's compare-and-set commit can match.

A renewal thread extends the lease every third of its length while the writer lives. A renewal thread rather
than renew-on-each-write: a writer may embed for longer than a lease between two writes, and it is still
alive. A process that is paused (a long GC, SIGSTOP, a partition) stops renewing with everything else, so its
lease lapses and a successor may take it; the paused writer's commit then matches no row (fenced).

``check()`` is the writer's local guard before each store write: it refuses once the lease may have lapsed
(measured on this process's monotonic clock from the moment the last renewal was *sent*, so it errs early).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid

from sqlalchemy import Engine, or_, update
from sqlalchemy.exc import SQLAlchemyError

from kb_base.errors import StoreUnavailableError, WriterBusyError, WriterFencedError
from stores.commit_point.schema import database_now, kb_commit, kb_lease

log = logging.getLogger(__name__)

LEASE_SECONDS = 30.0  # a crashed writer blocks the knowledge bank at most this long


def lease_seconds() -> float:
    """``KB_WRITER_LEASE_SECONDS`` (default 30): how long a crashed writer can block its knowledge bank, and so
    how long a live writer may go without reaching the database (a long GC, a partition) before it is fenced."""
    raw = os.environ.get("KB_WRITER_LEASE_SECONDS")
    if not raw:
        return LEASE_SECONDS
    try:
        seconds = float(raw)
    except ValueError:
        raise ValueError(f"KB_WRITER_LEASE_SECONDS={raw!r} is not a number of seconds") from None
    if not 3.0 <= seconds <= 3600.0:
        raise ValueError(f"KB_WRITER_LEASE_SECONDS={raw!r} is out of range: use 3 to 3600 seconds")
    return seconds


class Lease:
    """One writer's hold on one knowledge bank: ``acquire``, renewed in the background, ``release``."""

    def __init__(self, engine: Engine, kb_id: str, seconds: float | None = None) -> None:
        self.engine, self.kb_id = engine, kb_id
        self.seconds = lease_seconds() if seconds is None else float(seconds)
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.epoch = 0
        self.lost = False
        self._valid_until = 0.0  # monotonic
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self, timeout: float) -> int:
        """Take the lease (waiting up to ``timeout`` seconds for a live holder) and return its epoch."""
        deadline = time.monotonic() + timeout
        pause = 0.02
        while True:
            sent = time.monotonic()
            try:
                with self.engine.begin() as conn:
                    now = database_now(self.engine)
                    row = conn.execute(
                        update(kb_lease)
                        .where(kb_lease.c.kb == self.kb_id,
                               or_(kb_lease.c.holder.is_(None), kb_lease.c.expires_at < now))
                        .values(holder=self.holder, expires_at=now + self.seconds, epoch=kb_lease.c.epoch + 1)
                        .returning(kb_lease.c.epoch)).first()
                    if row is not None:
                        conn.execute(update(kb_commit).where(kb_commit.c.kb == self.kb_id).values(epoch=row[0]))
            except SQLAlchemyError as exc:
                raise StoreUnavailableError(f"knowledge bank {self.kb_id}: the commit-point database is "
                                            f"unavailable, no writer can start: {exc}") from exc
            if row is not None:
                self.epoch, self._valid_until = int(row[0]), sent + self.seconds
                self._thread = threading.Thread(target=self._renew_loop, name=f"kb-lease-{self.kb_id}",
                                                daemon=True)
                self._thread.start()
                return self.epoch
            if time.monotonic() >= deadline:
                raise WriterBusyError(f"knowledge bank {self.kb_id} is being written by another writer "
                                      f"({self._holder_now()}); gave up after {timeout:g}s")
            time.sleep(pause)
            pause = min(pause * 2, 0.25)

    def _holder_now(self) -> str:
        try:
            with self.engine.connect() as conn:
                row = conn.execute(kb_lease.select().where(kb_lease.c.kb == self.kb_id)).first()
            return f"held by {row.holder}" if row is not None and row.holder else "just released"
        except SQLAlchemyError:
            return "holder unknown"

    def renew(self) -> bool:
        """Extend the lease now; False when it was taken over (or released). Raises SQLAlchemyError when the
        database cannot be reached (the caller decides: the renewal thread tries again)."""
        sent = time.monotonic()
        with self.engine.begin() as conn:
            now = database_now(self.engine)
            renewed = conn.execute(
                update(kb_lease)
                .where(kb_lease.c.kb == self.kb_id, kb_lease.c.holder == self.holder, kb_lease.c.epoch == self.epoch)
                .values(expires_at=now + self.seconds)).rowcount
        if renewed == 1:
            self._valid_until = sent + self.seconds
            return True
        self.lost = True
        return False

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            try:
                if not self.renew():
                    log.warning("knowledge bank %s: writer lease epoch %d was taken over by another writer; "
                                "this writer can no longer commit", self.kb_id, self.epoch)
                    return
            except SQLAlchemyError as exc:  # keep trying: the lease may still be ours when the database returns
                log.warning("knowledge bank %s: could not renew the writer lease: %s", self.kb_id, exc)

    def check(self) -> None:
        """Raise WriterFencedError if this writer may no longer hold the lease (before each store write)."""
        margin = min(2.0, self.seconds / 6)
        if self.lost or time.monotonic() >= self._valid_until - margin:
            raise WriterFencedError(f"knowledge bank {self.kb_id}: this writer's lease (epoch {self.epoch}) lapsed "
                                    "or was taken over by another writer; its write was not committed")

    def holds(self) -> bool:
        """Still the holder, proven by a renewal now (False when unsure: the database is unreachable)."""
        if self.lost:
            return False
        try:
            return self.renew()
        except SQLAlchemyError:
            return False

    def release(self) -> None:
        """Stop renewing and free the lease (the epoch stays: it only grows). If the database cannot be reached
        the lease lapses by itself."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(self.seconds)  # a renewal stuck on an unreachable database does not hold us up
        if self.lost or not self.epoch:
            return
        try:
            with self.engine.begin() as conn:
                conn.execute(update(kb_lease)
                             .where(kb_lease.c.kb == self.kb_id, kb_lease.c.holder == self.holder,
                                    kb_lease.c.epoch == self.epoch)
                             .values(holder=None, expires_at=None))
        except SQLAlchemyError as exc:
            log.warning("knowledge bank %s: could not release the writer lease (it lapses within %gs): %s",
                        self.kb_id, self.seconds, exc)

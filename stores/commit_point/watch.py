"""Each server's cache of committed generations, so that a search makes no database round trip (issue 28).

Every commit sends ``NOTIFY kb_commit`` with the knowledge bank, the new generation and dimension, inside its
own transaction (PostgreSQL delivers it only if, and once, the commit happens). One thread per process and
database holds a connection that ``LISTEN``s, and writes what it hears into the cache. A search reads the
cache while it is *fresh*: the listener's last round trip to the database (it makes one at least every
``PUMP_SECONDS``, sooner when the socket has something to read) began less than ``FRESH_SECONDS`` ago. A
notification of a commit made before that round trip began has arrived by then, so a cached generation is
never older than the database was ``FRESH_SECONDS`` ago; in practice a commit reaches every server in a few
milliseconds. When the listener is not fresh (its connection broke, a partition), reads go to the database
as before, one round trip each, until it is again.

Correctness rules the code keeps:

- A generation in the cache only grows (``max``): a reader that read the database before a notification of
  a newer commit, and stores after it, cannot move it back.
- A value read from the database is stored only if the read began in the listener's current session (after
  its ``LISTEN``): a commit between an older read and a reconnection would otherwise be missed for ever. A
  new session empties the cache (notifications may have been lost while the connection was down).
- A commit made by this process is in its cache at once (``saw``): a client that wrote through this server
  reads its write on its next search here, without waiting for the notification.
- Writers never read the cache: ``DatabaseLedger.begin`` reads the committed generation from the database
  under its lease (a stale C there would make the writer clean up a committed generation).

SQLite URLs (one machine, tests) have no cache: every read goes to the file, which costs microseconds.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import selectors
import threading
import time
from typing import Any

from sqlalchemy import Connection, Engine, func
from sqlalchemy import select as sql_select

log = logging.getLogger(__name__)

CHANNEL = "kb_commit"
PUMP_SECONDS = 0.25  # the listener's round trip when nothing arrives: proves the connection alive
FRESH_SECONDS = 1.0  # the cache answers only while the listener's last round trip is younger than this
RETRY_SECONDS = 1.0  # between attempts to reconnect the listener

Committed = tuple[int, int | None]


def notify_commit(conn: Connection, kb_id: str, generation: int | None, dimension: int | None) -> None:
    """In the commit's transaction: tell every server's listener (PostgreSQL only; a no-op on SQLite).
    ``generation`` None: the knowledge bank was deleted (notifications arrive in commit order, so this one
    comes after every commit's)."""
    if conn.dialect.name != "postgresql":
        return
    payload = json.dumps({"kb": kb_id, "g": generation, "d": dimension})
    conn.execute(sql_select(func.pg_notify(CHANNEL, payload)))


class GenerationWatch:
    """The committed generations one process has seen on one database, kept current by LISTEN/NOTIFY."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.listens = engine.dialect.name == "postgresql"
        self._values: dict[str, Committed] = {}
        self._lock = threading.Lock()
        self._session = 0  # bumped by every (re)connection of the listener; 0: never connected
        self._connected = False
        self._fresh_until = 0.0  # monotonic
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    # --- what readers and writers call --------------------------------------------------------------

    def cached(self, kb_id: str) -> Committed | None:
        """The committed (generation, dimension) if the cache holds it and is fresh, else None."""
        if not self.listens:
            return None
        self._ensure_listener()
        with self._lock:
            if not self._connected or time.monotonic() >= self._fresh_until:
                return None
            return self._values.get(kb_id)

    def session(self) -> int:
        """Take this before a database read; hand it to ``store`` with what was read."""
        with self._lock:
            return self._session if self._connected else -1

    def store(self, kb_id: str, value: Committed, session: int) -> None:
        """A value read from the database, if that read began in the listener's current session."""
        with self._lock:
            if session == self._session and self._connected:
                self._raise_to(kb_id, value)

    def saw(self, kb_id: str, value: Committed) -> None:
        """This process committed ``value``: in the cache at once (a notification can only confirm it)."""
        with self._lock:
            if self._connected:
                self._raise_to(kb_id, value)

    def forget(self, kb_id: str) -> None:
        with self._lock:
            self._values.pop(kb_id, None)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _raise_to(self, kb_id: str, value: Committed) -> None:
        known = self._values.get(kb_id)
        if known is None or value[0] > known[0] or (value[0] == known[0] and known[1] is None):
            self._values[kb_id] = value

    # --- the listener ------------------------------------------------------------------------------

    def _ensure_listener(self) -> None:
        if self._thread is not None and self._pid == os.getpid():
            return
        with self._lock:
            if self._thread is None or self._pid != os.getpid():  # a forked child listens for itself
                self._pid, self._connected = os.getpid(), False
                self._thread = threading.Thread(target=self._listen_loop, name="kb-commit-listener", daemon=True)
                self._thread.start()

    def _listen_loop(self) -> None:
        failing = False
        while not self._stop.is_set():
            raw: Any = None
            try:
                raw = self._connect()
                if failing:
                    log.info("the commit-point database answers again: generations are cached again")
                failing = False
                self._pump(raw)
            except Exception as exc:  # the database is down or unreachable: readers go to it (or their last read)
                if not failing:
                    log.warning("commit-point listener lost its database connection (%s: %s); searches read "
                                "the committed generation from the database until it is back",
                                type(exc).__name__, exc)
                failing = True
            finally:
                with self._lock:
                    self._connected = False
                if raw is not None:
                    try:
                        raw.close()
                    except Exception:  # noqa: BLE001 - a broken connection may not close cleanly
                        pass
            self._stop.wait(RETRY_SECONDS)

    def _connect(self) -> Any:
        """A connection of its own (not the pool's), in autocommit, listening; a new session begins."""
        pooled = self.engine.raw_connection()
        raw = pooled.driver_connection
        pooled.detach()  # the listener keeps it for as long as it lives
        raw.autocommit = True
        # pg8000 keeps at most 100 undelivered notifications by default; a burst of commits must not drop any
        if isinstance(getattr(raw, "notifications", None), collections.deque):
            raw.notifications = collections.deque()
        cursor = raw.cursor()
        cursor.execute(f"LISTEN {CHANNEL}")
        with self._lock:
            self._session += 1
            self._values.clear()  # notifications may have been missed while no connection listened
            self._connected = True
            self._fresh_until = time.monotonic() + FRESH_SECONDS
        return raw

    def _pump(self, raw: Any) -> None:
        """Read what the server sends: a round trip when the socket is readable, or every PUMP_SECONDS."""
        sock = getattr(raw, "_usock", None)  # pg8000's socket: wake as soon as a notification arrives
        # a selector (epoll), not select.select: a busy server has file descriptors above 1023, which select()
        # refuses, and a listener that never became ready would send every search to the database
        waiter = selectors.DefaultSelector()
        if sock is not None:
            waiter.register(sock, selectors.EVENT_READ)
        cursor = raw.cursor()
        try:
            self._pump_loop(raw, cursor, waiter if sock is not None else None)
        finally:
            waiter.close()

    def _pump_loop(self, raw: Any, cursor: Any, waiter: selectors.BaseSelector | None) -> None:
        while not self._stop.is_set():
            if waiter is not None:
                waiter.select(PUMP_SECONDS)
            else:
                self._stop.wait(PUMP_SECONDS / 5)
            sent = time.monotonic()
            cursor.execute("SELECT 1")  # pg8000 takes in the notifications that came with or before the answer
            cursor.fetchall()
            heard = []
            while raw.notifications:
                heard.append(raw.notifications.popleft())
            with self._lock:
                for _pid, channel, payload in heard:
                    if channel == CHANNEL:
                        self._apply(payload)
                self._fresh_until = sent + FRESH_SECONDS

    def _apply(self, payload: str) -> None:
        try:
            note = json.loads(payload)
            if note["g"] is None:
                self._values.pop(str(note["kb"]), None)
                return
            self._raise_to(str(note["kb"]), (int(note["g"]), None if note["d"] is None else int(note["d"])))
        except (ValueError, KeyError, TypeError):
            log.warning("ignored a malformed commit notification: %r", payload[:200])


_watches: dict[str, GenerationWatch] = {}
_watches_lock = threading.Lock()


def watch_for(engine: Engine) -> GenerationWatch:
    """The one watch of this process for the database of ``engine`` (a pool of reads)."""
    key = engine.url.render_as_string(hide_password=False)
    with _watches_lock:
        watch = _watches.get(key)
        if watch is None:
            watch = _watches[key] = GenerationWatch(engine)
        return watch

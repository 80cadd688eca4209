"""API keys: stored hashed, each with a role per project (reader < writer < admin) or global admin.

A key looks like ``kb_<key id>_<secret>``. Only sha256(secret) is stored;
checks use ``hmac.compare_digest``, so comparison time does not depend on
how much of a guess is right. The key itself is shown once, at creation.

Keys live in the catalog database (``api_keys``; until schema revision 0002 in ``$KB_HOME/keys.sqlite``), so
servers sharing a catalog share their keys. Each process caches the rows it has read for as long as the
catalog's version stays the same (``kb.catalog_db.watch``): on SQLite a revocation or an expiry takes effect
on the next request in every worker; on PostgreSQL within one poll of the version (0.2 s) on every server,
with no database round trip per request. A key's last use is recorded at most once a minute (a write per
request would serialise the workers).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from kb.catalog_db import CatalogDatabase
from kb.catalog_db.tables import api_keys
from kb.config import catalog_location
from kb_base.errors import InvalidInputError, KBError, NotFoundError

LAST_USED_RESOLUTION = 60.0  # seconds: how stale a key's recorded last use may get
_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class ExpiredKeyError(KBError):
    """A key past its expiry: refused like an unknown key, with a message that says why."""

    http_status = 401
    code = "unauthenticated"


def parse_expiry(text: str, now: float | None = None) -> float:
    """``30d``, ``12h``, ``90m``, ``3600s`` from now, or an ISO-8601 date or time (UTC unless it says): epoch."""
    now = time.time() if now is None else now
    match = _DURATION.match(text.strip())
    if match:
        return now + int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInputError(f"expiry {text!r}: give a duration (30d, 12h, 90m, 3600s) or an ISO-8601 "
                                "date or time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    if moment.timestamp() <= now:
        raise InvalidInputError(f"expiry {text!r} is in the past")
    return moment.timestamp()


def _iso(epoch: float | None) -> str | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")

ROLES = ("reader", "writer", "admin")
ROLE_RANK = {role: rank for rank, role in enumerate(ROLES)}


@dataclass
class Principal:
    key_id: str
    name: str
    admin: bool = False
    roles: dict[str, str] = field(default_factory=dict)  # project key -> role

    def role_in(self, project_key: str) -> str | None:
        return "admin" if self.admin else self.roles.get(project_key)

    def can(self, project_key: str, role: str) -> bool:
        held = self.role_in(project_key)
        return held is not None and ROLE_RANK[held] >= ROLE_RANK[role]


ANONYMOUS_ADMIN = Principal(key_id="-", name="auth disabled", admin=True)


def _hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


_KEY_CACHE_SIZE = 10_000
_Row = tuple[str, str, bytes, bool, dict[str, str], float | None, float | None]  # id .. last_used_at


class KeyStore:
    """``location``: an open ``CatalogDatabase`` (the service shares its client's), a SQLite file or a URL."""

    def __init__(self, location: CatalogDatabase | Path | str) -> None:
        self.database = location if isinstance(location, CatalogDatabase) else CatalogDatabase(location)
        self._owns_database = not isinstance(location, CatalogDatabase)
        self._rows: dict[str, _Row | None] = {}  # key id -> its row (None: no such key), at _rows_version
        self._rows_version = -1
        self._lock = threading.Lock()
        self._local = threading.local()
        # PostgreSQL: the last-use write leaves the event loop (a round trip); SQLite: a quick local write
        self._toucher = ThreadPoolExecutor(1, thread_name_prefix="kb-key-touch") if self.database.shared else None

    @classmethod
    def for_home(cls, home: Path) -> KeyStore:
        """The keys of the catalog ``home`` uses (``KB_DATABASE_URL`` when set)."""
        return cls(catalog_location(home))

    def create(self, name: str, admin: bool = False, roles: dict[str, str] | None = None,
               key: str | None = None, expires_at: float | None = None) -> str:
        """A new key (printed once); ``expires_at`` is epoch seconds (``parse_expiry`` reads 30d, ISO dates)."""
        roles = dict(roles or {})
        if expires_at is not None and (not isinstance(expires_at, int | float) or expires_at <= time.time()):
            raise InvalidInputError(f"expires_at must be a time in the future, got {expires_at!r}")
        for project, role in roles.items():
            if role not in ROLES:
                raise InvalidInputError(f"role for project {project!r} must be one of {', '.join(ROLES)}, got {role!r}")
        if key is not None:
            parts = key.split("_", 2)
            if len(parts) != 3 or parts[0] != "kb" or len(parts[2]) < 16:
                raise InvalidInputError("a supplied key must look like kb_<id>_<secret of 16+ characters>")
            key_id, secret = parts[1], parts[2]
        else:
            key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
        for attempt in (1, 2):
            try:
                with self.database.transaction("creating an API key") as conn:
                    conn.execute(delete(api_keys).where(api_keys.c.id == key_id))  # a supplied key replaces its id
                    conn.execute(insert(api_keys).values(id=key_id, name=name, hash=_hash(secret), admin=int(admin),
                                                         roles=json.dumps(roles), created_at=time.time(),
                                                         expires_at=expires_at))
                break
            except IntegrityError:  # servers starting together insert the same bootstrap key: the second retries
                if attempt == 2:
                    raise
        return f"kb_{key_id}_{secret}"

    def authenticate(self, key: str) -> Principal | None:
        parts = key.split("_", 2) if isinstance(key, str) else []
        if len(parts) != 3 or parts[0] != "kb":
            _hash("constant-work")  # same work for malformed keys
            return None
        row = self._row(parts[1])
        expected = row[2] if row else _hash("no-such-key")
        if not hmac.compare_digest(expected, _hash(parts[2])) or row is None:
            return None
        now = time.time()
        if row[5] is not None and now >= row[5]:
            raise ExpiredKeyError(f"API key {row[0]} expired at {_iso(row[5])}")
        if row[6] is None or now - row[6] >= LAST_USED_RESOLUTION:
            with self._lock:
                if self._rows.get(row[0]) is row:  # this process records the use once, not once per request
                    self._rows[row[0]] = (*row[:6], now)
            self._touch(row[0], now)
        return Principal(row[0], row[1], row[3], dict(row[4]))

    def _row(self, key_id: str) -> _Row | None:
        version = self.database.watch.version()
        with self._lock:
            if version != self._rows_version:
                self._rows.clear()
                self._rows_version = version
            elif key_id in self._rows:
                return self._rows[key_id]
        with self.database.read() as conn:
            found = conn.execute(select(api_keys.c.id, api_keys.c.name, api_keys.c.hash, api_keys.c.admin,
                                        api_keys.c.roles, api_keys.c.expires_at, api_keys.c.last_used_at)
                                 .where(api_keys.c.id == key_id)).first()
        row: _Row | None = None if found is None else \
            (found[0], found[1], bytes(found[2]), bool(found[3]), json.loads(found[4]), found[5], found[6])
        with self._lock:
            if self._rows_version == version:
                if len(self._rows) >= _KEY_CACHE_SIZE:  # unknown ids are cached too: bounded
                    self._rows.clear()
                self._rows[key_id] = row
        return row

    def _touch(self, key_id: str, now: float) -> None:
        if self._toucher is not None:
            self._toucher.submit(self._touch_database, key_id, now)
            return
        # its own connection with a short busy timeout: this runs on the event loop, and a busy database must
        # cost a request at most a quarter of a second (the last use is then recorded by a later request)
        conn = getattr(self._local, "touch_conn", None)
        if conn is None:
            conn = sqlite3.connect(self.database.url.database or "", isolation_level=None, timeout=0.25,
                                   check_same_thread=False)
            self._local.touch_conn = conn
        try:
            conn.execute("UPDATE api_keys SET last_used_at = ? WHERE id = ? AND "
                         "(last_used_at IS NULL OR last_used_at < ?)", (now, key_id, now - LAST_USED_RESOLUTION))
        except sqlite3.OperationalError:
            pass

    def _touch_database(self, key_id: str, now: float) -> None:
        # not a catalog change (no version increment): caches of the key stay valid
        try:
            with self.database.engine.begin() as conn:
                conn.execute(update(api_keys).where(api_keys.c.id == key_id,
                                                    (api_keys.c.last_used_at.is_(None))
                                                    | (api_keys.c.last_used_at < now - LAST_USED_RESOLUTION))
                             .values(last_used_at=now))
        except Exception:  # the database is busy or away: a later request records the use
            pass

    def list(self) -> list[dict[str, Any]]:
        """Every key (never a secret): expiry and last use as ISO-8601 UTC (None: never expires / never used)."""
        with self.database.read() as conn:
            rows = conn.execute(select(api_keys.c.id, api_keys.c.name, api_keys.c.admin, api_keys.c.roles,
                                       api_keys.c.created_at, api_keys.c.expires_at, api_keys.c.last_used_at)
                                .order_by(api_keys.c.created_at)).all()
        now = time.time()
        return [{"id": i, "name": n, "admin": bool(a), "roles": json.loads(r), "created_at": c,
                 "expires_at": _iso(e), "expired": e is not None and now >= e, "last_used_at": _iso(u)}
                for i, n, a, r, c, e, u in rows]

    def revoke(self, key_id: str) -> None:
        with self.database.transaction("revoking an API key") as conn:
            if conn.execute(delete(api_keys).where(api_keys.c.id == key_id)).rowcount == 0:
                raise NotFoundError(f"API key {key_id!r} does not exist")

    def close(self) -> None:
        if self._toucher is not None:
            self._toucher.shutdown(wait=True)
        conn = getattr(self._local, "touch_conn", None)
        if conn is not None:
            conn.close()
            self._local.touch_conn = None
        if self._owns_database:
            self.database.close()

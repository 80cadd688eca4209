"""API keys: stored hashed, each with a role per project (reader < writer < admin) or global admin.

A key looks like ``kb_<key id>_<secret>``. Only sha256(secret) is stored;
checks use ``hmac.compare_digest``, so comparison time does not depend on
how much of a guess is right. The key itself is shown once, at creation.

Every request reads the key's row (one indexed SQLite lookup, no cache), so a revocation or an expiry
takes effect on the next request in every worker and every server on the same ``$KB_HOME``. A key may
expire; its last use is recorded at most once a minute (a write per request would serialise the workers).
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
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

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


class KeyStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._local = threading.local()
        conn = self._conn()
        conn.execute("CREATE TABLE IF NOT EXISTS api_keys (id TEXT PRIMARY KEY, name TEXT NOT NULL, "
                     "hash BLOB NOT NULL, admin INTEGER NOT NULL, roles TEXT NOT NULL, created_at REAL)")
        columns = {row[1] for row in conn.execute("PRAGMA table_info(api_keys)")}
        for column in ("expires_at", "last_used_at"):  # keys.sqlite files from before these existed
            if column not in columns:
                try:
                    conn.execute(f"ALTER TABLE api_keys ADD COLUMN {column} REAL")
                except sqlite3.OperationalError as exc:  # another process added it first
                    if "duplicate column" not in str(exc):
                        raise

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=30.0, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            self._local.conn = conn
        return conn

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
        self._conn().execute("INSERT OR REPLACE INTO api_keys (id, name, hash, admin, roles, created_at, expires_at) "
                             "VALUES (?, ?, ?, ?, ?, ?, ?)",
                             (key_id, name, _hash(secret), int(admin), json.dumps(roles), time.time(), expires_at))
        return f"kb_{key_id}_{secret}"

    def authenticate(self, key: str) -> Principal | None:
        parts = key.split("_", 2) if isinstance(key, str) else []
        if len(parts) != 3 or parts[0] != "kb":
            _hash("constant-work")  # same work for malformed keys
            return None
        row = self._conn().execute("SELECT id, name, hash, admin, roles, expires_at, last_used_at FROM api_keys "
                                   "WHERE id = ?", (parts[1],)).fetchone()
        expected = row[2] if row else _hash("no-such-key")
        if not hmac.compare_digest(expected, _hash(parts[2])) or row is None:
            return None
        now = time.time()
        if row[5] is not None and now >= row[5]:
            raise ExpiredKeyError(f"API key {row[0]} expired at {_iso(row[5])}")
        if row[6] is None or now - row[6] >= LAST_USED_RESOLUTION:
            self._touch(row[0], now)
        return Principal(row[0], row[1], bool(row[3]), json.loads(row[4]))

    def _touch(self, key_id: str, now: float) -> None:
        # its own connection with a short busy timeout: this runs on the event loop, and a busy database must
        # cost a request at most a quarter of a second (the last use is then recorded by a later request)
        conn = getattr(self._local, "touch_conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=0.25, check_same_thread=False)
            self._local.touch_conn = conn
        try:
            conn.execute("UPDATE api_keys SET last_used_at = ? WHERE id = ? AND "
                         "(last_used_at IS NULL OR last_used_at < ?)", (now, key_id, now - LAST_USED_RESOLUTION))
        except sqlite3.OperationalError:
            pass

    def list(self) -> list[dict[str, object]]:
        """Every key (never a secret): expiry and last use as ISO-8601 UTC (None: never expires / never used)."""
        rows = self._conn().execute("SELECT id, name, admin, roles, created_at, expires_at, last_used_at "
                                    "FROM api_keys ORDER BY created_at")
        now = time.time()
        return [{"id": i, "name": n, "admin": bool(a), "roles": json.loads(r), "created_at": c,
                 "expires_at": _iso(e), "expired": e is not None and now >= e, "last_used_at": _iso(u)}
                for i, n, a, r, c, e, u in rows]

    def revoke(self, key_id: str) -> None:
        if self._conn().execute("DELETE FROM api_keys WHERE id = ?", (key_id,)).rowcount == 0:
            raise NotFoundError(f"API key {key_id!r} does not exist")

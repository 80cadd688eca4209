"""API keys: stored hashed, each with a role per project (reader < writer < admin) or global admin.

A key looks like ``kb_<key id>_<secret>``. Only sha256(secret) is stored;
checks use ``hmac.compare_digest``, so comparison time does not depend on
how much of a guess is right. The key itself is shown once, at creation.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from kb.errors import InvalidInputError, NotFoundError

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
        self._conn().execute("CREATE TABLE IF NOT EXISTS api_keys (id TEXT PRIMARY KEY, name TEXT NOT NULL, "
                             "hash BLOB NOT NULL, admin INTEGER NOT NULL, roles TEXT NOT NULL, created_at REAL)")

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=30.0, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            self._local.conn = conn
        return conn

    def create(self, name: str, admin: bool = False, roles: dict[str, str] | None = None,
               key: str | None = None) -> str:
        roles = dict(roles or {})
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
        self._conn().execute("INSERT OR REPLACE INTO api_keys VALUES (?, ?, ?, ?, ?, ?)",
                             (key_id, name, _hash(secret), int(admin), json.dumps(roles), time.time()))
        return f"kb_{key_id}_{secret}"

    def authenticate(self, key: str) -> Principal | None:
        parts = key.split("_", 2) if isinstance(key, str) else []
        if len(parts) != 3 or parts[0] != "kb":
            _hash("constant-work")  # same work for malformed keys
            return None
        row = self._conn().execute("SELECT id, name, hash, admin, roles FROM api_keys WHERE id = ?",
                                   (parts[1],)).fetchone()
        expected = row[2] if row else _hash("no-such-key")
        if not hmac.compare_digest(expected, _hash(parts[2])) or row is None:
            return None
        return Principal(row[0], row[1], bool(row[3]), json.loads(row[4]))

    def list(self) -> list[dict[str, object]]:
        rows = self._conn().execute("SELECT id, name, admin, roles, created_at FROM api_keys ORDER BY created_at")
        return [{"id": i, "name": n, "admin": bool(a), "roles": json.loads(r), "created_at": c}
                for i, n, a, r, c in rows]

    def revoke(self, key_id: str) -> None:
        if self._conn().execute("DELETE FROM api_keys WHERE id = ?", (key_id,)).rowcount == 0:
            raise NotFoundError(f"API key {key_id!r} does not exist")

"""The catalog: projects, knowledge banks, managed folders and connections, in SQLite.

One small SQLite database under ``$KB_HOME``. Every change is one
transaction, so a crash never leaves a knowledge bank half-registered.
Settings are JSON documents; connection secrets live only here and are
never returned by ``describe`` methods or written to logs.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import sqlite3
import string
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kb_base.disk import disk_full_error, is_disk_full
from kb_base.errors import AlreadyExistsError, InvalidInputError, NotFoundError
from kb_base.input_checks import check_value

log = logging.getLogger(__name__)

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS projects (
        key TEXT PRIMARY KEY, name TEXT NOT NULL, created_at REAL NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS knowledge_banks (
        id TEXT PRIMARY KEY, project_key TEXT NOT NULL REFERENCES projects(key),
        name TEXT NOT NULL, settings TEXT NOT NULL, created_at REAL NOT NULL,
        UNIQUE (project_key, name))""",
    """CREATE TABLE IF NOT EXISTS managed_folders (
        id TEXT PRIMARY KEY, project_key TEXT NOT NULL REFERENCES projects(key),
        name TEXT NOT NULL, created_at REAL NOT NULL, UNIQUE (project_key, name))""",
    """CREATE TABLE IF NOT EXISTS connections (
        name TEXT PRIMARY KEY, type TEXT NOT NULL, params TEXT NOT NULL, created_at REAL NOT NULL)""",
]

PROJECT_KEY_RE = re.compile(r"^[A-Za-z0-9_]{1,64}$")
CONNECTION_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_ID_ALPHABET = string.ascii_letters + string.digits


def new_id(length: int = 8) -> str:
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(length))


def check_name(kind: str, name: Any) -> str:
    if not isinstance(name, str) or not name.strip() or len(name) > 200 or not name.isprintable():
        raise InvalidInputError(f"{kind} name must be a non-empty printable string of at most 200 characters")
    return name


def settings_json(settings: Any, owner: str) -> str:
    """Settings as JSON text, after the checks every stored value passes (no lone surrogates, NUL, NaN,
    integers beyond 64 bits, deep nesting), so what is read back is what was meant."""
    return json.dumps(check_value(settings, f"{owner}: settings"), allow_nan=False)


class Catalog:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self.transaction() as conn:
            for statement in _SCHEMA:
                conn.execute(statement)

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=30.0, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            self._local.conn = conn
        return conn

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException as exc:
            self._roll_back(conn)
            if is_disk_full(exc):
                raise disk_full_error(exc, "a catalog change (settings, knowledge bank, folder)") from exc
            raise

    def _roll_back(self, conn: sqlite3.Connection) -> None:
        """Undo a failed change; if even the ROLLBACK fails (a full disk, an I/O error), close the connection
        so that its write lock goes now, not whenever this thread next touches the catalog."""
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        except sqlite3.Error:
            log.warning("catalog rollback failed; closing this thread's catalog connection", exc_info=True)
            self._local.conn = None
            conn.close()

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return self._conn().execute(sql, params).fetchall()

    # --- projects -----------------------------------------------------------------------------

    def create_project(self, key: str, name: str | None = None) -> None:
        if not isinstance(key, str) or not PROJECT_KEY_RE.match(key):
            raise InvalidInputError(f"invalid project key {key!r}: use 1-64 letters, digits or underscores")
        with self.transaction() as conn:
            if conn.execute("SELECT 1 FROM projects WHERE key = ?", (key,)).fetchone():
                raise AlreadyExistsError(f"project {key!r} already exists")
            conn.execute("INSERT INTO projects VALUES (?, ?, ?)", (key, name or key, time.time()))

    def ensure_project(self, key: str) -> None:
        with self.transaction() as conn:
            conn.execute("INSERT OR IGNORE INTO projects VALUES (?, ?, ?)", (key, key, time.time()))

    def project(self, key: str) -> dict[str, Any]:
        rows = self.query("SELECT key, name, created_at FROM projects WHERE key = ?", (key,))
        if not rows:
            raise NotFoundError(f"project {key!r} does not exist")
        return {"key": rows[0][0], "name": rows[0][1], "created_at": rows[0][2]}

    def projects(self) -> list[dict[str, Any]]:
        return [{"key": k, "name": n, "created_at": c}
                for k, n, c in self.query("SELECT key, name, created_at FROM projects ORDER BY key")]

    def delete_project(self, key: str) -> None:
        with self.transaction() as conn:
            for table in ("knowledge_banks", "managed_folders"):
                if conn.execute(f"SELECT 1 FROM {table} WHERE project_key = ?", (key,)).fetchone():
                    raise InvalidInputError(f"project {key!r} is not empty: delete its {table.replace('_', ' ')} first")
            conn.execute("DELETE FROM projects WHERE key = ?", (key,))

    # --- knowledge banks ----------------------------------------------------------------------

    def create_knowledge_bank(self, project_key: str, name: str, settings: dict[str, Any]) -> str:
        check_name("knowledge bank", name)
        kb_id = new_id()
        with self.transaction() as conn:
            if not conn.execute("SELECT 1 FROM projects WHERE key = ?", (project_key,)).fetchone():
                raise NotFoundError(f"project {project_key!r} does not exist")
            if conn.execute("SELECT 1 FROM knowledge_banks WHERE project_key = ? AND name = ?",
                            (project_key, name)).fetchone():
                raise AlreadyExistsError(f"project {project_key!r} already has a knowledge bank named {name!r}")
            conn.execute("INSERT INTO knowledge_banks VALUES (?, ?, ?, ?, ?)",
                         (kb_id, project_key, name, settings_json(settings, f"knowledge bank {name!r}"),
                          time.time()))
        return kb_id

    def knowledge_bank(self, project_key: str, kb_id: str) -> dict[str, Any]:
        rows = self.query("SELECT id, name, settings FROM knowledge_banks WHERE project_key = ? AND id = ?",
                          (project_key, kb_id))
        if not rows:
            raise NotFoundError(f"knowledge bank {kb_id!r} does not exist in project {project_key!r}")
        return {"id": rows[0][0], "name": rows[0][1], "settings": json.loads(rows[0][2])}

    def knowledge_bank_settings_text(self, project_key: str, kb_id: str) -> str | None:
        """The stored settings JSON, unparsed (one indexed lookup: how handle caches check they are current)."""
        row = self._conn().execute("SELECT settings FROM knowledge_banks WHERE project_key = ? AND id = ?",
                                   (project_key, kb_id)).fetchone()
        return row[0] if row else None

    def knowledge_banks(self, project_key: str) -> list[dict[str, Any]]:
        rows = self.query("SELECT id, name, settings FROM knowledge_banks WHERE project_key = ? ORDER BY name",
                          (project_key,))
        return [{"id": i, "name": n, "settings": json.loads(s)} for i, n, s in rows]

    def save_knowledge_bank_settings(self, project_key: str, kb_id: str, settings: dict[str, Any]) -> None:
        with self.transaction() as conn:
            cursor = conn.execute("UPDATE knowledge_banks SET settings = ? WHERE project_key = ? AND id = ?",
                                  (settings_json(settings, f"knowledge bank {kb_id!r}"), project_key, kb_id))
            if cursor.rowcount != 1:
                raise NotFoundError(f"knowledge bank {kb_id!r} does not exist in project {project_key!r}")

    def delete_knowledge_bank(self, project_key: str, kb_id: str) -> None:
        with self.transaction() as conn:
            conn.execute("DELETE FROM knowledge_banks WHERE project_key = ? AND id = ?", (project_key, kb_id))

    # --- managed folders ----------------------------------------------------------------------

    def create_managed_folder(self, project_key: str, name: str) -> str:
        check_name("managed folder", name)
        folder_id = new_id()
        with self.transaction() as conn:
            if not conn.execute("SELECT 1 FROM projects WHERE key = ?", (project_key,)).fetchone():
                raise NotFoundError(f"project {project_key!r} does not exist")
            if conn.execute("SELECT 1 FROM managed_folders WHERE project_key = ? AND name = ?",
                            (project_key, name)).fetchone():
                raise AlreadyExistsError(f"project {project_key!r} already has a managed folder named {name!r}")
            conn.execute("INSERT INTO managed_folders VALUES (?, ?, ?, ?)", (folder_id, project_key, name, time.time()))
        return folder_id

    def managed_folder(self, project_key: str, ref: str) -> dict[str, Any]:
        """A folder by id or by name."""
        rows = self.query("SELECT id, name FROM managed_folders WHERE project_key = ? AND (id = ? OR name = ?) "
                          "ORDER BY id = ? DESC", (project_key, ref, ref, ref))
        if not rows:
            raise NotFoundError(f"managed folder {ref!r} does not exist in project {project_key!r}")
        return {"id": rows[0][0], "name": rows[0][1]}

    def managed_folders(self, project_key: str) -> list[dict[str, Any]]:
        rows = self.query("SELECT id, name FROM managed_folders WHERE project_key = ? ORDER BY name", (project_key,))
        return [{"id": i, "name": n} for i, n in rows]

    def delete_managed_folder(self, project_key: str, folder_id: str) -> None:
        with self.transaction() as conn:
            conn.execute("DELETE FROM managed_folders WHERE project_key = ? AND id = ?", (project_key, folder_id))

    # --- connections --------------------------------------------------------------------------

    def save_connection(self, name: str, kind: str, params: dict[str, Any], replace: bool = False) -> None:
        if not isinstance(name, str) or not CONNECTION_NAME_RE.match(name):
            raise InvalidInputError(f"invalid connection name {name!r}: use 1-64 letters, digits, '.', '_' or '-'")
        with self.transaction() as conn:
            exists = conn.execute("SELECT 1 FROM connections WHERE name = ?", (name,)).fetchone()
            if exists and not replace:
                raise AlreadyExistsError(f"connection {name!r} already exists")
            conn.execute("INSERT OR REPLACE INTO connections VALUES (?, ?, ?, ?)",
                         (name, kind, settings_json(params, f"connection {name!r}"), time.time()))

    def connections(self) -> dict[str, dict[str, Any]]:
        return {n: {"type": t, **json.loads(p)} for n, t, p in self.query("SELECT name, type, params FROM connections")}

    def connection(self, name: str) -> dict[str, Any]:
        found = self.connections().get(name)
        if found is None:
            raise NotFoundError(f"connection {name!r} does not exist")
        return found

    def delete_connection(self, name: str) -> None:
        with self.transaction() as conn:
            conn.execute("DELETE FROM connections WHERE name = ?", (name,))

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

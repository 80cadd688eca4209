"""The catalog: projects, knowledge banks, managed folders and connections, in the catalog database.

SQLite under ``$KB_HOME`` on one machine, PostgreSQL (``KB_DATABASE_URL``) shared by several servers; one code
path on SQLAlchemy Core (``kb.catalog_db``). Every change is one transaction, so a crash never leaves a
knowledge bank half-registered. Settings are JSON documents; connection secrets live only here and are never
returned by ``describe`` methods or written to logs. The settings a search reads are cached for as long as the
catalog's version stays the same (``kb.catalog_db.watch``).
"""

from __future__ import annotations

import json
import re
import secrets
import string
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy import delete, desc, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from kb.catalog_db import CatalogDatabase
from kb.catalog_db.tables import connections, knowledge_banks, managed_folders, projects, sync_files
from kb_base.errors import AlreadyExistsError, InUseError, InvalidInputError, NotFoundError
from kb_base.input_checks import check_value

PROJECT_KEY_RE = re.compile(r"^[A-Za-z0-9_]{1,64}$")
CONNECTION_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_ID_ALPHABET = string.ascii_letters + string.digits
# the store types whose commit point can live in the shared database: what a multi-server deployment can serve
SHARED_STORE_TYPES = ("ELASTICSEARCH", "AZURE_AI_SEARCH")
_SETTINGS_CACHE_SIZE = 4096


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


def connection_uses(settings: dict[str, Any], name: str) -> list[str]:
    """Where a knowledge bank's settings name connection ``name``: its store, its embedding model, its reranker."""
    uses = []
    if settings.get("connection") == name:
        uses.append("store")
    model = settings.get("embedding_llm_id")
    if isinstance(model, str) and model.count(":") >= 2 and model.split(":", 2)[1] == name:
        uses.append("embedding model")
    reranker = (settings.get("search") or {}).get("reranker") or {}
    if isinstance(reranker, dict) and reranker.get("connection") == name:
        uses.append("reranker")
    return uses


def check_store_across_servers(settings: dict[str, Any]) -> None:
    """Refuse a knowledge bank that one server's disk would hold: FAISS and embedded Chroma. A CHROMA knowledge
    bank on a Chroma server (with a connection) works: its commit point is in the shared database, and what kb
    keeps beside Chroma is a cache in each server's folder (stores/chroma/shared.py)."""
    store_type = str(settings.get("vector_store_type", "")).upper()
    if store_type in SHARED_STORE_TYPES or (store_type == "CHROMA" and settings.get("connection")):
        return
    what = "embedded Chroma (no connection)" if store_type == "CHROMA" else store_type
    raise InvalidInputError(f"a {what} knowledge bank keeps its data on one server's disk, and this kb serves "
                            "several servers from a shared catalog (KB_DATABASE_URL): use one of "
                            f"{', '.join(SHARED_STORE_TYPES)}, or CHROMA with a connection to a Chroma server")


class Catalog:
    """``location``: the SQLite file, a database URL, or an open ``CatalogDatabase`` to share."""

    def __init__(self, location: str | Path | CatalogDatabase) -> None:
        self.database = location if isinstance(location, CatalogDatabase) else CatalogDatabase(location)
        self._owns_database = not isinstance(location, CatalogDatabase)
        self.path = Path(self.database.url.database or "") if not self.database.shared else None
        self._settings_cache: dict[tuple[str, str], str | None] = {}
        self._settings_version = -1
        self._cache_lock = threading.Lock()

    @property
    def shared(self) -> bool:
        """Several servers may use this catalog at once (a database server, not a SQLite file)."""
        return self.database.shared

    # --- projects -----------------------------------------------------------------------------

    def create_project(self, key: str, name: str | None = None) -> None:
        if not isinstance(key, str) or not PROJECT_KEY_RE.match(key):
            raise InvalidInputError(f"invalid project key {key!r}: use 1-64 letters, digits or underscores")
        try:
            with self.database.transaction("creating a project") as conn:
                if conn.execute(select(projects.c.key).where(projects.c.key == key)).first():
                    raise AlreadyExistsError(f"project {key!r} already exists")
                conn.execute(insert(projects).values(key=key, name=name or key, created_at=time.time()))
        except IntegrityError:  # created by another server between the check and the insert
            raise AlreadyExistsError(f"project {key!r} already exists") from None

    def ensure_project(self, key: str) -> None:
        with self.database.read() as conn:
            if conn.execute(select(projects.c.key).where(projects.c.key == key)).first():
                return
        try:
            self.create_project(key)
        except AlreadyExistsError:
            pass

    def project(self, key: str) -> dict[str, Any]:
        with self.database.read() as conn:
            row = conn.execute(select(projects.c.key, projects.c.name, projects.c.created_at)
                               .where(projects.c.key == key)).first()
        if row is None:
            raise NotFoundError(f"project {key!r} does not exist")
        return {"key": row[0], "name": row[1], "created_at": row[2]}

    def projects(self) -> list[dict[str, Any]]:
        with self.database.read() as conn:
            rows = conn.execute(select(projects.c.key, projects.c.name, projects.c.created_at)
                                .order_by(projects.c.key)).all()
        return [{"key": k, "name": n, "created_at": c} for k, n, c in rows]

    def delete_project(self, key: str) -> None:
        with self.database.transaction("deleting a project") as conn:
            for table in (knowledge_banks, managed_folders):
                if conn.execute(select(table.c.id).where(table.c.project_key == key).limit(1)).first():
                    raise InvalidInputError(f"project {key!r} is not empty: delete its "
                                            f"{table.name.replace('_', ' ')} first")
            conn.execute(delete(projects).where(projects.c.key == key))

    # --- knowledge banks ----------------------------------------------------------------------

    def create_knowledge_bank(self, project_key: str, name: str, settings: dict[str, Any]) -> str:
        check_name("knowledge bank", name)
        if self.shared:
            check_store_across_servers(settings)
        kb_id = new_id()
        text = settings_json(settings, f"knowledge bank {name!r}")
        taken = f"project {project_key!r} already has a knowledge bank named {name!r}"
        try:
            with self.database.transaction("creating a knowledge bank") as conn:
                if not conn.execute(select(projects.c.key).where(projects.c.key == project_key)).first():
                    raise NotFoundError(f"project {project_key!r} does not exist")
                if conn.execute(select(knowledge_banks.c.id).where(knowledge_banks.c.project_key == project_key,
                                                                   knowledge_banks.c.name == name)).first():
                    raise AlreadyExistsError(taken)
                conn.execute(insert(knowledge_banks).values(id=kb_id, project_key=project_key, name=name,
                                                            settings=text, created_at=time.time()))
        except IntegrityError:
            raise AlreadyExistsError(taken) from None
        return kb_id

    def knowledge_bank(self, project_key: str, kb_id: str) -> dict[str, Any]:
        with self.database.read() as conn:
            row = conn.execute(select(knowledge_banks.c.id, knowledge_banks.c.name, knowledge_banks.c.settings)
                               .where(knowledge_banks.c.project_key == project_key,
                                      knowledge_banks.c.id == kb_id)).first()
        if row is None:
            raise NotFoundError(f"knowledge bank {kb_id!r} does not exist in project {project_key!r}")
        return {"id": row[0], "name": row[1], "settings": json.loads(row[2])}

    def knowledge_bank_settings_text(self, project_key: str, kb_id: str) -> str | None:
        """The stored settings JSON, unparsed: how handle caches check they are current (on every search).

        Answered from memory while the catalog's version stays the same: on PostgreSQL that is no round trip
        at all, on SQLite one read of the version row."""
        version = self.database.watch.version()
        key = (project_key, kb_id)
        with self._cache_lock:
            if version != self._settings_version:
                self._settings_cache.clear()
                self._settings_version = version
            elif key in self._settings_cache:
                return self._settings_cache[key]
        with self.database.read() as conn:
            text = conn.execute(select(knowledge_banks.c.settings).where(
                knowledge_banks.c.project_key == project_key, knowledge_banks.c.id == kb_id)).scalar()
        with self._cache_lock:
            if self._settings_version == version:  # a change seen meanwhile: the next call reads afresh
                if len(self._settings_cache) >= _SETTINGS_CACHE_SIZE:
                    self._settings_cache.clear()
                self._settings_cache[key] = text
        return text

    def knowledge_banks(self, project_key: str) -> list[dict[str, Any]]:
        with self.database.read() as conn:
            rows = conn.execute(select(knowledge_banks.c.id, knowledge_banks.c.name, knowledge_banks.c.settings)
                                .where(knowledge_banks.c.project_key == project_key)
                                .order_by(knowledge_banks.c.name)).all()
        return [{"id": i, "name": n, "settings": json.loads(s)} for i, n, s in rows]

    def save_knowledge_bank_settings(self, project_key: str, kb_id: str, settings: dict[str, Any]) -> None:
        if self.shared:
            check_store_across_servers(settings)
        text = settings_json(settings, f"knowledge bank {kb_id!r}")
        with self.database.transaction("saving knowledge bank settings") as conn:
            result = conn.execute(update(knowledge_banks).where(knowledge_banks.c.project_key == project_key,
                                                                knowledge_banks.c.id == kb_id).values(settings=text))
            if result.rowcount != 1:
                raise NotFoundError(f"knowledge bank {kb_id!r} does not exist in project {project_key!r}")

    def delete_knowledge_bank(self, project_key: str, kb_id: str) -> None:
        with self.database.transaction("deleting a knowledge bank") as conn:
            conn.execute(delete(knowledge_banks).where(knowledge_banks.c.project_key == project_key,
                                                       knowledge_banks.c.id == kb_id))
            conn.execute(delete(sync_files).where(sync_files.c.kb_id == kb_id))  # a shared catalog's sync records

    # --- managed folders ----------------------------------------------------------------------

    def create_managed_folder(self, project_key: str, name: str) -> str:
        check_name("managed folder", name)
        folder_id = new_id()
        taken = f"project {project_key!r} already has a managed folder named {name!r}"
        try:
            with self.database.transaction("creating a managed folder") as conn:
                if not conn.execute(select(projects.c.key).where(projects.c.key == project_key)).first():
                    raise NotFoundError(f"project {project_key!r} does not exist")
                if conn.execute(select(managed_folders.c.id).where(managed_folders.c.project_key == project_key,
                                                                   managed_folders.c.name == name)).first():
                    raise AlreadyExistsError(taken)
                conn.execute(insert(managed_folders).values(id=folder_id, project_key=project_key, name=name,
                                                            created_at=time.time()))
        except IntegrityError:
            raise AlreadyExistsError(taken) from None
        return folder_id

    def managed_folder(self, project_key: str, ref: str) -> dict[str, Any]:
        """A folder by id or by name (the id wins when one folder's name is another's id)."""
        with self.database.read() as conn:
            row = conn.execute(select(managed_folders.c.id, managed_folders.c.name)
                               .where(managed_folders.c.project_key == project_key,
                                      or_(managed_folders.c.id == ref, managed_folders.c.name == ref))
                               .order_by(desc(managed_folders.c.id == ref))).first()
        if row is None:
            raise NotFoundError(f"managed folder {ref!r} does not exist in project {project_key!r}")
        return {"id": row[0], "name": row[1]}

    def managed_folders(self, project_key: str) -> list[dict[str, Any]]:
        with self.database.read() as conn:
            rows = conn.execute(select(managed_folders.c.id, managed_folders.c.name)
                                .where(managed_folders.c.project_key == project_key)
                                .order_by(managed_folders.c.name)).all()
        return [{"id": i, "name": n} for i, n in rows]

    def delete_managed_folder(self, project_key: str, folder_id: str) -> None:
        with self.database.transaction("deleting a managed folder") as conn:
            conn.execute(delete(managed_folders).where(managed_folders.c.project_key == project_key,
                                                       managed_folders.c.id == folder_id))

    # --- connections --------------------------------------------------------------------------

    def save_connection(self, name: str, kind: str, params: dict[str, Any], replace: bool = False) -> None:
        if not isinstance(name, str) or not CONNECTION_NAME_RE.match(name):
            raise InvalidInputError(f"invalid connection name {name!r}: use 1-64 letters, digits, '.', '_' or '-'")
        text = settings_json(params, f"connection {name!r}")
        try:
            with self.database.transaction("saving a connection") as conn:
                exists = conn.execute(select(connections.c.name).where(connections.c.name == name)).first()
                if exists and not replace:
                    raise AlreadyExistsError(f"connection {name!r} already exists")
                conn.execute(delete(connections).where(connections.c.name == name))
                conn.execute(insert(connections).values(name=name, type=kind, params=text, created_at=time.time()))
        except IntegrityError:
            raise AlreadyExistsError(f"connection {name!r} already exists") from None

    def connections(self) -> dict[str, dict[str, Any]]:
        with self.database.read() as conn:
            rows = conn.execute(select(connections.c.name, connections.c.type, connections.c.params)).all()
        return {n: {"type": t, **json.loads(p)} for n, t, p in rows}

    def connection(self, name: str) -> dict[str, Any]:
        found = self.connections().get(name)
        if found is None:
            raise NotFoundError(f"connection {name!r} does not exist")
        return found

    def delete_connection(self, name: str) -> None:
        """Delete a connection no knowledge bank uses; InUseError names the ones that still do."""
        with self.database.transaction("deleting a connection") as conn:
            # read in the deleting transaction, so a knowledge bank created meanwhile is seen or waits for us
            rows = conn.execute(select(knowledge_banks.c.project_key, knowledge_banks.c.name,
                                       knowledge_banks.c.settings)).all()
            users = [f"{project}/{kb_name} ({how})" for project, kb_name, text in rows
                     for how in connection_uses(json.loads(text), name)]
            if users:
                shown = ", ".join(sorted(users)[:10]) + (f" and {len(users) - 10} more" if len(users) > 10 else "")
                raise InUseError(f"connection {name!r} is used by {shown}: change or delete those knowledge "
                                 f"banks first")
            conn.execute(delete(connections).where(connections.c.name == name))

    def close(self) -> None:
        if self._owns_database:
            self.database.close()

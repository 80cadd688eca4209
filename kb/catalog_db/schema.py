"""Schema versions of the catalog database, with Alembic: what ``kb db upgrade`` and ``kb db current`` run, and
the check every server and client makes before it uses a catalog.

A release knows its head revision (``HEAD_REVISION``) and refuses a catalog written by a newer kb. A SQLite
catalog (one machine's ``$KB_HOME``) is created at the head on first use, so ``make serve`` needs nothing else
on a new machine, and an older one is upgraded in place on first use, after a copy of it is written beside it
(``catalog.sqlite.before-<revision>``): an embedded library's users should not have to learn a command to keep
opening their own files. PostgreSQL is never created or upgraded implicitly: several servers share it, and an
upgrade is a step an operator takes once per release (``kb db upgrade``), before the servers.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, inspect, text
from sqlalchemy.engine import URL

from kb.catalog_db.engine import describe
from kb_base.errors import KBError

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"
VERSION_TABLE = "kb_schema_version"  # not alembic_version: the database may be shared with other applications
HEAD_REVISION = "0005"
BASELINE_REVISION = "0001"  # the tables release 0.1 created, before the catalog had migrations
PRE_MIGRATIONS = "pre-migrations"  # a catalog from release 0.1: its tables, no version table
_UPGRADE_LOCK = 7_281_028  # PostgreSQL advisory lock key: two `kb db upgrade` at once run one after the other


class CatalogSchemaError(KBError):
    """The catalog database's schema is not the one this release knows: the message names the command to run."""

    http_status = 503
    code = "catalog_schema"


def upgrade_command(url: URL) -> str:
    return f"kb db upgrade --database-url '{describe(url)}'"


def stored_revision(conn: Connection) -> str | None:
    """The catalog's revision, ``PRE_MIGRATIONS`` for a release 0.1 catalog, None for an empty database."""
    tables = set(inspect(conn).get_table_names())
    if VERSION_TABLE in tables:
        row = conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).first()
        return row[0] if row else None
    return PRE_MIGRATIONS if "projects" in tables else None


def known_revisions() -> list[str]:
    """Every revision this release ships, oldest first."""
    return list(reversed([script.revision for script in _script_directory().walk_revisions()]))


def ensure_schema(engine: Engine, url: URL) -> None:
    """Return if the catalog is at this release's head; create an empty SQLite one; else raise, saying why."""
    with engine.connect() as conn:
        revision = stored_revision(conn)
    if revision == HEAD_REVISION:
        return
    upgradable = revision is None or revision == PRE_MIGRATIONS or revision in known_revisions()
    if upgradable and url.get_backend_name() == "sqlite":
        with engine.connect() as conn:
            conn.execution_options(kb_write=True)  # BEGIN IMMEDIATE: the workers of one server race to do it
            with conn.begin():
                before = stored_revision(conn)
                if before == HEAD_REVISION:
                    return
                if before is None:
                    _upgrade(conn, None)
                    log.info("created the catalog at %s (schema revision %s)", describe(url), HEAD_REVISION)
                    return
                copy = _copy_sqlite(url, before)
                _upgrade(conn, before)
                log.warning("upgraded the catalog at %s from %s to schema revision %s; the catalog as it was is "
                            "kept at %s", describe(url), before, HEAD_REVISION, copy)
        return
    raise CatalogSchemaError(refusal(url, revision))


def _copy_sqlite(url: URL, revision: str) -> Path:
    """A consistent copy of the SQLite catalog beside it. Called inside the upgrade's write transaction: no
    writer can change it meanwhile, and a reader (this copy's own connection) is not blocked by that lock."""
    import sqlite3

    copy = Path(f"{url.database}.before-{revision}")
    source, target = sqlite3.connect(url.database), sqlite3.connect(copy)
    try:
        source.backup(target)  # SQLite's online backup API
    finally:
        source.close()
        target.close()
    return copy


def refusal(url: URL, revision: str | None) -> str:
    where = f"the catalog database {describe(url)}"
    if revision is None:
        return f"{where} has no kb schema yet: run `{upgrade_command(url)}` once, before starting the servers"
    if revision == PRE_MIGRATIONS or revision in known_revisions():
        was = "from kb 0.1 (before schema versions)" if revision == PRE_MIGRATIONS else f"at revision {revision}"
        return (f"{where} is {was}, older than this release's schema ({HEAD_REVISION}): back it up, then run "
                f"`{upgrade_command(url)}` (stop servers of the older release first)")
    return (f"{where} is at schema revision {revision!r}, which this kb release does not know (its newest is "
            f"{HEAD_REVISION}): it was upgraded by a newer kb; run that release here")


def upgrade(engine: Engine) -> tuple[str | None, str]:
    """Bring the catalog to this release's head; (revision before, revision after)."""
    with engine.connect() as conn:
        conn.execution_options(kb_write=True)
        with conn.begin():
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _UPGRADE_LOCK})
            before = stored_revision(conn)
            if before not in (None, PRE_MIGRATIONS) and before not in known_revisions():
                raise CatalogSchemaError(refusal(engine.url, before))
            if before != HEAD_REVISION:
                _upgrade(conn, before)
    return before, HEAD_REVISION


def current(engine: Engine) -> dict[str, Any]:
    """What ``kb db current`` prints: the revision and how it stands against this release."""
    with engine.connect() as conn:
        revision = stored_revision(conn)
    if revision == HEAD_REVISION:
        state = "current"
    elif revision is None:
        state = "empty"
    elif revision == PRE_MIGRATIONS or revision in known_revisions():
        state = "older"
    else:
        state = "newer"
    return {"database": describe(engine.url), "revision": revision, "head": HEAD_REVISION, "state": state}


def _script_directory() -> Any:
    from alembic.script import ScriptDirectory  # alembic reads its scripts: only on an upgrade or a mismatch

    return ScriptDirectory(str(MIGRATIONS))


def _upgrade(conn: Connection, before: str | None) -> None:
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = conn  # migrations/env.py runs on this connection, in its transaction
    if before == PRE_MIGRATIONS:
        command.stamp(config, BASELINE_REVISION)  # release 0.1's tables are the baseline revision's
    command.upgrade(config, "head")

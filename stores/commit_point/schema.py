"""The commit point's tables in a shared database (issue 28), their engine and the database's clock.

``LEDGER_METADATA`` holds the four tables as the code sees them; the catalog's Alembic revision 0003
(``kb/catalog_db/migrations/versions/r0003_commit_point.py``) creates them, with ``kb db upgrade`` (a SQLite
catalog upgrades itself on first use). The code never creates them: one owner of the schema, so that a later
revision that changes them meets the shape it expects. One row per knowledge bank in ``kb_commit`` (committed
generation, vector dimension, the epoch of the lease allowed to commit), ``kb_lease`` (the writer's lease)
and its id map in ``kb_records`` (id -> physical id, generation), as the KB folder's SQLite ledger keeps them;
``kb_meta`` holds a driver's durable notes (Azure AI Search: 'index', 'dirty'); ``kb_changes`` (revision 0005)
the change log of Chroma-server knowledge banks.

Lease times come from the database's clock, never a server's: servers' clocks may disagree, and a lease
must mean the same moment to every one of them.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Double,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    inspect,
    literal_column,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.sql.elements import ColumnElement

from kb_base.errors import InvalidInputError

log = logging.getLogger(__name__)

LEDGER_METADATA = MetaData()

kb_commit = Table(
    "kb_commit", LEDGER_METADATA,
    Column("kb", String(200), primary_key=True),
    Column("generation", BigInteger, nullable=False),
    Column("dimension", Integer, nullable=True),  # None until the first vector is written
    Column("epoch", BigInteger, nullable=False),  # the lease epoch whose holder may commit (compare-and-set)
)
kb_records = Table(
    "kb_records", LEDGER_METADATA,
    Column("kb", String(200), primary_key=True),
    Column("id", String(600), primary_key=True),  # document ids hold at most 512 characters (input_checks)
    Column("physical", Text, nullable=False),
    Column("gen", BigInteger, nullable=False),
)
kb_lease = Table(
    "kb_lease", LEDGER_METADATA,
    Column("kb", String(200), primary_key=True),
    Column("holder", Text, nullable=True),  # None: released
    Column("expires_at", Double, nullable=True),  # the database clock's seconds since 1970
    Column("epoch", BigInteger, nullable=False),  # only grows: +1 each time the lease is taken
)
kb_meta = Table(
    "kb_meta", LEDGER_METADATA,
    Column("kb", String(200), primary_key=True),
    Column("key", String(200), primary_key=True),
    Column("value", Text, nullable=False),
)
# Chroma-server knowledge banks (revision 0005): the ids each generation changed, written with its commit, so
# each server's cache (metadata copy, keyword index) catches up by fetching only those records from Chroma.
kb_changes = Table(
    "kb_changes", LEDGER_METADATA,
    Column("kb", String(200), primary_key=True),
    Column("gen", BigInteger, primary_key=True),
    Column("id", String(600), primary_key=True),
    Column("added", Text, nullable=True),  # the physical record live from ``gen`` on; None: deleted
    Column("retired", Text, nullable=True),  # the older physical record ``gen`` retired (vacuumed later)
)

_engines: dict[tuple[str, bool], Engine] = {}
_engines_lock = threading.Lock()


def normalise_url(url: str) -> str:
    """``postgresql://`` (and ``postgres://``) mean the pg8000 driver, kb's PostgreSQL driver (BSD licensed)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+pg8000://" + url[len(prefix):]
    return url


def engine_for(url: str) -> Engine:
    """The engine (connection pool) for writes to a database URL, one per process."""
    return _engine(normalise_url(url), reads=False)


def read_engine_for(url: str) -> Engine:
    """A second pool for single-statement reads (the committed generation on every search): autocommit, so no
    BEGIN and ROLLBACK round trips, and no pre-ping round trip either. After a database restart the first read
    fails (a 503) and SQLAlchemy replaces every stale connection of the pool; writes keep the pre-ping."""
    return _engine(normalise_url(url), reads=True)


def _engine(url: str, reads: bool) -> Engine:
    with _engines_lock:
        engine = _engines.get((url, reads))
        if engine is None:
            engine = _engines[(url, reads)] = _create(url, reads)
        return engine


def _create(url: str, reads: bool) -> Engine:
    try:
        parsed = make_url(url)
    except Exception as exc:
        raise InvalidInputError(f"not a database URL: {url!r} ({exc})") from exc
    if parsed.get_backend_name() == "sqlite":
        # one machine (and the tests): WAL and full fsyncs, as the KB folder's commit point has
        engine = create_engine(parsed, connect_args={"timeout": 60.0},
                               **({"isolation_level": "AUTOCOMMIT"} if reads else {}))

        @event.listens_for(engine, "connect")
        def durable(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.close()
    elif parsed.get_backend_name() == "postgresql":
        # pre-ping (writes): a pooled connection that died with a database restart is replaced, not handed out
        # a socket timeout: a database host that drops packets must fail a request (503), not hang it forever
        engine = create_engine(parsed, pool_size=5, max_overflow=10,
                               connect_args={"timeout": 10.0 if reads else 30.0},
                               **({"isolation_level": "AUTOCOMMIT"} if reads else {}))
        if not reads:
            ping_on_checkout(engine)
    else:
        raise InvalidInputError(f"database URL {parsed.render_as_string(hide_password=True)!r}: kb's commit point "
                                "runs on PostgreSQL (postgresql://) or SQLite (sqlite:///)")
    return engine


def ping_on_checkout(engine: Engine) -> None:
    """Ping each pooled connection as it is handed out; a dead one is replaced (SQLAlchemy's pessimistic
    disconnect handling). Not ``pool_pre_ping``: that replaces a connection only on a driver error, and pg8000
    lets a reset socket through as a bare ``ConnectionResetError`` (seen after a database restart)."""

    @event.listens_for(engine, "checkout")
    def _ping(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        try:
            cursor = dbapi_connection.cursor()
            try:
                cursor.execute("SELECT 1")
            finally:
                cursor.close()
        except (engine.dialect.loaded_dbapi.Error, OSError) as exc:
            raise DisconnectionError(f"a pooled connection is dead ({type(exc).__name__}: {exc})") from exc


def missing_tables(engine: Engine) -> list[str]:
    """The commit-point tables the database lacks (its schema predates revision 0003, or was never upgraded)."""
    present = set(inspect(engine).get_table_names())
    return [name for name in LEDGER_METADATA.tables if name not in present]


def database_now(engine: Engine) -> ColumnElement[float]:
    """The database's clock in seconds since 1970, as SQL (evaluated where it runs, in the database)."""
    if engine.dialect.name == "postgresql":
        return literal_column("CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS DOUBLE PRECISION)")
    return literal_column("((julianday('now') - 2440587.5) * 86400.0)")


def _forget_after_fork() -> None:
    """A forked child must not share its parent's pooled connections (SQLAlchemy's advice: dispose, not close)."""
    for engine in _engines.values():
        engine.dispose(close=False)


os.register_at_fork(after_in_child=_forget_after_fork)

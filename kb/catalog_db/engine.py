"""The catalog's database engine: SQLite in ``$KB_HOME`` by default, PostgreSQL (pg8000) for several servers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from kb_base.errors import InvalidInputError
from stores.commit_point.schema import ping_on_checkout

SQLITE_BUSY_SECONDS = 30.0
PG_SOCKET_TIMEOUT = 10  # seconds: connect and each read of a catalog query (they are small)


def normalise_url(location: str | Path) -> URL:
    """A SQLAlchemy URL for a SQLite file path or a database URL.

    ``postgresql://`` and ``postgres://`` (what operators and cloud consoles write) mean PostgreSQL through
    pg8000, the driver kb ships with (pure Python, BSD); only SQLite and PostgreSQL are supported.
    """
    if isinstance(location, Path):
        return URL.create("sqlite", database=str(location))
    try:
        url = make_url(location)
    except ArgumentError:
        raise InvalidInputError(f"catalog database URL {location!r} is not a URL: use "
                                "postgresql://user@host/database or sqlite:////path/to/catalog.sqlite") from None
    backend, _, driver = url.drivername.partition("+")
    if backend in ("postgresql", "postgres"):
        if driver not in ("", "pg8000"):
            raise InvalidInputError(f"catalog database driver {driver!r} is not supported: kb talks to "
                                    "PostgreSQL through pg8000 (postgresql:// or postgresql+pg8000://)")
        return url.set(drivername="postgresql+pg8000")
    if backend == "sqlite" and driver in ("", "pysqlite"):
        if not url.database:
            raise InvalidInputError("a SQLite catalog needs a file: sqlite:////path/to/catalog.sqlite")
        return url
    raise InvalidInputError(f"catalog database {url.drivername!r} is not supported: use PostgreSQL "
                            "(postgresql://user@host/database) or SQLite (sqlite:////path/to/catalog.sqlite)")


def describe(url: URL) -> str:
    """The URL as said in messages and logs: never its password."""
    return url.render_as_string(hide_password=True)


def make_engine(url: URL) -> Engine:
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(url)
    # a ping at checkout: a connection the database (or a proxy) closed while idle is replaced, not handed to a
    # request; a socket timeout, so that a database behind a partition fails a request instead of hanging it
    engine = create_engine(url, pool_size=5, max_overflow=10, pool_recycle=1800, pool_timeout=10,
                           connect_args={"timeout": PG_SOCKET_TIMEOUT})
    ping_on_checkout(engine)
    return engine


def _sqlite_engine(url: URL) -> Engine:
    Path(url.database or "").parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_SECONDS, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection: Any, _: Any) -> None:
        # SQLAlchemy, not the sqlite3 module, decides where transactions begin (the module's own implicit
        # transactions never cover DDL, which the migrations need)
        dbapi_connection.isolation_level = None
        dbapi_connection.execute("PRAGMA journal_mode=WAL")
        dbapi_connection.execute("PRAGMA synchronous=FULL")
        dbapi_connection.execute("PRAGMA foreign_keys=ON")

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        # a change takes the write lock at BEGIN, so two writers queue on the busy timeout instead of one
        # failing at its first write with "database is locked" (SQLite cannot upgrade a read lock safely)
        immediate = connection.get_execution_options().get("kb_write", False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine

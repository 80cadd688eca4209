"""One catalog database: its engine, its schema check, its change watch and its transactions."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Connection, select, update
from sqlalchemy.exc import DBAPIError

from kb.catalog_db.engine import describe, make_engine, normalise_url
from kb.catalog_db.schema import ensure_schema
from kb.catalog_db.tables import catalog_state
from kb.catalog_db.watch import ChangeWatch
from kb_base.disk import disk_full_error, is_disk_full


class CatalogDatabase:
    """``location``: a SQLite file (a ``Path``) or a database URL (``postgresql://...``, ``sqlite:///...``)."""

    def __init__(self, location: str | Path) -> None:
        self.url = normalise_url(location)
        self.engine = make_engine(self.url)
        # several servers share a database server; a SQLite file is one machine's
        self.shared = self.url.get_backend_name() != "sqlite"
        try:
            ensure_schema(self.engine, self.url)
        except BaseException:
            self.engine.dispose()
            raise
        self.watch = ChangeWatch(self.engine, self.url)

    def __repr__(self) -> str:
        return f"CatalogDatabase({describe(self.url)!r})"

    def describe(self) -> str:
        """The database as said in messages and logs: never its password."""
        return describe(self.url)

    def ping(self) -> None:
        """One round trip (readiness): raises the driver's error when the database does not answer."""
        with self.engine.connect() as conn:
            conn.execute(select(catalog_state.c.version).where(catalog_state.c.id == 1)).scalar_one()

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            yield conn

    @contextmanager
    def transaction(self, what: str = "a catalog change") -> Iterator[Connection]:
        """One change, all or nothing; it increments the catalog's version, so every cache learns of it."""
        try:
            with self.engine.connect() as conn:
                conn.execution_options(kb_write=True)
                with conn.begin():
                    yield conn
                    version = conn.execute(update(catalog_state).where(catalog_state.c.id == 1)
                                           .values(version=catalog_state.c.version + 1)
                                           .returning(catalog_state.c.version)).scalar_one()
        except DBAPIError as exc:
            if is_disk_full(exc):
                raise disk_full_error(exc, what) from exc
            raise
        self.watch.saw(version)

    def close(self) -> None:
        self.watch.close()
        self.engine.dispose()

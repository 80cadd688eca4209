"""The catalog behaves the same on SQLite and on PostgreSQL, and its caches follow changes made elsewhere.

Every test runs on both: a SQLite file in a temporary home and a database of a real PostgreSQL 15 cluster.
"Elsewhere" is a second ``Catalog``/``KeyStore`` on the same database, as another server holds one.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import kb
from api.keys import ExpiredKeyError, KeyStore
from kb.catalog import Catalog
from kb.catalog_db import CatalogDatabase
from kb.catalog_db.engine import make_engine, normalise_url
from kb.catalog_db.schema import upgrade
from kb.catalog_db.watch import POLL_SECONDS
from tests.support.postgres_server import PostgresServer

_databases = itertools.count()


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer().start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str | Path:
    if request.param == "sqlite":
        return tmp_path / "catalog.sqlite"
    server: PostgresServer = request.getfixturevalue("postgres")
    url = server.create_database(f"catalog_{next(_databases)}")
    engine = make_engine(normalise_url(url))
    upgrade(engine)  # what `kb db upgrade` runs
    engine.dispose()
    return url


@pytest.fixture
def pair(location: str | Path) -> Iterator[tuple[Catalog, Catalog]]:
    """Two catalogs on one database: this server's and another's."""
    here, there = Catalog(location), Catalog(location)
    yield here, there
    here.close()
    there.close()


def _within(check: object, budget: float = 1.0) -> None:
    deadline = time.monotonic() + budget
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"not seen within {budget} s"
        time.sleep(0.01)


def test_projects_knowledge_banks_folders_and_connections(pair: tuple[Catalog, Catalog]) -> None:
    catalog, other = pair
    catalog.create_project("P1", "First")
    with pytest.raises(kb.AlreadyExistsError):
        other.create_project("P1")
    other.ensure_project("P1")
    other.ensure_project("P2")
    assert [p["key"] for p in catalog.projects()] == ["P1", "P2"] and catalog.project("P1")["name"] == "First"
    with pytest.raises(kb.InvalidInputError, match="invalid project key"):
        catalog.create_project("no spaces")
    settings = {"vector_store_type": "ELASTICSEARCH", "connection": "es", "search": {"default_k": 3}, "n": 2**62}
    kb_id = catalog.create_knowledge_bank("P1", "manual", settings)
    with pytest.raises(kb.AlreadyExistsError):
        other.create_knowledge_bank("P1", "manual", settings)
    with pytest.raises(kb.NotFoundError):
        catalog.create_knowledge_bank("NOPE", "x", settings)
    assert other.knowledge_bank("P1", kb_id) == {"id": kb_id, "name": "manual", "settings": settings}
    assert [k["name"] for k in other.knowledge_banks("P1")] == ["manual"]
    folder = catalog.create_managed_folder("P1", "drop")
    assert other.managed_folder("P1", "drop")["id"] == folder == other.managed_folder("P1", folder)["id"]
    with pytest.raises(kb.InvalidInputError, match="not empty"):
        other.delete_project("P1")
    catalog.save_connection("es", "elasticsearch", {"url": "http://es:9200", "api_key": "k"})
    with pytest.raises(kb.AlreadyExistsError):
        other.save_connection("es", "elasticsearch", {"url": "http://other"})
    other.save_connection("es", "elasticsearch", {"url": "http://other"}, replace=True)
    assert catalog.connection("es") == {"type": "elasticsearch", "url": "http://other"}
    other.delete_knowledge_bank("P1", kb_id)
    other.delete_managed_folder("P1", folder)
    catalog.delete_project("P1")
    assert [p["key"] for p in other.projects()] == ["P2"]
    with pytest.raises(kb.NotFoundError):
        other.knowledge_bank("P1", kb_id)


def test_settings_a_search_reads_follow_a_change_made_elsewhere(pair: tuple[Catalog, Catalog]) -> None:
    catalog, other = pair
    catalog.ensure_project("P")
    kb_id = catalog.create_knowledge_bank("P", "k", {"vector_store_type": "ELASTICSEARCH", "search": {}})
    first = other.knowledge_bank_settings_text("P", kb_id)
    assert first is not None and other.knowledge_bank_settings_text("P", kb_id) is first  # from the cache
    catalog.save_knowledge_bank_settings("P", kb_id, {"vector_store_type": "ELASTICSEARCH", "search": {"default_k": 7}})
    _within(lambda: '"default_k": 7' in (other.knowledge_bank_settings_text("P", kb_id) or ""))
    catalog.delete_knowledge_bank("P", kb_id)
    _within(lambda: other.knowledge_bank_settings_text("P", kb_id) is None)
    # this server's own change is seen at once, without waiting for a poll
    kb_id = other.create_knowledge_bank("P", "k2", {"vector_store_type": "ELASTICSEARCH"})
    other.knowledge_bank_settings_text("P", kb_id)
    other.save_knowledge_bank_settings("P", kb_id, {"vector_store_type": "ELASTICSEARCH", "v": 2})
    assert '"v": 2' in (other.knowledge_bank_settings_text("P", kb_id) or "")


def test_one_disk_stores_are_refused_only_on_a_shared_catalog(pair: tuple[Catalog, Catalog]) -> None:
    catalog, _ = pair
    catalog.ensure_project("P")
    for name, settings in (("faiss", {"vector_store_type": "FAISS"}), ("chroma", {"vector_store_type": "CHROMA"})):
        if catalog.shared:
            with pytest.raises(kb.InvalidInputError, match="use one of ELASTICSEARCH, AZURE_AI_SEARCH, or CHROMA "
                                                           "with a connection to a Chroma server$"):
                catalog.create_knowledge_bank("P", name, settings)
        else:
            catalog.create_knowledge_bank("P", name, settings)
    # a Chroma server works across servers (its commit point in the database, stores/chroma/shared.py)
    catalog.create_knowledge_bank("P", "chroma-server", {"vector_store_type": "CHROMA", "connection": "chroma"})
    kb_id = catalog.create_knowledge_bank("P", "es", {"vector_store_type": "ELASTICSEARCH", "connection": "es"})
    if catalog.shared:  # nor can an existing knowledge bank be moved onto one
        with pytest.raises(kb.InvalidInputError, match="embedded Chroma"):
            catalog.save_knowledge_bank_settings("P", kb_id, {"vector_store_type": "CHROMA"})
    assert len(catalog.knowledge_banks("P")) == (2 if catalog.shared else 4)


def test_keys_are_hashed_expire_record_their_use_and_revocation_reaches_other_servers(location: str | Path) -> None:
    here, there = KeyStore(location), KeyStore(location)
    try:
        key = here.create("ops", roles={"P": "writer"})
        principal = there.authenticate(key)
        assert principal is not None and principal.can("P", "writer") and not principal.can("P", "admin")
        assert there.authenticate(key[:-1] + ("x" if key[-1] != "x" else "y")) is None
        assert there.authenticate("kb_nosuch_" + "x" * 20) is None and there.authenticate("garbage") is None
        database = CatalogDatabase(location)
        with database.read() as conn:
            stored = conn.exec_driver_sql("SELECT hash FROM api_keys").scalar_one()
        database.close()
        assert key.split("_", 2)[2].encode() not in bytes(stored)  # the secret may hold "_"
        _within(lambda: here.list()[0]["last_used_at"] is not None)  # PostgreSQL records it off the request
        here.revoke(here.list()[0]["id"])
        _within(lambda: there.authenticate(key) is None, budget=POLL_SECONDS + 0.8)
        with pytest.raises(kb.NotFoundError):
            there.revoke("nosuch")
        brief = here.create("brief", admin=True, expires_at=time.time() + 0.5)
        assert there.authenticate(brief) is not None
        time.sleep(0.6)
        with pytest.raises(ExpiredKeyError, match="expired at"):
            there.authenticate(brief)  # expiry needs no catalog change: the cached row says when
    finally:
        here.close()
        there.close()


def test_concurrent_creates_of_one_name_make_one(pair: tuple[Catalog, Catalog]) -> None:
    catalog, other = pair
    catalog.ensure_project("P")
    outcomes: list[str] = []

    def create(which: Catalog) -> None:
        try:
            which.create_knowledge_bank("P", "same", {"vector_store_type": "ELASTICSEARCH"})
            outcomes.append("created")
        except kb.AlreadyExistsError:
            outcomes.append("exists")

    threads = [threading.Thread(target=create, args=(c,)) for c in (catalog, other) * 3]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["created"] + ["exists"] * 5
    assert [k["name"] for k in catalog.knowledge_banks("P")] == ["same"]

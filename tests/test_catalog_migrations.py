"""Schema versions of the catalog: a release 0.1 home upgraded in place, refusals that name the command to run.

The release 0.1 home is built for real: a knowledge bank written and searchable, then its catalog rewritten
into the 0.1 layout (the tables and DDL of kb/catalog.py at release 0.1, keys in keys.sqlite as api/keys.py
kept them), which is what an operator's home from that release holds.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding

import kb
from api.keys import KeyStore
from kb.catalog import Catalog
from kb.catalog_db import CatalogDatabase, CatalogSchemaError
from kb.catalog_db.schema import HEAD_REVISION, VERSION_TABLE, known_revisions
from kb.custom_models import LangChainEmbeddingModel
from tests.conftest import FAKE_MODEL_ID, FAKE_MODEL_NAME
from tests.support.openai_embeddings_server import free_port
from tests.support.postgres_server import PostgresServer

ROOT = Path(__file__).resolve().parents[1]
KB_BIN = str(Path(sys.executable).parent / "kb")

# release 0.1's DDL, verbatim (kb/catalog.py and api/keys.py of that release)
RELEASE_0_1_CATALOG = [
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
RELEASE_0_1_KEYS = ("CREATE TABLE IF NOT EXISTS api_keys (id TEXT PRIMARY KEY, name TEXT NOT NULL, hash BLOB NOT NULL, "
                    "admin INTEGER NOT NULL, roles TEXT NOT NULL, created_at REAL, expires_at REAL, last_used_at REAL)")
OLD_SECRET = "legacy-secret-0123456789"
DOCS = [Document(page_content=text, metadata={"n": i}) for i, text in enumerate(
    ["Solar panels turn sunlight into electricity.", "Honeybees dance to say where flowers are.",
     "Espresso is brewed by forcing hot water through coffee.", "The error code E1042 means the disk is full."])]


def _client(home: Path) -> kb.EmbeddedClient:
    client = kb.api_client(home=home)
    client.register_embedding_model(LangChainEmbeddingModel(FAKE_MODEL_NAME, DeterministicFakeEmbedding(size=6)))
    return client


def _run(*args: str, home: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("KB_DATABASE_URL", "KB_FOLDERS_ROOT")}
    return subprocess.run([KB_BIN, *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout,
                          env={**env, "KB_HOME": str(home), "HF_HUB_OFFLINE": "1", "KB_WARMUP": "off"})


def make_release_0_1_home(home: Path) -> dict[str, str]:
    """A home as release 0.1 left it: two knowledge banks with documents, a folder, a connection, a key."""
    client = _client(home)
    project = client.create_project("OLD")
    faiss = project.create_knowledge_bank("manual", embedding_llm_id=FAKE_MODEL_ID)
    keywordless = project.create_knowledge_bank("notes", embedding_llm_id=FAKE_MODEL_ID,
                                                settings={"keyword": {"index": False}})
    for handle in (faiss, keywordless):
        with handle.as_core_knowledge_bank().get_writer() as writer:
            writer.as_langchain_vectorstore().add_documents(DOCS)
    folder = project.create_managed_folder("drop")
    client.create_connection("emb", "openai-compatible", {"base_url": "http://127.0.0.1:9/v1", "api_key": "sk-x"})
    client.close()
    new = sqlite3.connect(home / "catalog.sqlite")
    tables = {t: new.execute(f"SELECT * FROM {t}").fetchall()
              for t in ("projects", "knowledge_banks", "managed_folders", "connections")}
    new.close()
    for suffix in ("", "-wal", "-shm"):
        (home / f"catalog.sqlite{suffix}").unlink(missing_ok=True)
    old = sqlite3.connect(home / "catalog.sqlite")
    for statement in RELEASE_0_1_CATALOG:
        old.execute(statement)
    for table, rows in tables.items():
        for row in rows:
            old.execute(f"INSERT INTO {table} VALUES ({', '.join('?' * len(row))})", row)
    old.commit()
    old.close()
    keys = sqlite3.connect(home / "keys.sqlite")
    keys.execute(RELEASE_0_1_KEYS)
    keys.execute("INSERT INTO api_keys (id, name, hash, admin, roles, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                 ("legacy1", "ops", hashlib.sha256(OLD_SECRET.encode()).digest(), 0, json.dumps({"OLD": "reader"}),
                  1.0))
    keys.commit()
    keys.close()
    return {"manual": faiss.id, "notes": keywordless.id, "folder": folder.id}


def _assert_upgraded_and_searchable(home: Path, ids: dict[str, str]) -> None:
    assert json.loads(_run("db", "current", home=home).stdout)["state"] == "current"
    client = _client(home)
    project = client.get_project("OLD")
    assert sorted(i.name for i in project.list_knowledge_banks()) == ["manual", "notes"]
    assert project.get_managed_folder("drop").id == ids["folder"]
    assert [c["name"] for c in client.list_connections()] == ["emb"]
    for name in ("manual", "notes"):
        core = project.get_knowledge_bank(ids[name]).as_core_knowledge_bank()
        assert core.count() == len(DOCS)
        hits = core.as_langchain_vectorstore().similarity_search(DOCS[2].page_content, k=1)
        assert hits[0].page_content == DOCS[2].page_content
    manual = project.get_knowledge_bank(ids["manual"]).as_core_knowledge_bank()
    keyword = manual.search(query="E1042", k=1, search_type="keyword")
    assert keyword[0].text == DOCS[3].page_content
    client.close()
    keys = KeyStore.for_home(home)
    principal = keys.authenticate(f"kb_legacy1_{OLD_SECRET}")
    assert principal is not None and principal.roles == {"OLD": "reader"} and not principal.admin
    keys.close()


def test_a_release_0_1_home_is_upgraded_in_place_on_first_use_keeping_a_copy(tmp_path: Path) -> None:
    home = tmp_path / "home"
    ids = make_release_0_1_home(home)
    assert json.loads(_run("db", "current", home=home).stdout)["state"] == "older"
    kb.api_client(home=home).close()  # a SQLite home upgrades itself, as an embedded library's files should
    copy = home / "catalog.sqlite.before-pre-migrations"
    old = sqlite3.connect(copy)
    assert "kb_schema_version" not in {r[0] for r in old.execute("SELECT name FROM sqlite_master")}
    assert old.execute("SELECT count(*) FROM knowledge_banks").fetchone()[0] == 2  # the catalog as it was
    old.close()
    _assert_upgraded_and_searchable(home, ids)


def test_kb_db_upgrade_upgrades_a_release_0_1_home_explicitly(tmp_path: Path) -> None:
    home = tmp_path / "home"
    ids = make_release_0_1_home(home)
    upgraded = _run("db", "upgrade", "--home", str(home), home=tmp_path / "elsewhere")
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"upgraded from pre-migrations to schema revision {HEAD_REVISION}" in upgraded.stdout
    again = _run("db", "upgrade", home=home)
    assert again.returncode == 0 and "already at" in again.stdout
    _assert_upgraded_and_searchable(home, ids)


def test_a_catalog_from_a_newer_release_is_refused_by_client_server_and_upgrade(tmp_path: Path) -> None:
    home = tmp_path / "home"
    kb.api_client(home=home).close()
    conn = sqlite3.connect(home / "catalog.sqlite")
    conn.execute(f"UPDATE {VERSION_TABLE} SET version_num = '9001'")
    conn.commit()
    conn.close()
    with pytest.raises(CatalogSchemaError, match="'9001', which this kb release does not know"):
        kb.api_client(home=home)
    refused = _run("serve", "--port", str(free_port()), home=home)
    assert refused.returncode == 1 and "does not know" in refused.stderr, refused.stderr
    upgrade = _run("db", "upgrade", home=home)
    assert upgrade.returncode == 1 and "does not know" in upgrade.stderr
    assert json.loads(_run("db", "current", home=home).stdout)["state"] == "newer"


def test_the_release_knows_its_head_and_the_migrations_are_one_line() -> None:
    assert known_revisions()[-1] == HEAD_REVISION
    assert known_revisions() == ["0001", "0002", "0003", "0004", "0005"]


def test_a_bad_database_url_is_refused_naming_what_works(tmp_path: Path) -> None:
    for url, said in (("mysql://kb@db/kb", "not supported"), ("postgresql+psycopg://kb@db/kb", "pg8000"),
                      ("not a url", "not a URL")):
        with pytest.raises(kb.InvalidInputError, match=said):
            Catalog(url)


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer().start()
    yield server
    server.stop()


def test_postgresql_needs_the_explicit_upgrade_then_serves_the_catalog(postgres: PostgresServer,
                                                                       tmp_path: Path) -> None:
    url = postgres.create_database("kb_upgrade")
    with pytest.raises(CatalogSchemaError, match="has no kb schema yet: run `kb db upgrade --database-url"):
        CatalogDatabase(url)
    plain = url.replace("postgresql+pg8000://", "postgresql://")  # what operators write
    upgraded = _run("db", "upgrade", "--database-url", plain, home=tmp_path)
    assert upgraded.returncode == 0, upgraded.stderr
    current = json.loads(_run("db", "current", "--database-url", plain, home=tmp_path).stdout)
    assert current["state"] == "current" and current["revision"] == HEAD_REVISION
    catalog = Catalog(plain)
    assert catalog.shared and catalog.projects() == []
    catalog.close()


def test_revision_0003_creates_the_commit_point_tables_the_code_expects(postgres: PostgresServer) -> None:
    """The code no longer creates the commit point's tables: before the upgrade a knowledge bank on the database
    is refused naming the command; after it, the tables are LEDGER_METADATA's, column for column, on PostgreSQL
    and on SQLite, and an interim database that already had them upgrades too."""
    from sqlalchemy import create_engine, inspect

    from kb.catalog_db.engine import make_engine, normalise_url
    from kb.catalog_db.schema import upgrade
    from kb_base.errors import StoreUnavailableError
    from stores.commit_point.database import DatabaseLedger
    from stores.commit_point.schema import LEDGER_METADATA

    bare = postgres.create_database("kb_ledger_bare")
    with pytest.raises(StoreUnavailableError, match=r"no commit-point tables \(kb_commit, .*kb db upgrade"):
        DatabaseLedger(bare, "kb")
    interim = postgres.create_database("kb_ledger_interim")
    engine = create_engine(interim)
    interim_tables = [LEDGER_METADATA.tables[name] for name in ("kb_commit", "kb_records", "kb_lease", "kb_meta")]
    LEDGER_METADATA.create_all(engine, tables=interim_tables)  # what a server of the interim build did on first use
    engine.dispose()
    for url in (bare, interim, f"sqlite:///{postgres.work / 'ledger.sqlite'}"):
        engine = make_engine(normalise_url(url))
        assert upgrade(engine)[1] == HEAD_REVISION  # 0003 and what came after it (0005: kb_changes)
        found = inspect(engine)
        columns = {name: ([(c["name"], c["type"].compile(engine.dialect), c["nullable"])
                           for c in found.get_columns(name)], found.get_pk_constraint(name)["constrained_columns"])
                   for name in LEDGER_METADATA.tables}
        expected = {name: ([(c.name, c.type.compile(engine.dialect), c.nullable) for c in table.c],
                           [c.name for c in table.primary_key])
                    for name, table in LEDGER_METADATA.tables.items()}
        engine.dispose()
        assert columns == expected, url
        assert DatabaseLedger(url, "kb").committed() == (0, None)

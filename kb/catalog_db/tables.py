"""The catalog's tables, as SQLAlchemy Core sees them (the migrations in ``migrations/versions`` create them).

Column types are the portable ones: settings and connection parameters are JSON *text* (so a handle cache
compares the stored text exactly), times are epoch seconds as floats, as the SQLite catalog always had them.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Float, ForeignKey, Integer, LargeBinary, MetaData, Table, Text

metadata = MetaData()

projects = Table(
    "projects", metadata,
    Column("key", Text, primary_key=True),
    Column("name", Text, nullable=False),
    Column("created_at", Float, nullable=False),
)

knowledge_banks = Table(
    "knowledge_banks", metadata,
    Column("id", Text, primary_key=True),
    Column("project_key", Text, ForeignKey("projects.key"), nullable=False),
    Column("name", Text, nullable=False),
    Column("settings", Text, nullable=False),
    Column("created_at", Float, nullable=False),
)

managed_folders = Table(
    "managed_folders", metadata,
    Column("id", Text, primary_key=True),
    Column("project_key", Text, ForeignKey("projects.key"), nullable=False),
    Column("name", Text, nullable=False),
    Column("created_at", Float, nullable=False),
)

connections = Table(
    "connections", metadata,
    Column("name", Text, primary_key=True),
    Column("type", Text, nullable=False),
    Column("params", Text, nullable=False),
    Column("created_at", Float, nullable=False),
)

api_keys = Table(
    "api_keys", metadata,
    Column("id", Text, primary_key=True),
    Column("name", Text, nullable=False),
    Column("hash", LargeBinary, nullable=False),  # sha256 of the secret; the secret itself is never stored
    Column("admin", Integer, nullable=False),
    Column("roles", Text, nullable=False),  # JSON: project key -> role
    Column("created_at", Float),
    Column("expires_at", Float),
    Column("last_used_at", Float),
)

# One row (id 1) whose version every catalog change increments: servers cache settings and keys and compare
# this one number to learn that something changed (see kb.catalog_db.watch).
catalog_state = Table(
    "catalog_state", metadata,
    Column("id", Integer, primary_key=True),
    Column("version", BigInteger, nullable=False),
)

# Ingestion and folder sync jobs, claimed by any server (kb.catalog_db.jobs). Payload, progress, report and error
# are JSON text; heartbeat_at is on the database's clock (servers' clocks may disagree), the other times are the
# servers' own, shown to users.
jobs = Table(
    "jobs", metadata,
    Column("id", Text, primary_key=True),
    Column("kind", Text, nullable=False),  # "ingest" or "sync"
    Column("project_key", Text, nullable=False),
    Column("kb_id", Text, nullable=False),
    Column("payload", Text, nullable=False),  # what the job works on and its options: enough to run it again
    Column("state", Text, nullable=False),  # queued -> running -> succeeded | failed | cancelled
    Column("progress", Text, nullable=False),
    Column("report", Text),
    Column("error", Text),
    Column("owner", Text),  # the server running it; None while queued or released
    Column("heartbeat_at", Float),
    Column("attempts", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("started_at", Float),
    Column("finished_at", Float),
)

# What a folder sync indexed, for knowledge banks on a shared catalog (on one machine: sync.sqlite in the KB
# folder; see writers.sync_records). One row per (knowledge bank, source folder, path).
sync_files = Table(
    "sync_files", metadata,
    Column("kb_id", Text, primary_key=True),
    Column("folder_id", Text, primary_key=True),
    Column("path", Text, primary_key=True),
    Column("sha256", Text, nullable=False),
    Column("config", Text, nullable=False),
    Column("kind", Text, nullable=False),
    Column("pages", Integer),
    Column("chunk_ids", Text, nullable=False),  # JSON list
    Column("screenshots", Text, nullable=False),  # JSON list
    Column("synced_at", Float, nullable=False),
)

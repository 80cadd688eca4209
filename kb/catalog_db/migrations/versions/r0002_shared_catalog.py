"""API keys move into the catalog; a version row tells every server that something changed.

Revision 0002, after 0001. Until now the keys lived in ``$KB_HOME/keys.sqlite``: a SQLite catalog takes
them over from a ``keys.sqlite`` beside it (the file is left in place, no longer read). ``catalog_state``
holds one row whose version every change increments, what servers compare to keep their caches current.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_KEY_COLUMNS = ("id", "name", "hash", "admin", "roles", "created_at", "expires_at", "last_used_at")


def upgrade() -> None:
    api_keys = op.create_table(
        "api_keys",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("hash", sa.LargeBinary, nullable=False),
        sa.Column("admin", sa.Integer, nullable=False),
        sa.Column("roles", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float),
        sa.Column("expires_at", sa.Float),
        sa.Column("last_used_at", sa.Float),
    )
    state = op.create_table(
        "catalog_state",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("version", sa.BigInteger, nullable=False),
    )
    op.bulk_insert(state, [{"id": 1, "version": 1}])
    legacy = _legacy_keys()
    if legacy:
        op.bulk_insert(api_keys, legacy)


def _legacy_keys() -> list[dict[str, object]]:
    """The rows of ``keys.sqlite`` beside a SQLite catalog (release 0.1 kept the keys there), if any."""
    url = op.get_bind().engine.url
    if url.get_backend_name() != "sqlite" or not url.database:
        return []
    catalog = Path(url.database).resolve()
    path = catalog.parent / "keys.sqlite"
    if not path.exists() or path == catalog:
        return []
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        present = {row[1] for row in conn.execute("PRAGMA table_info(api_keys)")}
        if not present:
            return []
        # keys.sqlite files from before expiry had neither expires_at nor last_used_at
        columns = [c if c in present else f"NULL AS {c}" for c in _KEY_COLUMNS]
        rows = conn.execute(f"SELECT {', '.join(columns)} FROM api_keys").fetchall()
    finally:
        conn.close()
    return [dict(zip(_KEY_COLUMNS, row, strict=True)) for row in rows]


def downgrade() -> None:
    op.drop_table("catalog_state")
    op.drop_table("api_keys")

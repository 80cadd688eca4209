"""The commit point of Elasticsearch and Azure AI Search knowledge banks moves into the catalog database.

Revision 0003, after 0002. Four tables, one set for every knowledge bank (``stores/commit_point/schema.py``
is how the code sees them; this revision is what creates them, the code no longer does):
``kb_commit`` (committed generation, vector dimension, the lease epoch allowed to commit), ``kb_records``
(the id map), ``kb_lease`` (the writer's lease) and ``kb_meta`` (a driver's durable notes). Rows appear the
first time a knowledge bank opens on the database (its folder's SQLite ledger is copied in then), not here.

A table that exists already is left as it is: servers of the interim build (before this revision) created
these tables themselves on first use, with the same columns.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_TABLES = ("kb_commit", "kb_records", "kb_lease", "kb_meta")


def upgrade() -> None:
    present = set(sa.inspect(op.get_bind()).get_table_names())
    if "kb_commit" not in present:
        op.create_table(
            "kb_commit",
            sa.Column("kb", sa.String(200), primary_key=True),
            sa.Column("generation", sa.BigInteger, nullable=False),
            sa.Column("dimension", sa.Integer, nullable=True),
            sa.Column("epoch", sa.BigInteger, nullable=False),
        )
    if "kb_records" not in present:
        op.create_table(
            "kb_records",
            sa.Column("kb", sa.String(200), primary_key=True),
            sa.Column("id", sa.String(600), primary_key=True),
            sa.Column("physical", sa.Text, nullable=False),
            sa.Column("gen", sa.BigInteger, nullable=False),
        )
    if "kb_lease" not in present:
        op.create_table(
            "kb_lease",
            sa.Column("kb", sa.String(200), primary_key=True),
            sa.Column("holder", sa.Text, nullable=True),
            sa.Column("expires_at", sa.Double, nullable=True),
            sa.Column("epoch", sa.BigInteger, nullable=False),
        )
    if "kb_meta" not in present:
        op.create_table(
            "kb_meta",
            sa.Column("kb", sa.String(200), primary_key=True),
            sa.Column("key", sa.String(200), primary_key=True),
            sa.Column("value", sa.Text, nullable=False),
        )


def downgrade() -> None:
    for table in reversed(_TABLES):
        op.drop_table(table)

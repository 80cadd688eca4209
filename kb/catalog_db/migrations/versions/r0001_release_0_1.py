"""The catalog of kb 0.1: projects, knowledge banks, managed folders, connections.

Revision 0001, the baseline. A catalog written by release 0.1 has these tables and no version table; the
upgrade stamps it at this revision instead of creating them.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "projects",
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "knowledge_banks",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("project_key", sa.Text, sa.ForeignKey("projects.key"), nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("settings", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.UniqueConstraint("project_key", "name"),
    )
    op.create_table(
        "managed_folders",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("project_key", sa.Text, sa.ForeignKey("projects.key"), nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.UniqueConstraint("project_key", "name"),
    )
    op.create_table(
        "connections",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("type", sa.Text, nullable=False),
        sa.Column("params", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    for table in ("connections", "managed_folders", "knowledge_banks", "projects"):
        op.drop_table(table)

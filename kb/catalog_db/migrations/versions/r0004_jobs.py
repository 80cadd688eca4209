"""Jobs and sync records move into the catalog, so that any server can run, poll and take over a job.

Revision 0004. Ingestion and folder sync jobs lived in one process's memory; ``jobs`` holds them (state,
progress, report, owner and heartbeat). ``sync_files`` holds what a folder sync indexed for knowledge banks on a
shared catalog (one machine keeps using ``sync.sqlite`` in the KB folder). At most one sync job of a knowledge
bank is active at a time: a partial unique index, so two servers starting one at once cannot both succeed.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

ACTIVE_SYNC = sa.text("kind = 'sync' AND state IN ('queued', 'running')")


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("project_key", sa.Text, nullable=False),
        sa.Column("kb_id", sa.Text, nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("progress", sa.Text, nullable=False),
        sa.Column("report", sa.Text),
        sa.Column("error", sa.Text),
        sa.Column("owner", sa.Text),
        sa.Column("heartbeat_at", sa.Float),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("started_at", sa.Float),
        sa.Column("finished_at", sa.Float),
    )
    op.create_index("jobs_by_project", "jobs", ["project_key", "kind", "created_at"])
    op.create_index("jobs_by_state", "jobs", ["state", "created_at"])
    op.create_index("jobs_one_active_sync", "jobs", ["kb_id"], unique=True, sqlite_where=ACTIVE_SYNC,
                    postgresql_where=ACTIVE_SYNC)
    op.create_table(
        "sync_files",
        sa.Column("kb_id", sa.Text, primary_key=True),
        sa.Column("folder_id", sa.Text, primary_key=True),
        sa.Column("path", sa.Text, primary_key=True),
        sa.Column("sha256", sa.Text, nullable=False),
        sa.Column("config", sa.Text, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("pages", sa.Integer),
        sa.Column("chunk_ids", sa.Text, nullable=False),
        sa.Column("screenshots", sa.Text, nullable=False),
        sa.Column("synced_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("sync_files")
    op.drop_index("jobs_one_active_sync", table_name="jobs")
    op.drop_table("jobs")

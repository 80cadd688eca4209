"""Knowledge banks on a Chroma server join the shared commit point: the change log each server's cache follows.

Revision 0005, after 0004. A Chroma-server knowledge bank keeps its commit point (generation, dimension, id
map, lease) in the tables of revision 0003, like Elasticsearch. What kb keeps beside Chroma for it (a metadata
copy that answers filters, kb's BM25 keyword index) becomes a cache in each server's knowledge bank folder,
derived from the committed generation: ``kb_changes`` says which ids each generation changed, written by the
committing writer in the commit's own transaction, so a server that sees the generation move fetches only
those records from Chroma (``stores/chroma/shared.py``). ``retired``: the physical record a generation marked
retired, deleted from Chroma by a later commit (the vacuum) once no reader can see it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "kb_changes",
        sa.Column("kb", sa.String(200), primary_key=True),
        sa.Column("gen", sa.BigInteger, primary_key=True),
        sa.Column("id", sa.String(600), primary_key=True),
        sa.Column("added", sa.Text, nullable=True),
        sa.Column("retired", sa.Text, nullable=True),
    )


def downgrade() -> None:
    op.drop_table("kb_changes")

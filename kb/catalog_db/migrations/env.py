"""Alembic's environment for the catalog: migrations run on the connection kb.catalog_db.schema hands over.

Alembic executes this file; imported any other way (the layering test imports every module) it does nothing.
"""

from __future__ import annotations

from alembic import context

from kb.catalog_db.schema import VERSION_TABLE

if hasattr(context, "config"):
    connection = context.config.attributes["connection"]
    context.configure(connection=connection, version_table=VERSION_TABLE, transactional_ddl=True)
    with context.begin_transaction():
        context.run_migrations()

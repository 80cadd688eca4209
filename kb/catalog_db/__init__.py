"""The catalog's database layer, on SQLAlchemy Core: SQLite in ``$KB_HOME`` or a shared PostgreSQL.

``tables`` (the schema as SQLAlchemy sees it), ``engine`` (URLs and engines), ``schema`` (Alembic revisions:
upgrade, current, the start-up check), ``watch`` (the change version behind every cache), ``database``
(``CatalogDatabase``: all of it for one database). ``kb.catalog`` and ``api.keys`` query it.
The migrations are in ``migrations/`` (shipped as package data, run by ``kb db upgrade``).
"""

from kb.catalog_db.database import CatalogDatabase
from kb.catalog_db.schema import CatalogSchemaError

__all__ = ["CatalogDatabase", "CatalogSchemaError"]

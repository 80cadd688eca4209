"""``kb db upgrade`` and ``kb db current``: the catalog database's schema version (Alembic revisions).

The database is ``--database-url``, else ``$KB_DATABASE_URL``, else the SQLite catalog of ``--home``
(``$KB_HOME``). Run ``kb db upgrade`` once per release, before starting the servers of that release.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from kb.catalog_db.engine import describe, make_engine, normalise_url
from kb.catalog_db.schema import CatalogSchemaError, current, upgrade
from kb.config import catalog_location, default_home
from kb_base.errors import KBError


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="kb db", description="The catalog database's schema (Alembic revisions).")
    sub = parser.add_subparsers(dest="action", required=True)
    for name, text in (("upgrade", "bring the catalog to this release's schema (creates an empty one)"),
                       ("current", "print the catalog's schema revision and how it stands (JSON)")):
        action = sub.add_parser(name, help=text, description=text)
        action.add_argument("--database-url", metavar="URL",
                            help="postgresql://user@host/db or sqlite:////path (default: $KB_DATABASE_URL, else "
                                 "the SQLite catalog of --home)")
        action.add_argument("--home", type=Path, help="the kb home whose SQLite catalog to use (default $KB_HOME)")
    args = parser.parse_args(argv)
    try:
        url = normalise_url(args.database_url or catalog_location(args.home or default_home()))
        engine = make_engine(url)
        try:
            if args.action == "current":
                state = current(engine)
                print(json.dumps(state, indent=2))
                return 0 if state["state"] == "current" else 1
            before, after = upgrade(engine)
        finally:
            engine.dispose()
    except CatalogSchemaError as exc:
        print(f"kb db: {exc}", file=sys.stderr)
        return 1
    except (KBError, ValueError, OSError) as exc:
        print(f"kb db: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # the database refused or is unreachable: say which, without a traceback
        print(f"kb db: {describe(url)}: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}", file=sys.stderr)
        return 6
    if before == after:
        print(f"{describe(url)}: already at schema revision {after}")
    else:
        print(f"{describe(url)}: upgraded from {before or 'empty'} to schema revision {after}")
    return 0

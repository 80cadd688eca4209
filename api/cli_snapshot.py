"""``kb export`` and ``kb import``: a knowledge bank to and from a portable Parquet snapshot (``writers.snapshot``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import kb
from kb_base.errors import KBError
from writers.snapshot import export_knowledge_bank, import_knowledge_bank


def main_export(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kb export", description="Write a knowledge bank to a Parquet snapshot.")
    parser.add_argument("output", type=Path)
    parser.add_argument("--kb", required=True)
    parser.add_argument("--project", default="DEFAULT")
    parser.add_argument("--home", type=Path)
    args = parser.parse_args(argv)

    try:
        core = kb.api_client(home=args.home).get_project(args.project).get_knowledge_bank(args.kb) \
            .as_core_knowledge_bank()
        report = export_knowledge_bank(core, args.output)
    except (KBError, OSError) as exc:
        print(f"kb export: {exc}", file=sys.stderr)
        return 2
    print(f"exported {report.rows} records ({report.dimension} dimensions) to {report.path} in {report.seconds:.1f}s")
    return 0


def main_import(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kb import", description="Restore a knowledge bank from a snapshot.")
    parser.add_argument("snapshot", type=Path)
    parser.add_argument("--name", help="name of the new knowledge bank (default: the exported name)")
    parser.add_argument("--project", default="DEFAULT")
    parser.add_argument("--store", help="vector store type (default: the exported one)")
    parser.add_argument("--connection", help="store connection for the new knowledge bank")
    parser.add_argument("--home", type=Path)
    args = parser.parse_args(argv)

    try:
        project = kb.api_client(home=args.home).get_project(args.project)
        handle = import_knowledge_bank(project, args.snapshot, args.name, args.store,
                                       {"connection": args.connection} if args.connection else None)
    except (KBError, OSError) as exc:
        print(f"kb import: {exc}", file=sys.stderr)
        return 2
    print(f"imported into knowledge bank {handle.id} ({handle.name})")
    return 0

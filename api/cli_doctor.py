"""``kb doctor`` and ``kb repair``: a knowledge bank's store against its commit point, and rebuilding it.

Both work on the embedded home: the check reads the store directly (a kb server's stores are checked on
the server's machine, with its ``--home``). Exit codes: 0 sound (or repaired), 1 problems remain,
2 usage, 3 not found, 6 a store unreachable.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import kb
from api.cli_kb import exit_code_for
from api.cli_output import print_json
from kb.lookup import find_knowledge_bank
from kb_base import errors

_EPILOG = "Exit codes: 0 sound (or repaired), 1 problems remain, 2 usage, 3 not found, 6 store unreachable."


def _parser(command: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"kb {command}", description=description, epilog=_EPILOG)
    parser.add_argument("kb", nargs="*", metavar="NAME", help="knowledge bank names or ids (default: all of the "
                        "project)")
    parser.add_argument("--home", type=Path, help="embedded kb home (default: $KB_HOME)")
    parser.add_argument("--project", default="DEFAULT", help="project key (default: DEFAULT)")
    parser.add_argument("--json", action="store_true", help="machine-readable JSON on stdout")
    return parser


def _show(report: dict[str, Any], name: str) -> None:
    state = "ok" if report["ok"] else "DAMAGED"
    checked = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in report["checked"].items())
    print(f"{name} ({report['kb_id']}, {report['store_type']}): {state}; {report['records']} committed records"
          + (f"; {checked}" if checked else ""))
    for line in report["repaired"]:
        print(f"  {line}")
    for problem in report["problems"]:
        print(f"  problem: {problem}")


def _run(command: str, argv: list[str] | None) -> int:
    description = ("Check knowledge banks' stores against their commit points: the count, every committed record "
                   "readable, vector search finding records by their own vector."
                   if command == "doctor" else
                   "Rebuild what `kb doctor` finds damaged where the store allows it (Chroma: its index, from kb's "
                   "copy of every record), then check again.")
    parser = _parser(command, description)
    if command == "doctor":
        parser.add_argument("--full", action="store_true", help="search for every record, not a sample (slow)")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    client = None
    reports: list[dict[str, Any]] = []
    try:
        client = kb.api_client(home=args.home)
        project = client.get_project(args.project)
        handles = ([find_knowledge_bank(project, name) for name in args.kb] if args.kb
                   else project.list_knowledge_banks(as_type="objects"))
        for handle in handles:
            core = handle.as_core_knowledge_bank()
            if not args.json:
                print(f"{'checking' if command == 'doctor' else 'repairing'} {handle.name} ...", file=sys.stderr)
            try:
                report = core.check_store(full=args.full) if command == "doctor" else core.repair_store()
            except errors.KBError as exc:  # one unreachable store does not hide the others
                report = {"kb_id": handle.id, "store_type": core.settings.get("vector_store_type"), "ok": False,
                          "records": None, "checked": {}, "problems": [str(exc)], "repaired": []}
            report["name"] = handle.name
            reports.append(report)
            if not args.json:
                _show(report, handle.name)
    except errors.KBError as exc:
        print(f"kb {command}: {exc}", file=sys.stderr)
        return exit_code_for(exc)
    finally:
        if client is not None:
            client.close()
    if args.json:
        print_json(reports)
    return 0 if all(r["ok"] for r in reports) else 1


def main_doctor(argv: list[str] | None = None) -> int:
    return _run("doctor", argv)


def main_repair(argv: list[str] | None = None) -> int:
    return _run("repair", argv)

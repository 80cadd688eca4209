"""``kb ingest``: the command line of batch ingestion (``writers.ingest``).

    kb ingest FILE --kb ID_OR_NAME [--project KEY] [--home DIR | --url URL --api-key KEY]
              [--format jsonl|csv|parquet|arrow]
              [--text-column text] [--id-column COL] [--metadata-columns a,b] [--source NAME]
              [--chunk-size 1000] [--chunk-overlap 200] [--batch-rows 1000] [--commit-every 5000]
              [--max-rejected N] [--ray auto|local|HOST:PORT|ray://HOST:10001] [--report report.json] [--quiet]

Exit status: 0 every row written or unchanged, 1 some rows rejected (the
summary says how many; the first 20 are listed on stderr, all of them up to
1000 in ``--report``), 2 usage or fatal error (unknown KB, unreadable file,
unknown column, more than ``--max-rejected`` rejected rows, Ray missing). With
``--ray``, embedding runs on an actor pool of a Ray cluster (``kb[ray]``); reading,
checks and commits stay here.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

import kb
from kb.engines import engine_for
from kb.lookup import find_knowledge_bank
from kb_base.errors import InvalidInputError, KBError
from writers.ingest import IngestOptions, IngestReport, TooManyRejectedError, ingest
from writers.sources import FORMAT_NAMES, detect_format


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kb ingest", description="Ingest a JSONL, CSV, Parquet or Arrow IPC file into a knowledge bank.",
        epilog="exit status: 0 every row written or unchanged, 1 some rows rejected, 2 usage or fatal error")
    parser.add_argument("file", type=Path)
    parser.add_argument("--kb", required=True, help="knowledge bank id or name")
    parser.add_argument("--project", default="DEFAULT", help="project key (default: DEFAULT)")
    parser.add_argument("--home", type=Path, help="kb home (default: $KB_HOME)")
    parser.add_argument("--url", default=os.environ.get("KB_URL") or None,
                        help="send the file to a kb server instead (default: $KB_URL)")
    parser.add_argument("--api-key", default=os.environ.get("KB_API_KEY") or None,
                        help="API key for --url (default: $KB_API_KEY)")
    parser.add_argument("--format", choices=FORMAT_NAMES, help="default: from the file extension")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--id-column", help="stable row ids (default: derived from the source and the text)")
    parser.add_argument("--metadata-columns", help="comma-separated, '' for none (default: every other column; "
                                                   "with a metadata schema, the schema's)")
    parser.add_argument("--source", help="source name in chunk metadata and derived ids (default: the file name)")
    parser.add_argument("--chunk-size", type=int, default=1000, help="characters; 0 keeps rows whole")
    parser.add_argument("--chunk-overlap", type=int, default=200)
    parser.add_argument("--batch-rows", type=int, default=1000, help="rows read at a time")
    parser.add_argument("--commit-every", type=int, default=5000, help="chunks per atomic commit")
    parser.add_argument("--max-rejected", type=int, help="stop with status 2 past this many rejected rows")
    parser.add_argument("--ray", metavar="ADDRESS", help="embed on a Ray cluster: 'auto', HOST:PORT, "
                        "ray://HOST:10001 or 'local' (needs kb[ray]; not with --url)")
    parser.add_argument("--report", type=Path, help="also write the report as JSON to this file")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def options_from_args(args: argparse.Namespace) -> IngestOptions:
    metadata = None if args.metadata_columns is None else [c.strip() for c in args.metadata_columns.split(",")
                                                           if c.strip()]
    return IngestOptions(text_column=args.text_column, id_column=args.id_column, metadata_columns=metadata,
                         source=args.source, format=args.format, chunk_size=args.chunk_size,
                         chunk_overlap=args.chunk_overlap, batch_rows=args.batch_rows,
                         commit_every=args.commit_every, max_rejected=args.max_rejected)


def _ingest_remote(core: Any, path: Path, options: IngestOptions, progress: bool) -> IngestReport:
    """The same ingestion on a kb server: the file is streamed to ``POST .../ingest``, the server reports."""
    options.validate()
    params = {"format": detect_format(path, options.format), "text_column": options.text_column,
              "id_column": options.id_column, "source": options.source or path.name,
              "metadata_columns": None if options.metadata_columns is None else ",".join(options.metadata_columns),
              "chunk_size": options.chunk_size, "chunk_overlap": options.chunk_overlap,
              "commit_every": options.commit_every, "max_rejected": options.max_rejected}
    body = core.ingest_file(path, params, progress)
    return IngestReport(**{f.name: body[f.name] for f in fields(IngestReport) if f.name in body})


def _print_report(report: IngestReport, path: Path | None) -> None:
    for item in report.rejected[:20]:
        print(f"rejected: {item['reason']}", file=sys.stderr)
    if report.rows_rejected > 20:
        print(f"... and {report.rows_rejected - 20} more rejected rows (see --report)", file=sys.stderr)
    print(report.summary())
    if path is not None:
        path.write_text(json.dumps(report.to_dict(), indent=2, default=str))


def main(argv: list[str] | None = None) -> int:
    """``kb ingest``; returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse: --help is 0, a usage error 2
        return int(exc.code or 0)
    client = None
    try:
        options = options_from_args(args)
        if args.url and args.home:
            raise InvalidInputError("give --url (a server) or --home (the embedded home), not both")
        if args.url and args.ray:
            raise InvalidInputError("--ray runs the ingestion from here; a server (--url) embeds with its own engine")
        engine = engine_for(args.ray)  # without Ray installed: how to install it, before anything else
        client = kb.api_client(url=args.url, api_key=args.api_key, home=args.home)
        core = find_knowledge_bank(client.get_project(args.project), args.kb).as_core_knowledge_bank()
        if args.url:
            report = _ingest_remote(core, args.file, options, progress=not args.quiet)
        else:
            report = ingest(core, args.file, options, progress=not args.quiet, engine=engine)
    except TooManyRejectedError as exc:
        _print_report(exc.report, args.report)
        print(f"kb ingest: {exc}", file=sys.stderr)
        return 2
    except KBError as exc:
        print(f"kb ingest: {exc}", file=sys.stderr)
        return 2
    finally:
        if client is not None:
            client.close()
    _print_report(report, args.report)
    return report.exit_status


if __name__ == "__main__":
    raise SystemExit(main())

"""``kb sync``: keep a knowledge bank equal to a folder of documents (``writers.sync``).

    kb sync SOURCE --kb ID_OR_NAME [--project KEY] [--home DIR | --url URL --api-key KEY [--folder NAME]]
            [--extraction raw|structured] [--screenshots [--screenshot-timeout 60]] [--no-ocr]
            [--chunk-size 1000] [--chunk-overlap 200]
            [--batch-files 32] [--wait SECONDS] [--ray auto|local|HOST:PORT|ray://HOST:10001]
            [--report report.json] [--quiet]

SOURCE is a local directory, or the id or name of a managed folder of the
project. With ``--url`` the server syncs: a local directory is first mirrored
into a managed folder (``--folder``, default ``<kb name> sources``; only files
whose sha256 changed are uploaded, files gone are deleted there), then the
server's sync job runs on it and its report is printed as the embedded one.
With ``--ray``, extraction and embedding run on a Ray cluster (``kb[ray]``;
``writers.engines``); the plan, the commits and the report stay here.
Exit status: 0 every file synced, unchanged or empty (readable with nothing to
index: a redirect page, an empty HTML shell, an image-only PDF with OCR off),
1 some files failed (could not be read; listed on stderr with their reason, as
empty files are), 2 usage or fatal error (unknown knowledge bank or
folder, another sync running, the model failing, Ray missing).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import kb
from kb.engines import engine_for
from kb.lookup import find_knowledge_bank
from kb.remote_sync import mirror_directory, mirror_folder_for, run_sync_job, server_folder
from kb_base.errors import InvalidInputError, KBError, NotFoundError
from writers.sync import SyncOptions, SyncReport, sync_folder


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kb sync", description="Extract a folder of documents (PDF, DOCX, PPTX, HTML, Markdown, text, images) "
                                    "into a knowledge bank and keep it in sync: added, changed and removed files.",
        epilog="exit status: 0 every file synced, unchanged or empty (nothing to index), 1 some files failed "
               "(could not be read), 2 usage or fatal error")
    parser.add_argument("source", help="a local directory, or a managed folder id or name")
    parser.add_argument("--kb", required=True, help="knowledge bank id or name")
    parser.add_argument("--project", default="DEFAULT", help="project key (default: DEFAULT)")
    parser.add_argument("--home", type=Path, help="kb home (default: $KB_HOME)")
    parser.add_argument("--url", default=os.environ.get("KB_URL") or None,
                        help="sync on a kb server instead (default: $KB_URL)")
    parser.add_argument("--api-key", default=os.environ.get("KB_API_KEY") or None,
                        help="API key for --url (default: $KB_API_KEY)")
    parser.add_argument("--folder", help="with --url and a local directory: the managed folder it is mirrored "
                                         "into, created if missing (default: '<kb name> sources')")
    parser.add_argument("--extraction", choices=["raw", "structured"], default="raw",
                        help="raw: text per page/slide/document; structured: split at headings (default: raw)")
    parser.add_argument("--screenshots", action="store_true",
                        help="page screenshots (PNG) in the images folder: PDF pages and images; DOCX and PPTX "
                             "through headless LibreOffice ($KB_SOFFICE), HTML through headless Chromium "
                             "($KB_CHROMIUM); without the tool a file gets a warning and its text is indexed")
    parser.add_argument("--screenshot-timeout", type=float, default=60.0,
                        help="seconds LibreOffice or Chromium may take to print one file (default: 60)")
    parser.add_argument("--no-ocr", action="store_true", help="never run tesseract on image-only pages or images")
    parser.add_argument("--chunk-size", type=int, default=1000, help="characters; 0 keeps sections whole")
    parser.add_argument("--chunk-overlap", type=int, default=200)
    parser.add_argument("--batch-files", type=int, default=32, help="files per atomic commit")
    parser.add_argument("--wait", type=float, default=0.0, help="seconds to wait for another sync to finish")
    parser.add_argument("--ray", metavar="ADDRESS", help="extract and embed on a Ray cluster: 'auto' (the cluster "
                        "`ray start` runs on this machine), HOST:PORT, ray://HOST:10001, or 'local' (needs kb[ray])")
    parser.add_argument("--report", type=Path, help="also write the report as JSON to this file")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _find_source(project: Any, source: str) -> Any:
    if Path(source).is_dir():
        return Path(source)
    for info in project.list_managed_folders():
        if source in (info["id"], info["name"]):
            return project.get_managed_folder(info["id"])
    raise NotFoundError(f"{source!r} is neither a local directory nor a managed folder of project "
                        f"{project.project_key}")


def _sync_remote(core: Any, args: argparse.Namespace, options: SyncOptions) -> SyncReport:
    """The server syncs: a local directory is mirrored into a managed folder first (see ``kb.remote_sync``)."""
    if Path(args.source).is_dir():
        folder = mirror_folder_for(core, args.folder)
        mirrored = mirror_directory(Path(args.source), folder, progress=not args.quiet)
        print(mirrored.summary(), file=sys.stderr)  # stdout keeps the report only, as the embedded sync prints it
    else:
        folder = server_folder(core, args.source)
    return run_sync_job(core, folder, options, progress=not args.quiet)


def _print_report(report: SyncReport, path: Path | None) -> None:
    for item in report.failed[:50]:
        print(f"failed: {item['path']}: {item['reason']}", file=sys.stderr)
    if len(report.failed) > 50:
        print(f"... and {len(report.failed) - 50} more failed files (see --report)", file=sys.stderr)
    for item in report.empty[:20]:
        print(f"empty: {item['path']}: {item['reason']}", file=sys.stderr)
    if len(report.empty) > 20:
        print(f"... and {len(report.empty) - 20} more empty files (see --report)", file=sys.stderr)
    for item in report.warnings[:20]:
        print(f"warning: {item['path']}: {item['message']}", file=sys.stderr)
    print(report.summary())
    if path is not None:
        path.write_text(json.dumps(report.to_dict(), indent=2, default=str))


def main(argv: list[str] | None = None) -> int:
    """``kb sync``; returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse: --help is 0, a usage error 2
        return int(exc.code or 0)
    client = None
    try:
        options = SyncOptions(extraction=args.extraction, screenshots=args.screenshots, ocr=not args.no_ocr,
                              screenshot_timeout=args.screenshot_timeout,
                              chunk_size=args.chunk_size, chunk_overlap=args.chunk_overlap,
                              batch_files=args.batch_files, lock_timeout=args.wait)
        options.validate()
        if args.url and args.home:
            raise InvalidInputError("give --url (a server) or --home (the embedded home), not both")
        if args.folder and not args.url:
            raise InvalidInputError("--folder names the managed folder a directory is uploaded to: it needs --url")
        if args.ray and args.url:
            raise InvalidInputError("--ray runs the sync here on a Ray cluster; with --url the server syncs "
                                    "(its engine is its administrator's KB_RAY_ADDRESS): give one of them")
        engine = engine_for(args.ray)  # without Ray installed: how to install it, before anything else
        client = kb.api_client(url=args.url, api_key=args.api_key, home=args.home)
        project = client.get_project(args.project)
        core = find_knowledge_bank(project, args.kb).as_core_knowledge_bank()  # ambiguous names listed
        if args.url:
            report = _sync_remote(core, args, options)
        else:
            report = sync_folder(core, _find_source(project, args.source), options, progress=not args.quiet,
                                 engine=engine)
    except KBError as exc:
        print(f"kb sync: {exc}", file=sys.stderr)
        return 2
    finally:
        if client is not None:
            client.close()
    _print_report(report, args.report)
    return report.exit_status


if __name__ == "__main__":
    raise SystemExit(main())

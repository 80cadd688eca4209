"""The ``kb`` command line: serve, keys, eval (and the tools other modules provide)."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Sequence

USAGE = """kb <command> [options]

commands:
  serve     run the REST service (uvicorn)
  keys      create, list or revoke API keys
  db        the catalog database's schema: `kb db upgrade` (once per release), `kb db current`
  ingest    ingest a JSONL, CSV, Parquet or Arrow file into a knowledge bank
  sync      extract a folder of documents into a knowledge bank and keep it in sync
  eval      evaluate a knowledge bank on BEIR queries and qrels
  export    write a knowledge bank to a portable Parquet snapshot
  import    restore a knowledge bank from a snapshot, into any store type
  demo      write a few documents into a demo knowledge bank and search them
  bench     benchmark kb against raw faiss, LangChain FAISS and Chroma (JSON + PNG charts)
  create    create a knowledge bank (--store, --model, --schema key=type,...)
  list      list knowledge banks with store, model and document count
  info      show a knowledge bank: settings, metadata schema, document count
  search    search a knowledge bank (--type, --k, --filter JSON)
  delete    delete a knowledge bank
  doctor    check knowledge banks' stores against their commit points (embedded home)
  repair    rebuild what doctor finds damaged, where the store allows it (Chroma: its index)

create, list, info, search, delete, ingest and eval work on the embedded home (--home, $KB_HOME) or on a
kb server (--url/--api-key, or $KB_URL/$KB_API_KEY); knowledge banks by id or name; `kb <command> --help`
lists a command's options. Exit codes of create/list/info/search/delete: 0 ok, 1 refused by kb, 2 usage,
3 not found, 4 ambiguous name, 5 authentication/permission refused, 6 server or store unreachable.
"""


def serve(argv: Sequence[str]) -> int:
    from api.serving import HEALTHCHECK_SECONDS, KEEP_ALIVE_SECONDS

    parser = argparse.ArgumentParser(prog="kb serve", description="Run the kb REST service.")
    parser.add_argument("--host", default=os.environ.get("KB_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("KB_PORT", "8080")))
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--timeout-keep-alive", type=int, metavar="SECONDS",
                        default=int(os.environ.get("KB_KEEP_ALIVE", KEEP_ALIVE_SECONDS)),
                        help="close a keep-alive connection idle this long (default %(default)s, $KB_KEEP_ALIVE; "
                             "keep it above the idle timeout of a load balancer in front)")
    parser.add_argument("--worker-healthcheck-timeout", type=int, metavar="SECONDS",
                        default=int(os.environ.get("KB_WORKER_HEALTHCHECK", HEALTHCHECK_SECONDS)),
                        help="with --workers > 1: replace a worker that does not answer the supervisor's ping this "
                             "long (default %(default)s, $KB_WORKER_HEALTHCHECK)")
    args = parser.parse_args(argv)
    from api.metrics_dir import prepare_metrics_dir
    from kb.catalog_db import CatalogDatabase, CatalogSchemaError
    from kb.config import catalog_location, default_home

    try:  # a catalog at a schema this release does not know: refuse before uvicorn starts, naming the command
        CatalogDatabase(catalog_location(default_home())).close()
    except CatalogSchemaError as exc:
        print(f"kb serve: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # unreachable, refused credentials: one line an operator can act on
        print(f"kb serve: cannot open the catalog database: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}",
              file=sys.stderr)
        return 1

    prepare_metrics_dir(default_home(), args.port)  # before prometheus_client is imported, for every worker
    if args.workers == 1 and os.environ.get("KB_WARMUP", "on").strip().lower() != "off":
        from kb.embeddings import DEFAULT_EMBEDDING_LLM_ID, preload_local_model

        # loads while the app and uvicorn are imported; /readyz still waits for the warm-up
        preload_local_model(DEFAULT_EMBEDDING_LLM_ID)
    from api import serving
    from api.app import configure_logging

    configure_logging(args.log_level.upper())
    os.environ["KB_LOG_LEVEL"] = args.log_level.upper()  # for the workers, which --workers N starts afresh
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    serving.run(host=args.host, port=args.port, workers=args.workers, log_level=args.log_level,
                keep_alive=args.timeout_keep_alive, healthcheck=args.worker_healthcheck_timeout)
    return 0


def keys(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="kb keys", description="Manage API keys (stored hashed in the catalog: "
                                     "$KB_DATABASE_URL, else $KB_HOME/catalog.sqlite).")
    sub = parser.add_subparsers(dest="action", required=True)
    create = sub.add_parser("create", help="create a key and print it once")
    create.add_argument("--name", required=True)
    create.add_argument("--admin", action="store_true", help="global admin (every project)")
    create.add_argument("--role", action="append", default=[], metavar="PROJECT=ROLE",
                        help="reader, writer or admin on a project; repeatable")
    create.add_argument("--expires", metavar="WHEN", help="30d, 12h, 90m, 3600s from now, or an ISO-8601 date/time")
    sub.add_parser("list", help="list keys (never the secrets)")
    revoke = sub.add_parser("revoke", help="revoke a key by id")
    revoke.add_argument("key_id")
    args = parser.parse_args(argv)
    from api.keys import KeyStore, parse_expiry
    from kb.config import default_home
    from kb_base.errors import KBError

    try:
        store = KeyStore.for_home(default_home())
        if args.action == "create":
            roles = dict(item.split("=", 1) for item in args.role)
            expires_at = parse_expiry(args.expires) if args.expires else None
            print(store.create(args.name, admin=args.admin, roles=roles, expires_at=expires_at))
        elif args.action == "list":
            print(json.dumps(store.list(), indent=2))
        else:
            store.revoke(args.key_id)
    except (KBError, ValueError) as exc:
        print(f"kb keys: {exc}", file=sys.stderr)
        return 2
    return 0


def demo(argv: Sequence[str]) -> int:
    from langchain_core.documents import Document

    import kb

    client = kb.api_client()
    project = client.get_default_project()
    existing = {i.name: i for i in project.list_knowledge_banks()}
    handle = existing["demo"].to_knowledge_bank() if "demo" in existing else project.create_knowledge_bank("demo")
    core = handle.as_core_knowledge_bank()
    with core.get_writer() as writer:
        writer.clear()
        writer.as_langchain_vectorstore().add_documents([
            Document(page_content="Solar panels turn sunlight into electricity.", metadata={"topic": "energy"}),
            Document(page_content="Honeybees dance to tell each other where flowers are.", metadata={"topic": "bio"}),
            Document(page_content="Espresso is brewed by forcing hot water through coffee.",
                     metadata={"topic": "food"}),
        ])
    for doc in core.as_langchain_retriever(search_kwargs={"k": 1}).invoke("how do bees communicate?"):
        print(f"{doc.id}: {doc.page_content}")
    return 0


# Subcommands load on demand (module:function), so that `kb --help` or `kb keys` does not import faiss,
# LangChain and the stores: kb's heavy dependencies.
SUBCOMMANDS = {
    "ingest": "api.cli_ingest:main",
    "sync": "api.cli_sync:main",
    "export": "api.cli_snapshot:main_export",
    "import": "api.cli_snapshot:main_import",
    "eval": "api.cli_eval:main",
    "db": "api.cli_db:main",
    "doctor": "api.cli_doctor:main_doctor",
    "repair": "api.cli_doctor:main_repair",
    "bench": "benchmarks.suite:main",
}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "serve":
        return serve(rest)
    if command == "keys":
        return keys(rest)
    if command == "demo":
        return demo(rest)
    if command in SUBCOMMANDS:
        module_name, function = SUBCOMMANDS[command].split(":")
        return getattr(importlib.import_module(module_name), function)(rest)
    if command in ("create", "list", "info", "search", "delete"):
        from api.cli_kb import main as kb_command_main

        return kb_command_main(command, rest)
    print(f"kb: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())

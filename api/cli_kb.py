"""``kb create | list | info | search | delete``: knowledge banks from the command line.

Every command runs on the embedded home (``--home``, else ``$KB_HOME``) or, with ``--url`` (or ``KB_URL``), on a
kb server with ``--api-key`` (or ``KB_API_KEY``), through the same client classes as the Python API
(``kb.api_client``). Knowledge banks are named by id or by name. Output is a table for people, ``--json`` for
scripts.

Exit codes (also in ``kb --help`` and the README):
  0 success; 1 kb refused the request (invalid input, conflict, server error); 2 usage error;
  3 not found (project, knowledge bank, model); 4 ambiguous name (the message lists the ids);
  5 authentication or permission refused (401/403); 6 the server or the store is unreachable.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import kb
from api.cli_output import print_json, print_table, shorten
from kb.lookup import find_knowledge_bank
from kb_base import errors

EXIT_CODES = """exit codes:
  0  success
  1  kb refused the request (invalid input, conflict, server error)
  2  usage error (unknown option, missing argument)
  3  not found (project, knowledge bank, embedding model)
  4  ambiguous name: several knowledge banks share it (the message lists their ids)
  5  authentication or permission refused (HTTP 401/403)
  6  the kb server or the vector store is unreachable
"""

SEARCH_TYPES = ("similarity", "similarity_score_threshold", "mmr", "keyword", "hybrid", "semantic_hybrid")
SCHEMA_TYPES = ("string", "int", "float", "bool", "date")


def exit_code_for(exc: errors.KBError) -> int:
    if isinstance(exc, errors.AmbiguousNameError):
        return 4
    if isinstance(exc, errors.NotFoundError):
        return 3
    if exc.http_status in (401, 403):
        return 5
    if isinstance(exc, errors.StoreUnavailableError):
        return 6
    return 1


def _common(parser: argparse.ArgumentParser, json_flag: bool = True) -> None:
    where = parser.add_argument_group("where (embedded home or a kb server)")
    where.add_argument("--url", default=os.environ.get("KB_URL") or None,
                       help="kb server URL (default: $KB_URL; without it, the embedded home)")
    where.add_argument("--api-key", default=os.environ.get("KB_API_KEY") or None,
                       help="API key for --url (default: $KB_API_KEY)")
    where.add_argument("--home", type=Path, help="embedded kb home (default: $KB_HOME)")
    where.add_argument("--project", default="DEFAULT", help="project key (default: DEFAULT)")
    if json_flag:
        parser.add_argument("--json", action="store_true", help="machine-readable JSON on stdout")


def _parser(command: str, description: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=f"kb {command}", description=description, epilog=EXIT_CODES,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def parse_schema(text: str) -> dict[str, str]:
    """``source=string,year=int`` -> ``{"source": "string", "year": "int"}`` (types checked by kb too)."""
    schema: dict[str, str] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        key, sep, kind = item.partition("=")
        if not sep or not key.strip() or kind.strip() not in SCHEMA_TYPES:
            raise errors.InvalidInputError(f"--schema entry {item!r} must be key=type with type one of "
                                           f"{', '.join(SCHEMA_TYPES)}")
        schema[key.strip()] = kind.strip()
    return schema


def parse_json_object(text: str, option: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise errors.InvalidInputError(f"{option} must be a JSON object: {exc}") from exc
    if not isinstance(value, dict):
        raise errors.InvalidInputError(f"{option} must be a JSON object, got {type(value).__name__}")
    return value


def open_client(args: argparse.Namespace) -> Any:
    if args.url and args.home:
        raise errors.InvalidInputError("give --url (a server) or --home (the embedded home), not both")
    return kb.api_client(url=args.url, api_key=args.api_key, home=args.home)


def _size(count: int | None) -> str:
    if count is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1024 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GB"


def describe(handle: Any, with_count: bool = True, tolerant: bool = False) -> dict[str, Any]:
    """What ``kb info`` and ``kb list --json`` show: the catalog entry, its settings and its size.

    ``tolerant``: a store that cannot count (a Chroma or Elasticsearch server down) gives ``documents: null``
    and its error, so one unreachable store does not hide the others from ``kb list``.
    """
    settings = handle.get_settings().get_raw()
    out: dict[str, Any] = {"id": handle.id, "name": handle.name, "project_key": handle.project_key,
                           "vector_store_type": settings.get("vector_store_type"),
                           "embedding_llm_id": settings.get("embedding_llm_id"),
                           "metadata_schema": settings.get("metadata_schema") or {},
                           "images_folder": settings.get("images_folder")}
    if with_count:
        try:
            core = handle.as_core_knowledge_bank()
            out["documents"] = core.count()
            out["index"] = core.index_info()
        except errors.KBError as exc:
            if not tolerant:
                raise
            out["documents"], out["error"] = None, str(exc)
    out["settings"] = settings
    return out


# --- the commands -----------------------------------------------------------------------------


def cmd_create() -> tuple[argparse.ArgumentParser, Callable[[argparse.Namespace, Any], None]]:
    parser = _parser("create", "Create a knowledge bank.")
    parser.add_argument("name", help="knowledge bank name (need not be unique; ids are)")
    parser.add_argument("--store", default="FAISS", help="vector store type: FAISS (default), CHROMA, "
                                                         "ELASTICSEARCH, AZURE_AI_SEARCH")
    parser.add_argument("--model", default=None, help="embedding model id (default: local:all-MiniLM-L6-v2; "
                        "local:all-MiniLM-L6-v2-int8 for the int8 model, about 1.7x as fast)")
    parser.add_argument("--schema", default="", metavar="KEY=TYPE,...",
                        help=f"metadata schema, types: {', '.join(SCHEMA_TYPES)}")
    parser.add_argument("--settings", default=None, metavar="JSON",
                        help='further settings as a JSON object, e.g. \'{"store": {"index": {"type": "HNSW"}}}\'')
    _common(parser)

    def run(args: argparse.Namespace, client: Any) -> None:
        settings = parse_json_object(args.settings, "--settings") if args.settings else {}
        if args.schema:
            settings["metadata_schema"] = parse_schema(args.schema)
        project = client.get_project(args.project)
        handle = project.create_knowledge_bank(args.name, embedding_llm_id=args.model,
                                               vector_store_type=args.store.upper(), settings=settings)
        info = describe(handle, with_count=False)
        if args.json:
            print_json(info)
        else:
            print(f"created knowledge bank {info['name']!r} with id {info['id']} "
                  f"({info['vector_store_type']}, {info['embedding_llm_id']})")

    return parser, run


def cmd_list() -> tuple[argparse.ArgumentParser, Callable[[argparse.Namespace, Any], None]]:
    parser = _parser("list", "List the knowledge banks of a project with their store, model and size.")
    _common(parser)

    def run(args: argparse.Namespace, client: Any) -> None:
        items = [describe(i.to_knowledge_bank(), tolerant=True)
                 for i in client.get_project(args.project).list_knowledge_banks()]
        if args.json:
            print_json(items)
            return
        print_table(["ID", "NAME", "STORE", "MODEL", "DOCUMENTS"],
                    [[i["id"], i["name"], i["vector_store_type"], i["embedding_llm_id"],
                      "?" if i["documents"] is None else i["documents"]]
                     for i in items], empty=f"no knowledge banks in project {args.project}")
        for item in items:
            if item["documents"] is None:
                print(f"kb list: cannot count {item['name']!r}: {item['error']}", file=sys.stderr)

    return parser, run


def cmd_info() -> tuple[argparse.ArgumentParser, Callable[[argparse.Namespace, Any], None]]:
    parser = _parser("info", "Show a knowledge bank: store, model, document count, schema and settings.")
    parser.add_argument("kb", metavar="NAME", help="knowledge bank name or id")
    _common(parser)

    def run(args: argparse.Namespace, client: Any) -> None:
        info = describe(find_knowledge_bank(client.get_project(args.project), args.kb))
        if args.json:
            print_json(info)
            return
        for label, key in (("id", "id"), ("name", "name"), ("project", "project_key"),
                           ("store", "vector_store_type"), ("model", "embedding_llm_id"), ("documents", "documents"),
                           ("images folder", "images_folder")):
            print(f"{label + ':':<15}{info[key] if info[key] is not None else '-'}")
        index = info.get("index") or {}
        if index.get("index_type"):
            print(f"{'index:':<15}{index['index_type']}, {_size(index.get('memory_bytes'))} in memory, "
                  f"{_size(index.get('disk_bytes'))} on disk"
                  + (f" ({_size(index['vector_file_bytes'])} of them exact vectors, memory-mapped)"
                     if index.get("vector_file_bytes") else ""))
        schema = info["metadata_schema"]
        print(f"{'schema:':<15}" + (", ".join(f"{k}={v}" for k, v in schema.items()) if schema else "(none)"))
        print("settings:")
        print(json.dumps(info["settings"], indent=2, sort_keys=True))

    return parser, run


def cmd_search() -> tuple[argparse.ArgumentParser, Callable[[argparse.Namespace, Any], None]]:
    parser = _parser("search", "Search a knowledge bank.")
    parser.add_argument("kb", metavar="NAME", help="knowledge bank name or id")
    parser.add_argument("query", help="query text")
    parser.add_argument("--type", default="similarity", choices=SEARCH_TYPES, help="search type (default: similarity)")
    parser.add_argument("--k", type=int, default=4, help="number of results (default: 4)")
    parser.add_argument("--filter", default=None, metavar="JSON",
                        help='metadata filter, e.g. \'{"year": {"$gte": 2020}}\'')
    parser.add_argument("--fetch-k", type=int, default=None, help="candidates for mmr (default: 20)")
    parser.add_argument("--score-threshold", type=float, default=None,
                        help="minimum score for similarity_score_threshold")
    _common(parser)

    def run(args: argparse.Namespace, client: Any) -> None:
        if args.k < 1:
            raise errors.InvalidInputError(f"--k must be at least 1, got {args.k}")
        options: dict[str, Any] = {"query": args.query, "k": args.k, "search_type": args.type}
        if args.filter:
            options["filter"] = parse_json_object(args.filter, "--filter")
        if args.fetch_k is not None:
            options["fetch_k"] = args.fetch_k
        if args.score_threshold is not None:
            options["score_threshold"] = args.score_threshold
        core = find_knowledge_bank(client.get_project(args.project), args.kb).as_core_knowledge_bank()
        results = core.search(**options)
        if args.json:
            print_json({"knowledge_bank": core.id, "results": [
                {"id": r.id, "text": r.text, "metadata": r.metadata, "score": r.score, "scores": r.scores,
                 "images": r.image_paths} for r in results]})
            return
        stages = sorted({stage for r in results for stage in r.scores})
        print_table(["#", "ID", "SCORE", *[s.upper() for s in stages], "TEXT"],
                    [[n, r.id, f"{r.score:.4f}", *[_score(r.scores.get(s)) for s in stages], shorten(r.text, 70)]
                     for n, r in enumerate(results, start=1)], empty="no results")

    return parser, run


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def cmd_delete() -> tuple[argparse.ArgumentParser, Callable[[argparse.Namespace, Any], None]]:
    parser = _parser("delete", "Delete a knowledge bank and everything in it.")
    parser.add_argument("kb", metavar="NAME", help="knowledge bank name or id")
    _common(parser)

    def run(args: argparse.Namespace, client: Any) -> None:
        handle = find_knowledge_bank(client.get_project(args.project), args.kb)
        name = handle.name  # read before: an embedded handle looks its name up in the catalog
        handle.delete()
        if args.json:
            print_json({"deleted": handle.id, "name": name})
        else:
            print(f"deleted knowledge bank {name!r} ({handle.id})")

    return parser, run


COMMANDS: dict[str, tuple[str, Callable[..., Any]]] = {
    "create": ("create a knowledge bank", cmd_create),
    "list": ("list knowledge banks with store, model and document count", cmd_list),
    "info": ("show one knowledge bank: settings, schema, document count", cmd_info),
    "search": ("search a knowledge bank (every search type, filters)", cmd_search),
    "delete": ("delete a knowledge bank", cmd_delete),
}


def main(command: str, argv: Sequence[str]) -> int:
    parser, run = COMMANDS[command][1]()
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as exc:  # argparse: --help is 0, a usage error 2
        return int(exc.code or 0)
    client = None
    try:
        client = open_client(args)
        run(args, client)
    except errors.KBError as exc:
        print(f"kb {command}: {exc}", file=sys.stderr)
        return exit_code_for(exc)
    finally:
        if client is not None:
            client.close()
    return 0

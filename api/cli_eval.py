"""``kb eval``: evaluate a knowledge bank on BEIR queries and qrels (the metrics are ``kb.evaluation``)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import kb
from kb.evaluation import DEFAULT_TYPES, evaluate, format_table, load_qrels, load_queries
from kb.lookup import find_knowledge_bank
from kb_base.errors import InvalidInputError, KBError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kb eval", description="Evaluate a knowledge bank on BEIR queries and qrels.")
    parser.add_argument("--project", default="DEFAULT", help="project key (default: DEFAULT)")
    parser.add_argument("--kb", required=True, help="knowledge bank id or name")
    parser.add_argument("--queries", type=Path, required=True, help="BEIR queries.jsonl (_id, text)")
    parser.add_argument("--qrels", type=Path, required=True, help="BEIR qrels .tsv (query-id, corpus-id, score)")
    parser.add_argument("--search-types", default=",".join(DEFAULT_TYPES),
                        help="comma-separated search types (default: similarity,keyword,hybrid)")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    parser.add_argument("--home", type=Path, help="KB_HOME (default: $KB_HOME)")
    parser.add_argument("--url", default=os.environ.get("KB_URL") or None,
                        help="evaluate a knowledge bank of a kb server instead (default: $KB_URL)")
    parser.add_argument("--api-key", default=os.environ.get("KB_API_KEY") or None,
                        help="API key for --url (default: $KB_API_KEY)")
    args = parser.parse_args(argv)
    try:
        if args.url and args.home:
            raise InvalidInputError("give --url (a server) or --home (the embedded home), not both")
        client = kb.api_client(url=args.url, api_key=args.api_key, home=args.home)
        core = find_knowledge_bank(client.get_project(args.project), args.kb).as_core_knowledge_bank()
        queries, qrels = load_queries(args.queries), load_qrels(args.qrels)
        types = [t.strip() for t in args.search_types.split(",") if t.strip()]
        results = evaluate(lambda r: core.search(r), queries, qrels, types)
    except (KBError, OSError) as exc:
        print(f"kb eval: {exc}", file=sys.stderr)
        return 2
    print(format_table(results))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"knowledge_bank": args.kb, "results": results}, indent=2))
    return 0

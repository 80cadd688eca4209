"""Retrieval evaluation of a knowledge bank on BEIR-format queries and qrels (``kb eval``).

Measures are computed by ranx: nDCG@10, recall@100 and MRR@10 for each
search type. Queries are embedded once (through the embedding cache) and
shared by every search type, so comparing types costs one embedding pass.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from kb_base.errors import InvalidInputError
from kb_base.search import SearchRequest

METRICS = ("ndcg@10", "recall@100", "mrr@10")
DEFAULT_TYPES = ("similarity", "keyword", "hybrid")


def parse_queries(lines: Iterable[str], name: str) -> dict[str, str]:
    """BEIR queries (one ``{"_id", "text"}`` JSON object per line); ``name`` labels errors (a path, "queries")."""
    queries: dict[str, str] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            queries[str(item["_id"])] = str(item["text"])
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidInputError(f"{name}:{number}: not a BEIR query line ({exc})") from exc
    return queries


def parse_qrels(lines: Iterable[str], name: str) -> dict[str, dict[str, int]]:
    """BEIR qrels, tab-separated query-id, corpus-id, score (an optional header line)."""
    qrels: dict[str, dict[str, int]] = {}
    for number, row in enumerate(csv.reader(lines, delimiter="\t"), start=1):
        if not row or (number == 1 and row[0] == "query-id"):
            continue
        if len(row) < 3:
            raise InvalidInputError(f"{name}:{number}: expected query-id, corpus-id, score")
        try:
            qrels.setdefault(row[0], {})[row[1]] = int(row[2])
        except ValueError as exc:
            raise InvalidInputError(f"{name}:{number}: score must be an integer, got {row[2]!r}") from exc
    return qrels


def load_queries(path: Path) -> dict[str, str]:
    with open(path, encoding="utf-8") as handle:
        return parse_queries(handle, str(path))


def load_qrels(path: Path) -> dict[str, dict[str, int]]:
    with open(path, encoding="utf-8", newline="") as handle:
        return parse_qrels(handle, str(path))


def evaluate(
    search: Callable[[SearchRequest], list[Any]],
    queries: dict[str, str],
    qrels: dict[str, dict[str, int]],
    search_types: Sequence[str] = DEFAULT_TYPES,
    query_vectors: dict[str, np.ndarray] | None = None,
    depth: int = 100,
    progress: bool = True,
    **options: Any,
) -> dict[str, dict[str, float]]:
    """nDCG@10, recall@100 and MRR@10 per search type. ``search`` runs one SearchRequest."""
    from ranx import Qrels, Run
    from ranx import evaluate as ranx_evaluate

    judged = {q: t for q, t in queries.items() if q in qrels}
    if not judged:
        raise InvalidInputError("no query has relevance judgements: check that query ids match the qrels")
    ranx_qrels = Qrels({q: qrels[q] for q in judged})
    results: dict[str, dict[str, float]] = {}
    for search_type in search_types:
        run: dict[str, dict[str, float]] = {}
        started = time.perf_counter()
        for qid, text in tqdm(judged.items(), desc=f"eval {search_type}", disable=not progress, unit="q"):
            vector = query_vectors.get(qid) if query_vectors else None
            request = SearchRequest(query=text, k=depth, search_type=search_type, **options)
            if vector is not None and search_type in ("similarity", "mmr"):
                request.query, request.vector = None, vector.tolist()
            hits = search(request)
            # ranx wants distinct scores in rank order; ties keep the engine's order.
            run[qid] = {h.id: float(len(hits) - rank) for rank, h in enumerate(hits)} or {"__none__": 0.0}
        scores = ranx_evaluate(ranx_qrels, Run(run), list(METRICS))
        results[search_type] = {m: round(float(scores[m]), 4) for m in METRICS}
        results[search_type]["queries_per_second"] = round(len(judged) / (time.perf_counter() - started), 1)
    return results


def format_table(results: dict[str, dict[str, float]]) -> str:
    header = f"{'search type':<18}" + "".join(f"{m:>12}" for m in METRICS) + f"{'q/s':>10}"
    lines = [header, "-" * len(header)]
    for search_type, scores in results.items():
        lines.append(f"{search_type:<18}" + "".join(f"{scores[m]:>12.4f}" for m in METRICS)
                     + f"{scores.get('queries_per_second', 0):>10.1f}")
    return "\n".join(lines)

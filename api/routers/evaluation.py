"""Retrieval evaluation over REST: BEIR queries and qrels in the body, the metrics table back (``kb eval``)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import Field

from api.deps import core_for, get_client, require
from api.fastjson import OrjsonRoute
from api.keys import Principal
from api.schemas import SearchType, Strict
from kb.client import EmbeddedClient
from kb.evaluation import DEFAULT_TYPES, METRICS, evaluate, parse_qrels, parse_queries
from kb_base.errors import InvalidInputError

router = APIRouter(prefix="/v1/projects/{project_key}/knowledge-banks/{kb_id}", tags=["evaluation"],
                   route_class=OrjsonRoute)

MAX_EVAL_QUERIES = 2000  # one request runs every query per search type: keep it bounded


class EvaluateIn(Strict):
    queries: str = Field(description="BEIR queries.jsonl text: one {\"_id\", \"text\"} object per line",
                         examples=['{"_id": "q1", "text": "How do solar panels work?"}'])
    qrels: str = Field(description="BEIR qrels TSV text: query-id, corpus-id, score (header line optional)",
                       examples=["query-id\tcorpus-id\tscore\nq1\tdoc-1\t1"])
    search_types: list[SearchType] = Field(default_factory=lambda: list(DEFAULT_TYPES))


@router.post("/evaluate", summary="nDCG@10, recall@100 and MRR@10 per search type on uploaded queries and qrels")
async def evaluate_knowledge_bank(project_key: str, kb_id: str, body: EvaluateIn, request: Request,
                                  client: EmbeddedClient = Depends(get_client),
                                  _: Principal = Depends(require("reader"))) -> dict:
    queries, qrels = parse_queries(body.queries.splitlines(), "queries"), parse_qrels(body.qrels.splitlines(), "qrels")
    if len(queries) > MAX_EVAL_QUERIES:
        raise InvalidInputError(f"{len(queries)} queries; the limit is {MAX_EVAL_QUERIES} per request "
                                "(use `kb eval` for more)")
    if not body.search_types:
        raise InvalidInputError("search_types must name at least one search type")
    core = core_for(client, project_key, kb_id)
    depth = min(100, request.app.state.settings.max_k)
    results = await run_in_threadpool(evaluate, core.search, queries, qrels, body.search_types, None, depth, False)
    judged = sum(1 for q in queries if q in qrels)
    return {"metrics": list(METRICS), "queries": len(queries), "judged_queries": judged, "results": results}

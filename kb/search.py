"""The search engine shared by every store.

``execute_search`` turns a ``SearchRequest`` (``kb_base.search``) into store calls: dense similarity,
keyword (BM25), mmr re-selection, fusion of the two lists for hybrid search (``kb.fusion``) and
reranking for semantic hybrid (``kb.rerank``). Drivers only answer the primitive ``similarity`` and
``keyword`` calls, so every search type behaves the same on every store.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from langchain_core.vectorstores.utils import maximal_marginal_relevance

from kb.fusion import hybrid_search
from kb_base.errors import UnsupportedSearchError
from kb_base.filters import Filter, parse_filter
from kb_base.search import HYBRID_TYPES, SearchRequest, SearchResult
from stores.base import Hit, StoreReader
from stores.record_checks import check_query_vector


def _result(hit: Hit, stage: str) -> SearchResult:
    return SearchResult(hit.record.id, hit.record.text, hit.record.metadata, hit.score, {stage: hit.score})


@dataclass
class SearchContext:
    """What a search needs besides the store: how to embed, how to fuse, how to rerank."""

    embed_query: Callable[[str], np.ndarray]
    check_filter: Callable[[Filter | None], Filter | None] = lambda f: f
    # the knowledge bank's search.fusion settings: method, weight, normalisation, rank_constant, candidates
    fusion: Mapping[str, Any] = field(default_factory=dict)
    reranker: Any = None  # kb.rerank.Reranker or None
    keyword_available: bool = True


def execute_search(reader: StoreReader, request: SearchRequest, ctx: SearchContext) -> list[SearchResult]:
    request.validate()
    flt = ctx.check_filter(parse_filter(request.filter))  # type: ignore[arg-type]
    kind = request.search_type

    def query_vector(checked_by_store: bool = False) -> np.ndarray:
        if request.vector is not None:
            # every driver's similarity checks the vector and its dimension itself (asking the store for the
            # dimension costs a snapshot): the similarity paths hand it over as it came
            if checked_by_store:
                return request.vector  # type: ignore[return-value]
            return check_query_vector(request.vector, reader.dimension)
        return ctx.embed_query(request.query or "")

    if kind in ("keyword", *HYBRID_TYPES) and not ctx.keyword_available:
        raise UnsupportedSearchError(f"this knowledge bank's store has no keyword index, so {kind} is unavailable")
    if kind == "similarity":
        return [_result(h, "dense") for h in reader.similarity(query_vector(True), request.k, flt)]
    if kind == "similarity_score_threshold":
        hits = reader.similarity(query_vector(True), request.k, flt)
        return [_result(h, "dense") for h in hits if h.score >= float(request.score_threshold or 0.0)]
    if kind == "mmr" or (request.diversity and kind == "similarity"):
        return _mmr(reader, query_vector(), request, flt)
    if kind == "keyword":
        return [_result(h, "keyword") for h in reader.keyword(request.query or "", request.k, flt)]
    native = getattr(reader, "native_hybrid_search", None)
    if native is not None:  # the store fuses (and reranks) itself, in one request (Azure AI Search)
        return native(request, flt, query_vector)[: request.k]
    # the fused results the caller uses: k, or the reranker's pool
    keep = max(request.k, getattr(ctx.reranker, "candidates", 0)) if kind == "semantic_hybrid" else request.k
    results = hybrid_search(reader, request, flt, query_vector, ctx, keep)
    if kind == "semantic_hybrid":
        if ctx.reranker is None:
            raise UnsupportedSearchError(
                "semantic_hybrid needs a reranker: configure one in the knowledge bank settings (search.reranker)"
            )
        results = ctx.reranker.rerank(request.query or "", results, request.k)
    return results[: request.k]


def _mmr(reader: StoreReader, vector: np.ndarray, request: SearchRequest, flt: Filter | None) -> list[SearchResult]:
    hits = reader.similarity(vector, max(request.fetch_k, request.k), flt, with_vectors=True)
    if not hits:
        return []
    candidates = np.stack([np.asarray(h.record.vector, dtype=np.float32) for h in hits])
    chosen = maximal_marginal_relevance(
        np.asarray(vector, dtype=np.float32), candidates, lambda_mult=float(request.lambda_mult), k=request.k
    )
    out = []
    for i in chosen:
        hits[i].record.vector = None
        out.append(_result(hits[i], "dense"))
    return out

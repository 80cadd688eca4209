"""Search requests and results, and the search engine shared by every store.

A ``SearchRequest`` says what to find; ``execute_search`` turns it into store
calls: dense similarity, keyword (BM25), mmr re-selection, fusion of the two
lists for hybrid search and reranking for semantic hybrid. Drivers only
answer the primitive ``similarity`` and ``keyword`` calls, so every search
type behaves the same on every store.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kb.errors import InvalidInputError, UnsupportedSearchError
from kb.filters import Filter, parse_filter
from kb.input_checks import MAX_TEXT_CHARS, check_string
from stores.base import Hit, StoreReader
from stores.record_checks import check_query_vector

SEARCH_TYPES = ("similarity", "similarity_score_threshold", "mmr", "keyword", "hybrid", "semantic_hybrid")
HYBRID_TYPES = ("hybrid", "semantic_hybrid")
MAX_K = 10_000
MULTIMODAL_KEY = "KB_MULTIMODAL_CONTENT"
DOCUMENT_INFO_KEY = "KB_DOCUMENT_INFO"


def check_count(name: str, value: Any) -> None:
    """``k`` and ``fetch_k``: integers in [1, MAX_K] (bools are not counts)."""
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_K:
        raise InvalidInputError(f"{name} must be an integer between 1 and {MAX_K}, got {value!r}")


@dataclass
class SearchRequest:
    query: str | None = None
    vector: Sequence[float] | None = None
    k: int = 4
    search_type: str = "similarity"
    filter: Mapping[str, Any] | Filter | None = None
    fetch_k: int = 20
    lambda_mult: float = 0.5
    score_threshold: float | None = None
    # hybrid options; None means the knowledge bank's default
    fusion: str | None = None
    fusion_weight: float | None = None
    normalisation: str | None = None
    candidates: int | None = None
    diversity: bool = False  # the reference's "diversity option": mmr re-selection of similarity results

    def validate(self) -> None:
        if self.search_type not in SEARCH_TYPES:
            raise UnsupportedSearchError(
                f"unknown search type {self.search_type!r}; choose one of {', '.join(SEARCH_TYPES)}"
            )
        check_count("k", self.k)
        check_count("fetch_k", self.fetch_k)
        if not isinstance(self.lambda_mult, int | float) or not 0.0 <= float(self.lambda_mult) <= 1.0:
            raise InvalidInputError(f"lambda_mult must be between 0 and 1, got {self.lambda_mult!r}")
        if self.score_threshold is not None and (
            not isinstance(self.score_threshold, int | float) or not math.isfinite(self.score_threshold)
        ):
            raise InvalidInputError(f"score_threshold must be a finite number, got {self.score_threshold!r}")
        if self.search_type == "similarity_score_threshold" and self.score_threshold is None:
            raise InvalidInputError("search type similarity_score_threshold needs a score_threshold")
        if self.query is None and self.vector is None:
            raise InvalidInputError("a search needs a query text or a query vector")
        if self.query is not None:
            check_string(self.query, "query", MAX_TEXT_CHARS)  # a lone surrogate would fail in the model as a 502
        if self.diversity and self.search_type in (*HYBRID_TYPES, "keyword"):
            raise UnsupportedSearchError(
                f"the diversity option (mmr) cannot combine with {self.search_type} search; "
                "use search_type='mmr' or drop diversity"
            )
        if self.search_type in ("keyword", *HYBRID_TYPES) and not self.query:
            raise InvalidInputError(f"search type {self.search_type} needs a query text")


@dataclass
class SearchResult:
    id: str
    text: str
    metadata: dict[str, Any]
    score: float
    scores: dict[str, float] = field(default_factory=dict)  # per-stage scores: dense, keyword, fused, rerank

    @property
    def image_paths(self) -> list[str]:
        return image_paths_of(self.metadata)


def image_paths_of(metadata: Mapping[str, Any]) -> list[str]:
    """Image paths recorded by the metadata formatter's ``with_retrieval_content``."""
    raw = metadata.get(MULTIMODAL_KEY)
    if not raw:
        return []
    try:
        content = json.loads(raw) if isinstance(raw, str) else raw
    except json.JSONDecodeError:
        return []
    if isinstance(content, dict) and content.get("type") == "images":
        return [p for p in content.get("content", []) if isinstance(p, str)]
    return []


def _result(hit: Hit, stage: str) -> SearchResult:
    return SearchResult(hit.record.id, hit.record.text, hit.record.metadata, hit.score, {stage: hit.score})


@dataclass
class SearchContext:
    """What a search needs besides the store: how to embed, how to fuse, how to rerank."""

    embed_query: Callable[[str], np.ndarray]
    check_filter: Callable[[Filter | None], Filter | None] = lambda f: f
    fusion: Mapping[str, Any] = field(default_factory=dict)  # {"method": "rrf"|"linear", "weight":..., "k":...}
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
    from kb.fusion import hybrid_search  # local import: fusion imports this module's types

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
    from langchain_core.vectorstores.utils import maximal_marginal_relevance

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

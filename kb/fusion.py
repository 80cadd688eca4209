"""Fusion of dense and keyword result lists for hybrid search.

Two methods:
- ``rrf``: reciprocal rank fusion, ``sum 1 / (rank_constant + rank)``; needs no score calibration.
- ``linear``: normalise each list's scores, then ``weight * dense + (1 - weight) * keyword``;
  a document missing from a list takes that list's lowest normalised score. Normalisations:
  ``minmax`` (to [0, 1]), ``zscore`` (mean 0, standard deviation 1) and ``dbsf``
  (distribution-based: mean +- 3 standard deviations mapped to [0, 1], as in Qdrant).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from kb.errors import InvalidInputError
from kb.filters import Filter
from kb.search import SearchContext, SearchRequest, SearchResult
from stores.base import Hit, StoreReader

FUSION_METHODS = ("rrf", "linear")
NORMALISATIONS = ("minmax", "zscore", "dbsf")
# Chosen on SciFact train by 5-fold cross-validation over queries (every fold picked z-score, weight 0.4;
# held-out nDCG@10 0.7368): see kb/benchmarks/scifact.py --sweep.
DEFAULT_FUSION: dict[str, Any] = {"method": "linear", "weight": 0.4, "normalisation": "zscore", "rank_constant": 60,
                                  "candidates": 100}


def fusion_settings(raw: Mapping[str, Any] | None, request: SearchRequest | None = None) -> dict[str, Any]:
    out = {**DEFAULT_FUSION, **(raw or {})}
    if request is not None:
        if request.fusion is not None:
            out["method"] = request.fusion
        if request.fusion_weight is not None:
            out["weight"] = request.fusion_weight
        if request.normalisation is not None:
            out["normalisation"] = request.normalisation
        if request.candidates is not None:
            out["candidates"] = request.candidates
    if out["normalisation"] not in NORMALISATIONS:
        raise InvalidInputError(f"unknown score normalisation {out['normalisation']!r}; "
                                f"choose one of {', '.join(NORMALISATIONS)}")
    if out["method"] not in FUSION_METHODS:
        raise InvalidInputError(f"unknown fusion method {out['method']!r}; choose one of {', '.join(FUSION_METHODS)}")
    weight = out["weight"]
    if not isinstance(weight, int | float) or isinstance(weight, bool) or not 0.0 <= weight <= 1.0:
        raise InvalidInputError(f"fusion weight must be between 0 and 1, got {weight!r}")
    candidates = out["candidates"]
    if not isinstance(candidates, int) or isinstance(candidates, bool) or not 1 <= candidates <= 10_000:
        raise InvalidInputError(f"hybrid candidates must be an integer between 1 and 10000, got {candidates!r}")
    return out


def reciprocal_rank_fusion(lists: Sequence[Sequence[Hit]], rank_constant: int = 60) -> list[tuple[str, float]]:
    scores: dict[str, float] = {}
    for hits in lists:
        for rank, hit in enumerate(hits, start=1):
            scores[hit.record.id] = scores.get(hit.record.id, 0.0) + 1.0 / (rank_constant + rank)
    return sorted(scores.items(), key=lambda item: (-item[1], item[0]))


def normalise_scores(hits: Sequence[Hit], method: str = "minmax") -> dict[str, float]:
    if not hits:
        return {}
    values = np.array([h.score for h in hits], dtype=np.float64)
    if method == "minmax":
        low, span = float(values.min()), float(values.max() - values.min())
        normalised = (values - low) / span if span > 0 else np.ones_like(values)
    else:
        mean, std = float(values.mean()), float(values.std())
        std = std if std > 0 else 1.0
        if method == "zscore":
            normalised = (values - mean) / std
        else:  # dbsf
            low, high = mean - 3 * std, mean + 3 * std
            normalised = np.clip((values - low) / (high - low), 0.0, 1.0)
    return {h.record.id: float(v) for h, v in zip(hits, normalised, strict=True)}


def linear_fusion(dense: Sequence[Hit], keyword: Sequence[Hit], weight: float,
                  normalisation: str = "minmax") -> list[tuple[str, float]]:
    dense_n, keyword_n = normalise_scores(dense, normalisation), normalise_scores(keyword, normalisation)
    dense_floor = min(dense_n.values(), default=0.0)
    keyword_floor = min(keyword_n.values(), default=0.0)
    ids = dense_n.keys() | keyword_n.keys()
    fused = {i: weight * dense_n.get(i, dense_floor) + (1.0 - weight) * keyword_n.get(i, keyword_floor) for i in ids}
    return sorted(fused.items(), key=lambda item: (-item[1], item[0]))


def hybrid_search(
    reader: StoreReader,
    request: SearchRequest,
    flt: Filter | None,
    query_vector: Callable[[], np.ndarray],
    ctx: SearchContext,
) -> list[SearchResult]:
    settings = fusion_settings(ctx.fusion, request)
    depth = max(settings["candidates"], request.k)
    dense = reader.similarity(query_vector(), depth, flt)
    keyword = reader.keyword(request.query or "", depth, flt)
    if settings["method"] == "rrf":
        fused = reciprocal_rank_fusion([dense, keyword], int(settings["rank_constant"]))
    else:
        fused = linear_fusion(dense, keyword, float(settings["weight"]), settings["normalisation"])
    by_id = {h.record.id: h.record for h in [*keyword, *dense]}
    dense_scores = {h.record.id: h.score for h in dense}
    keyword_scores = {h.record.id: h.score for h in keyword}
    results = []
    for doc_id, score in fused:
        record = by_id[doc_id]
        stages = {"fused": score}
        if doc_id in dense_scores:
            stages["dense"] = dense_scores[doc_id]
        if doc_id in keyword_scores:
            stages["keyword"] = keyword_scores[doc_id]
        results.append(SearchResult(record.id, record.text, record.metadata, score, stages))
    return results

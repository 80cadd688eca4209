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
from typing import TYPE_CHECKING, Any

import numpy as np

from kb_base.errors import InvalidInputError
from kb_base.filters import Filter
from kb_base.search import SearchRequest, SearchResult
from stores.base import Hit, Record, StoreReader

if TYPE_CHECKING:  # kb.search imports this module to run hybrid searches
    from kb.search import SearchContext

FUSION_METHODS = ("rrf", "linear")
NORMALISATIONS = ("minmax", "zscore", "dbsf")
# Chosen on SciFact train by 5-fold cross-validation over queries (every fold picked z-score, weight 0.4;
# held-out nDCG@10 0.7368): see benchmarks/scifact.py --sweep.
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


Scored = Sequence[tuple[str, float]]  # (record id, score), best first


def _pairs(hits: Sequence[Hit]) -> list[tuple[str, float]]:
    return [(h.record.id, h.score) for h in hits]


def rrf_of(lists: Sequence[Scored], rank_constant: int = 60) -> list[tuple[str, float]]:
    scores: dict[str, float] = {}
    for ranked in lists:
        for rank, (doc_id, _) in enumerate(ranked, start=1):
            scores[doc_id] = scores.get(doc_id, 0.0) + 1.0 / (rank_constant + rank)
    return sorted(scores.items(), key=lambda item: (-item[1], item[0]))


def reciprocal_rank_fusion(lists: Sequence[Sequence[Hit]], rank_constant: int = 60) -> list[tuple[str, float]]:
    return rrf_of([_pairs(hits) for hits in lists], rank_constant)


def normalised(scored: Scored, method: str = "minmax") -> dict[str, float]:
    if not scored:
        return {}
    values = np.array([score for _, score in scored], dtype=np.float64)
    if method == "minmax":
        low, span = float(values.min()), float(values.max() - values.min())
        normalised_values = (values - low) / span if span > 0 else np.ones_like(values)
    else:
        mean, std = float(values.mean()), float(values.std())
        std = std if std > 0 else 1.0
        if method == "zscore":
            normalised_values = (values - mean) / std
        else:  # dbsf
            low, high = mean - 3 * std, mean + 3 * std
            normalised_values = np.clip((values - low) / (high - low), 0.0, 1.0)
    return {doc_id: float(v) for (doc_id, _), v in zip(scored, normalised_values, strict=True)}


def normalise_scores(hits: Sequence[Hit], method: str = "minmax") -> dict[str, float]:
    return normalised(_pairs(hits), method)


def linear_of(dense: Scored, keyword: Scored, weight: float, normalisation: str = "minmax") -> list[tuple[str, float]]:
    dense_n, keyword_n = normalised(dense, normalisation), normalised(keyword, normalisation)
    dense_floor = min(dense_n.values(), default=0.0)
    keyword_floor = min(keyword_n.values(), default=0.0)
    ids = dense_n.keys() | keyword_n.keys()
    fused = {i: weight * dense_n.get(i, dense_floor) + (1.0 - weight) * keyword_n.get(i, keyword_floor) for i in ids}
    return sorted(fused.items(), key=lambda item: (-item[1], item[0]))


def linear_fusion(dense: Sequence[Hit], keyword: Sequence[Hit], weight: float,
                  normalisation: str = "minmax") -> list[tuple[str, float]]:
    return linear_of(_pairs(dense), _pairs(keyword), weight, normalisation)


def _fuse(dense: Scored, keyword: Scored, settings: dict[str, Any]) -> list[tuple[str, float]]:
    if settings["method"] == "rrf":
        return rrf_of([dense, keyword], int(settings["rank_constant"]))
    return linear_of(dense, keyword, float(settings["weight"]), settings["normalisation"])


def _results(fused: Sequence[tuple[str, float]], records: dict[str, Record], dense: Scored,
             keyword: Scored) -> list[SearchResult]:
    dense_scores, keyword_scores = dict(dense), dict(keyword)
    results = []
    for doc_id, score in fused:
        record = records[doc_id]
        stages = {"fused": score}
        if doc_id in dense_scores:
            stages["dense"] = dense_scores[doc_id]
        if doc_id in keyword_scores:
            stages["keyword"] = keyword_scores[doc_id]
        results.append(SearchResult(record.id, record.text, record.metadata, score, stages))
    return results


def hybrid_search(
    reader: StoreReader,
    request: SearchRequest,
    flt: Filter | None,
    query_vector: Callable[[bool], np.ndarray],
    ctx: SearchContext,
    keep: int | None = None,
) -> list[SearchResult]:
    """Fused results, best first; ``keep`` bounds how many the caller will use (only those need records)."""
    settings = fusion_settings(ctx.fusion, request)
    depth = max(settings["candidates"], request.k)
    vector = query_vector(True)  # every driver checks a query vector and its dimension itself
    ranked = reader.ranked_lists(vector, request.query or "", depth, flt)
    if ranked is not None:  # ids and scores first; records only for what the fusion keeps
        fused = _fuse(ranked.dense, ranked.keyword, settings)[:keep]
        records = ranked.records([doc_id for doc_id, _ in fused])
        if records is not None:
            return _results(fused, records, ranked.dense, ranked.keyword)
    dense = reader.similarity(vector, depth, flt)
    keyword = reader.keyword(request.query or "", depth, flt)
    dense_pairs, keyword_pairs = _pairs(dense), _pairs(keyword)
    fused = _fuse(dense_pairs, keyword_pairs, settings)[:keep]
    by_id = {h.record.id: h.record for h in [*keyword, *dense]}
    return _results(fused, by_id, dense_pairs, keyword_pairs)

"""Fusion of dense and keyword result lists for hybrid search.

Two methods:
- ``rrf``: reciprocal rank fusion, ``sum 1 / (rank_constant + rank)``; needs no score calibration. A document
  missing from a list gets nothing from it, every document in it something.
- ``linear``: normalise each list's scores, then ``weight * dense + (1 - weight) * keyword``. Normalisations:

  - ``bounded`` (the default; "theoretical min-max", Bruch, Gai and Ingber, ACM TOIS 2023): each list is scaled
    from its score's theoretical floor to the list's best, ``(score - floor) / (best - floor)``: cosine
    similarity's floor is -1, BM25's is 0. Every normalised score is in [0, 1], so the fused score is too, and
    a lone keyword match keeps its full credit (1) where every document without the term gets 0.
  - ``minmax`` (the list's own lowest and highest to [0, 1]), ``zscore`` (mean 0, standard deviation 1) and
    ``dbsf`` (distribution-based: mean +- 3 standard deviations mapped to [0, 1], as in Qdrant).

  A document missing from a list gets strictly less credit from it than every document in it
  (``missing_credit``): it is taken to rank just below the list's last, at the lowest normalised score less
  the mean gap between neighbours in the list (one unit of the scale when the list has one score, or equal
  ones). With ``bounded`` that credit is floored at 0, and a document missing from the keyword list gets 0
  outright: BM25's floor, the score of a document holding none of the query's terms.

The scores each list gave (cosine similarity, BM25) stay beside the fused one in ``SearchResult.scores``.
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
NORMALISATIONS = ("bounded", "minmax", "zscore", "dbsf")
LIST_KINDS = ("dense", "keyword")
# The lowest score each list's measure can give: cosine similarity (every store reports it for dense lists,
# whatever the service's own score), and BM25 (a document holding none of the query's terms).
THEORETICAL_FLOOR = {"dense": -1.0, "keyword": 0.0}
_THEORETICAL_CEILING = {"dense": 1.0, "keyword": float("inf")}
# A missing document's distance below a list of one score (or of equal scores), in each scale's units.
_UNIT = {"bounded": 1.0, "minmax": 1.0, "zscore": 1.0, "dbsf": 0.5}
# Chosen on SciFact train by 5-fold cross-validation over queries among RRF and every normalisation with dense
# weights 0.1-0.9 (every fold picked bounded, weight 0.8; held-out nDCG@10 0.7397, where z-score at 0.4, the
# default before, gives 0.7368): see benchmarks/scifact.py --sweep. Exact matches: benchmarks/exact_match.py.
DEFAULT_FUSION: dict[str, Any] = {"method": "linear", "weight": 0.8, "normalisation": "bounded", "rank_constant": 60,
                                  "candidates": 100}


def fusion_settings(raw: Mapping[str, Any] | None, request: SearchRequest | None = None) -> dict[str, Any]:
    unknown = sorted(set(raw or {}) - set(DEFAULT_FUSION))
    if unknown:  # a misspelt key (say "k" for "rank_constant") would otherwise be ignored without a word
        raise InvalidInputError(f"unknown fusion setting(s) {', '.join(map(repr, unknown))}; "
                                f"the settings are {', '.join(DEFAULT_FUSION)}")
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
    rank_constant = out["rank_constant"]
    if not isinstance(rank_constant, int) or isinstance(rank_constant, bool) or not 1 <= rank_constant <= 10_000:
        raise InvalidInputError(f"rank_constant must be an integer between 1 and 10000, got {rank_constant!r}")
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


def normalised(scored: Scored, method: str = "minmax", kind: str = "dense") -> dict[str, float]:
    """Each id's normalised score; ``kind`` (``dense`` or ``keyword``) says which floor ``bounded`` uses."""
    if not scored:
        return {}
    values = np.array([score for _, score in scored], dtype=np.float64)
    if method == "bounded":
        floor = THEORETICAL_FLOOR[kind]
        values = np.clip(values, floor, _THEORETICAL_CEILING[kind])  # a cosine of 1.0000001 is float noise
        span = float(values.max()) - floor
        normalised_values = (values - floor) / span if span > 0 else np.ones_like(values)
    elif method == "minmax":
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


def missing_credit(normalised_values: Sequence[float], method: str, kind: str = "dense") -> float:
    """What a document missing from a list gets from it: strictly less than every document in the list.

    The list's lowest normalised score less the mean gap between its neighbours (a document just below its
    last), or less one unit of the scale when the list has one score or equal ones; with ``bounded``, never
    below the scale's 0, and exactly 0 for the keyword list (BM25's floor: none of the query's terms)."""
    if len(normalised_values) == 0:
        return 0.0
    low, high = float(min(normalised_values)), float(max(normalised_values))
    below = low - ((high - low) / len(normalised_values) if high > low else _UNIT[method])
    if method != "bounded" or low <= 0.0:  # low <= 0 under bounded: a cosine of exactly -1, kept strict
        return below
    return 0.0 if kind == "keyword" else max(below, 0.0)


def normalise_scores(hits: Sequence[Hit], method: str = "minmax", kind: str = "dense") -> dict[str, float]:
    return normalised(_pairs(hits), method, kind)


def linear_of(dense: Scored, keyword: Scored, weight: float, normalisation: str = "minmax") -> list[tuple[str, float]]:
    dense_n, keyword_n = normalised(dense, normalisation, "dense"), normalised(keyword, normalisation, "keyword")
    dense_missing = missing_credit(list(dense_n.values()), normalisation, "dense")
    keyword_missing = missing_credit(list(keyword_n.values()), normalisation, "keyword")
    ids = dense_n.keys() | keyword_n.keys()
    fused = {i: weight * dense_n.get(i, dense_missing) + (1.0 - weight) * keyword_n.get(i, keyword_missing)
             for i in ids}
    return sorted(fused.items(), key=lambda item: (-item[1], item[0]))


def linear_fusion(dense: Sequence[Hit], keyword: Sequence[Hit], weight: float,
                  normalisation: str = "minmax") -> list[tuple[str, float]]:
    return linear_of(_pairs(dense), _pairs(keyword), weight, normalisation)


def fuse(dense: Scored, keyword: Scored, settings: Mapping[str, Any]) -> list[tuple[str, float]]:
    """Both lists, (id, score) best first, fused as ``settings`` (``fusion_settings``) say; best first."""
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
        fused = fuse(ranked.dense, ranked.keyword, settings)[:keep]
        records = ranked.records([doc_id for doc_id, _ in fused])
        if records is not None:
            return _results(fused, records, ranked.dense, ranked.keyword)
    dense = reader.similarity(vector, depth, flt)
    keyword = reader.keyword(request.query or "", depth, flt)
    dense_pairs, keyword_pairs = _pairs(dense), _pairs(keyword)
    fused = fuse(dense_pairs, keyword_pairs, settings)[:keep]
    by_id = {h.record.id: h.record for h in [*keyword, *dense]}
    return _results(fused, by_id, dense_pairs, keyword_pairs)

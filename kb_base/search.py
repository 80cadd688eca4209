"""Search requests and results: what to find, and what comes back.

``SearchRequest.validate`` checks a request before any store sees it; ``kb.search.execute_search``
runs it. Both types sit here, below the stores, because drivers build results too (Azure AI Search
fuses hybrid results itself).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kb_base.errors import InvalidInputError, UnsupportedSearchError
from kb_base.filters import Filter
from kb_base.input_checks import MAX_TEXT_CHARS, check_string

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

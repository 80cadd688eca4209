"""Checks of a knowledge bank's ``search`` settings before they are saved (Python API and REST alike).

A setting that every later search would trip over (an unknown fusion method, a reranker without a model, a
default search type the knowledge bank cannot run) is refused when it is saved, with a 422 naming it, rather
than stored and then failing each search. The fusion settings are checked by ``kb.fusion.fusion_settings``
(what a hybrid search reads them with), the reranker by building it as a search would.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kb.fusion import fusion_settings
from kb.knowledge_bank import keyword_index_enabled
from kb_base.errors import InvalidInputError
from kb_base.search import HYBRID_TYPES, SEARCH_TYPES

if TYPE_CHECKING:  # the client calls these checks when it saves settings
    from kb.client import EmbeddedClient

DEFAULT_K = 4  # what a search that names no k gets (as SearchRequest)
MAX_K = 10_000  # the largest default_k anywhere; a server may allow less (KB_MAX_K)
SEARCH_SETTING_KEYS = ("default_search_type", "default_k", "fusion", "reranker")
# a default must run with nothing more in the request: similarity_score_threshold needs a threshold
DEFAULT_SEARCH_TYPES = tuple(t for t in SEARCH_TYPES if t != "similarity_score_threshold")


def check_search_settings(client: EmbeddedClient, raw: dict[str, Any], max_k: int = MAX_K) -> None:
    """InvalidInputError naming the first ``raw["search"]`` setting a search could not use."""
    search = raw.get("search")
    if search is None:
        return
    if not isinstance(search, dict):
        raise InvalidInputError(f"search settings must be an object, got {type(search).__name__}")
    unknown = sorted(set(search) - set(SEARCH_SETTING_KEYS))
    if unknown:
        raise InvalidInputError(f"unknown search setting {unknown[0]!r}; the search settings are "
                                f"{', '.join(SEARCH_SETTING_KEYS)}")
    fusion = search.get("fusion")
    if fusion is not None:
        if not isinstance(fusion, dict):
            raise InvalidInputError(f"search.fusion must be an object, got {type(fusion).__name__}")
        fusion_settings(fusion)
    reranker = search.get("reranker")
    if reranker:
        try:
            client.reranker_for(reranker)
        except (TypeError, ValueError) as exc:  # e.g. a timeout that is not a number
            raise InvalidInputError(f"search.reranker is not usable: {exc}") from exc
    k = search.get("default_k")
    if k is not None and (not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= max_k):
        raise InvalidInputError(f"search.default_k must be an integer between 1 and {max_k} (KB_MAX_K), got {k!r}")
    kind = search.get("default_search_type")
    if kind is None:
        return
    if kind not in DEFAULT_SEARCH_TYPES:
        raise InvalidInputError(f"search.default_search_type must be one of {', '.join(DEFAULT_SEARCH_TYPES)}, "
                                f"got {kind!r}")
    if kind == "semantic_hybrid" and not reranker:
        raise InvalidInputError("search.default_search_type semantic_hybrid needs a search.reranker")
    if kind in ("keyword", *HYBRID_TYPES) and not keyword_index_enabled(raw):
        raise InvalidInputError(f"search.default_search_type {kind} needs the keyword index, which this "
                                "knowledge bank has turned off (keyword.index false)")

"""A committed generation of an Azure AI Search knowledge bank: every read."""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from kb_base.errors import UnsupportedSearchError
from kb_base.filters import Filter
from kb_base.search import SearchResult
from stores.azure_search.client import SEMANTIC_CONFIGURATION
from stores.azure_search.filters import field_name, in_list, literal, to_odata
from stores.base import (
    Hit,
    Record,
    StoreReader,
)
from stores.record_checks import check_query_vector, normalise

if TYPE_CHECKING:  # the store imports this module to open views
    from stores.azure_search.store import AzureSearchStore

log = logging.getLogger(__name__)
PAGE = 1000
_SIMPLE_SYNTAX = re.compile(r'([+\-&|!(){}\[\]^"~*?:\\/])')
CAPTIONS_KEY = "KB_SEMANTIC_CAPTIONS"
ANSWERS_KEY = "KB_SEMANTIC_ANSWERS"


def index_name(prefix: str, kb_id: str) -> str:
    """``<prefix>kb-<id>-<hash>``: Azure index names are lower-case letters, digits and single dashes (2-128
    characters), so the id is folded, and a hash of the exact id keeps ids that fold alike apart."""
    suffix = hashlib.sha256(kb_id.encode()).hexdigest()[:8]
    name = re.sub(r"[^a-z0-9-]+", "-", f"{prefix}kb-{kb_id}".lower())
    name = re.sub(r"-{2,}", "-", name).strip("-")[:118].strip("-")
    return f"{name}-{suffix}"


def physical_key(generation: int, kb_id: str) -> str:
    return f"{generation}-{hashlib.sha256(kb_id.encode()).hexdigest()[:40]}"


def escape_text(query: str) -> str:
    """A query as plain terms in the simple query syntax (kb's keyword search has no operators)."""
    return _SIMPLE_SYNTAX.sub(r"\\\1", query)


def visible(generation: int) -> str:
    return f"kb_gen le {generation} and kb_del gt {generation}"


class AzureView(StoreReader):
    """Reads at one generation (the committed one, or an open transaction's own)."""

    def __init__(self, store: AzureSearchStore, generation: int, dim: int | None) -> None:
        self.store, self.generation, self._dim = store, generation, dim

    @property
    def dimension(self) -> int | None:
        return self._dim

    def _filter(self, flt: Filter | None) -> str | None:
        """The OData filter for ``flt`` at this generation; None when nothing can match."""
        known = self.store.service.known_fields()
        refreshed = False

        def lookup(key: str, kind: str) -> str | None:
            nonlocal known, refreshed
            name = field_name(key, kind)
            if name not in known and not refreshed:  # another process may have added it
                known, refreshed = self.store.service.known_fields(refresh=True), True
            return name if name in known else None

        expression = to_odata(flt, lookup)
        if expression is False:
            return None
        return visible(self.generation) if expression is True else f"{visible(self.generation)} and {expression}"

    @staticmethod
    def _select(with_vectors: bool) -> list[str]:
        return ["kb_id", "text", "meta_json", *(["vector"] if with_vectors else [])]

    @staticmethod
    def _record(item: dict[str, Any], with_vectors: bool) -> Record:
        vector = np.asarray(item["vector"], dtype=np.float32) if with_vectors and item.get("vector") else None
        return Record(item["kb_id"], item.get("text") or "", json.loads(item["meta_json"]), vector)

    def _search(self, **kwargs: Any) -> tuple[list[dict[str, Any]], int | None, list[Any]]:
        if self._dim is None:
            return [], 0, []
        return self.store.service.search(**kwargs)

    def get(self, ids: Sequence[str], with_vectors: bool = False) -> list[Record]:
        found: dict[str, Record] = {}
        unique = [i for i in dict.fromkeys(ids) if isinstance(i, str)]
        for start in range(0, len(unique), PAGE):
            part = unique[start : start + PAGE]
            items, _, _ = self._search(search_text="*", top=len(part), select=self._select(with_vectors),
                                       filter=f"{visible(self.generation)} and {in_list('kb_id', part)}")
            found.update((r.id, r) for r in (self._record(i, with_vectors) for i in items))
        return [found[i] for i in ids if i in found]

    def count(self, flt: Filter | None = None) -> int:
        odata = self._filter(flt)
        if odata is None:
            return 0
        _, total, _ = self._search(search_text="*", filter=odata, top=0, include_total_count=True)
        return int(total or 0)

    def _pages(self, flt: Filter | None, size: int, select: list[str]) -> Iterator[list[dict[str, Any]]]:
        """Every match in kb_id order, by range on kb_id (the service caps skip at 100,000)."""
        odata = self._filter(flt)
        if odata is None:
            return
        after: str | None = None
        while True:
            page_filter = odata if after is None else f"{odata} and kb_id gt {literal(after)}"
            items, _, _ = self._search(search_text="*", filter=page_filter, top=size, select=select,
                                       order_by=["kb_id asc"])
            if not items:
                return
            yield items
            if len(items) < size:
                return
            after = items[-1]["kb_id"]

    def ids_where(self, flt: Filter | None) -> list[str]:
        return [item["kb_id"] for page in self._pages(flt, PAGE, ["kb_id"]) for item in page]

    def iter_records(self, batch_size: int = 1000, with_vectors: bool = False) -> Iterator[list[Record]]:
        for page in self._pages(None, min(max(batch_size, 1), PAGE), self._select(with_vectors)):
            yield [self._record(item, with_vectors) for item in page]

    def _vector_query(self, vector: np.ndarray, k: int) -> Any:
        from azure.search.documents.models import VectorizedQuery

        unit = normalise(check_query_vector(vector, self._dim).reshape(1, -1))[0]
        return VectorizedQuery(vector=[float(v) for v in unit], k_nearest_neighbors=k, fields="vector",
                               exhaustive=self.store.exhaustive)

    def similarity(self, vector: np.ndarray, k: int, flt: Filter | None = None,
                   with_vectors: bool = False) -> list[Hit]:
        query = self._vector_query(vector, max(k, 1)) if self._dim is not None else None
        odata = self._filter(flt)
        if k <= 0 or odata is None or query is None:
            return []
        items, _, _ = self._search(search_text=None, vector_queries=[query], filter=odata, top=k,
                                   select=self._select(with_vectors))
        # The service's cosine score is 1 / (1 + cosine distance); kb reports the cosine similarity.
        return [Hit(self._record(i, with_vectors), 2.0 - 1.0 / float(i["@search.score"])) for i in items]

    def keyword(self, query: str, k: int, flt: Filter | None = None) -> list[Hit]:
        odata = self._filter(flt)
        if k <= 0 or not query.strip() or odata is None:
            return []
        items, _, _ = self._search(search_text=escape_text(query), search_fields=["text"], query_type="simple",
                                   search_mode="any", filter=odata, top=k, select=self._select(False))
        return [Hit(self._record(i, False), float(i["@search.score"])) for i in items]

    def native_hybrid_search(self, request: Any, flt: Filter | None, query_vector: Callable[[], np.ndarray]
                             ) -> list[Any]:
        """hybrid: text and vector in one request, fused by the service (RRF); semantic_hybrid: the same,
        reranked by the service's semantic ranker, with its captions and answers in the results' metadata."""

        if request.fusion is not None or request.fusion_weight is not None or request.normalisation is not None:
            raise UnsupportedSearchError("Azure AI Search fuses hybrid results itself (reciprocal rank fusion): "
                                         "fusion, fusion_weight and normalisation do not apply")
        odata = self._filter(flt)
        if odata is None or self._dim is None:
            return []
        k = int(request.k)
        candidates = max(k, int(request.candidates or 50))
        options: dict[str, Any] = {"search_text": escape_text(request.query or ""), "search_fields": ["text"],
                                   "vector_queries": [self._vector_query(query_vector(), candidates)],
                                   "filter": odata, "top": k, "select": ["key", *self._select(False)]}
        semantic = request.search_type == "semantic_hybrid"
        if semantic:
            options.update(query_type="semantic", semantic_configuration_name=SEMANTIC_CONFIGURATION,
                           query_caption="extractive", query_answer="extractive", query_answer_count=min(k, 10))
        items, _, answers = self._search(**options)
        by_key: dict[str, list[dict[str, Any]]] = {}
        for answer in answers:
            by_key.setdefault(str(answer.key), []).append(
                {"text": answer.text, "highlights": answer.highlights, "score": answer.score})
        results = []
        for item in items:
            record = self._record(item, False)
            fused = float(item["@search.score"])
            scores = {"fused": fused}
            metadata = dict(record.metadata)
            score = fused
            if semantic:
                score = scores["rerank"] = float(item.get("@search.reranker_score") or
                                                 item.get("@search.rerankerScore") or 0.0)
                captions = item.get("@search.captions") or []
                metadata[CAPTIONS_KEY] = [{"text": getattr(c, "text", None), "highlights": getattr(c, "highlights",
                                                                                                   None)}
                                          for c in captions]
                if item.get("key") in by_key:  # answers name the document by its key
                    metadata[ANSWERS_KEY] = by_key[item["key"]]
            results.append(SearchResult(record.id, record.text, metadata, score, scores))
        return results

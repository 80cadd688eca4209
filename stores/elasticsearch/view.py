"""A committed generation of an Elasticsearch knowledge bank: every read."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from kb_base.filters import Filter
from stores.base import (
    Hit,
    Record,
    StoreReader,
)
from stores.elasticsearch.filters import to_query, visible
from stores.record_checks import check_query_vector, normalise

if TYPE_CHECKING:  # the store imports this module to open views
    from stores.elasticsearch.store import ElasticsearchStore

_PAGE = 1000


class NoIndex(Exception):
    """The index does not exist yet (nothing was ever written)."""


class EsView(StoreReader):
    def __init__(self, store: ElasticsearchStore, generation: int, dim: int | None) -> None:
        self.store, self.generation, self._dim = store, generation, dim

    @property
    def dimension(self) -> int | None:
        return self._dim

    @staticmethod
    def _record(hit: dict[str, Any], with_vectors: bool) -> Record:
        source = hit["_source"]
        vector = np.asarray(source["vector"], dtype=np.float32) if with_vectors and "vector" in source else None
        return Record(source["kb_id"], source.get("text", ""), json.loads(source["meta_json"]), vector)

    def _source(self, with_vectors: bool) -> list[str]:
        return ["kb_id", "text", "meta_json", *(["vector"] if with_vectors else [])]

    def _search(self, **kwargs: Any) -> list[dict[str, Any]]:
        if self._dim is None:
            return []
        try:
            return self.store.call("search", index=self.store.index, **kwargs)["hits"]["hits"]
        except NoIndex:
            return []

    def get(self, ids: Sequence[str], with_vectors: bool = False) -> list[Record]:
        found: dict[str, Record] = {}
        unique = list(dict.fromkeys(ids))
        for start in range(0, len(unique), _PAGE):
            part = unique[start : start + _PAGE]
            hits = self._search(query=visible(self.generation, {"terms": {"kb_id": part}}), size=len(part),
                                source=self._source(with_vectors))
            found.update((r.id, r) for r in (self._record(h, with_vectors) for h in hits))
        return [found[i] for i in ids if i in found]

    def count(self, flt: Filter | None = None) -> int:
        if self._dim is None:
            return 0
        try:
            return int(self.store.call("count", index=self.store.index,
                                       query=visible(self.generation, to_query(flt)))["count"])
        except NoIndex:
            return 0

    def _pages(self, flt: Filter | None, size: int, source: list[str]) -> Iterator[list[dict[str, Any]]]:
        after: list[Any] | None = None
        while True:
            extra = {"search_after": after} if after else {}
            hits = self._search(query=visible(self.generation, to_query(flt)), size=size, sort=[{"kb_id": "asc"}],
                                source=source, **extra)
            if not hits:
                return
            yield hits
            after = hits[-1]["sort"]

    def ids_where(self, flt: Filter | None) -> list[str]:
        return [h["_source"]["kb_id"] for page in self._pages(flt, _PAGE, ["kb_id"]) for h in page]

    def iter_records(self, batch_size: int = 1000, with_vectors: bool = False) -> Iterator[list[Record]]:
        for page in self._pages(None, batch_size, self._source(with_vectors)):
            yield [self._record(h, with_vectors) for h in page]

    def similarity(self, vector: np.ndarray, k: int, flt: Filter | None = None,
                   with_vectors: bool = False) -> list[Hit]:
        query = normalise(check_query_vector(vector, self._dim).reshape(1, -1))[0]
        if k <= 0:
            return []
        knn = {"field": "vector", "query_vector": query.tolist(), "k": k, "num_candidates": max(100, 10 * k),
               "filter": visible(self.generation, to_query(flt))}
        hits = self._search(knn=knn, size=k, source=self._source(with_vectors))
        # Elasticsearch's cosine score is (1 + cos) / 2; kb reports cosine similarity like every store.
        return [Hit(self._record(h, with_vectors), 2.0 * float(h["_score"]) - 1.0) for h in hits]

    def keyword(self, query: str, k: int, flt: Filter | None = None) -> list[Hit]:
        if k <= 0 or not query.strip():
            return []
        body = {"bool": {"must": [{"match": {"text": query}}], "filter": [visible(self.generation, to_query(flt))]}}
        return [Hit(self._record(h, False), float(h["_score"])) for h in
                self._search(query=body, size=k, source=self._source(False))]



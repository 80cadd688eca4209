"""Elasticsearch driver: dense_vector kNN (HNSW), BM25 on the text field, filters inside both.

One index per knowledge bank (``<index_prefix>kb-<id>``, shards and replicas from the connection).
Writer atomicity uses the generation scheme of stores/generations.py (shared with Chroma and Azure
AI Search): documents carry ``kb_gen``/``kb_del`` and id ``<gen>:<id>``; readers filter on the
committed generation, which lives with the id map in ``GenerationLedger``'s SQLite file in the KB
folder (the commit point). Every write is
refreshed before the commit point flips, so a commit is visible to searches at once. Bulk
writes go through ``streaming_bulk`` in batches of 500 with retries and backoff on 429.

Metadata is indexed under typed fields so kb's filter semantics hold exactly: each key (hex
encoded, so dots and odd characters are safe) gets ``<key>_s`` (keyword), ``<key>_n`` (double)
or ``<key>_b`` (boolean) by value kind; the original metadata is kept as JSON for reading back.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kb_base.errors import InvalidInputError, StoreError, StoreUnavailableError, WriterClosedError
from kb_base.filters import And, Comparison, Filter, Not, Or
from stores.base import (
    Capabilities,
    DelegatingReader,
    Hit,
    Record,
    StoreContext,
    StoreReader,
    StoreTransaction,
    VectorStoreDriver,
    fault_point,
)
from stores.elasticsearch.langchain import KBElasticsearchStore
from stores.generations import NEVER, GenerationLedger, LedgerWrite
from stores.record_checks import check_query_vector, check_records, normalise
from stores.sqlite.meta import read_meta

_PAGE = 1000
log = logging.getLogger(__name__)


def _field(key: str, value: Any) -> str:
    kind = "b" if isinstance(value, bool) else "n" if isinstance(value, int | float) else "s"
    return f"m.k{key.encode().hex()}_{kind}"


def _typed_value(value: Any) -> Any:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


def to_query(flt: Filter | None) -> dict[str, Any] | None:
    """kb filter → Elasticsearch bool query with the reference semantics (missing keys, kinds)."""
    if flt is None:
        return None
    if isinstance(flt, And):
        return {"bool": {"filter": [to_query(c) for c in flt.clauses]}}
    if isinstance(flt, Or):
        return {"bool": {"should": [to_query(c) for c in flt.clauses], "minimum_should_match": 1}}
    if isinstance(flt, Not):
        return {"bool": {"must_not": [to_query(flt.clause)]}}
    assert isinstance(flt, Comparison)

    def eq(value: Any) -> dict[str, Any]:
        return {"term": {_field(flt.key, value): _typed_value(value)}}

    if flt.op == "$eq":
        return eq(flt.value)
    if flt.op == "$ne":
        return {"bool": {"must_not": [eq(flt.value)]}}
    if flt.op in ("$in", "$nin"):
        any_of = {"bool": {"should": [eq(v) for v in flt.value], "minimum_should_match": 1}}
        return any_of if flt.op == "$in" else {"bool": {"must_not": [any_of]}}
    bound = {"$gt": "gt", "$gte": "gte", "$lt": "lt", "$lte": "lte"}[flt.op]
    return {"range": {_field(flt.key, flt.value): {bound: _typed_value(flt.value)}}}


def _metadata_fields(metadata: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in metadata.items():
        if isinstance(value, bool | int | float | str):
            out[_field(key, value).split(".", 1)[1]] = _typed_value(value)
    return out


def _visible(generation: int, user: dict[str, Any] | None = None) -> dict[str, Any]:
    clauses: list[dict[str, Any]] = [{"range": {"kb_gen": {"lte": generation}}},
                                     {"range": {"kb_del": {"gt": generation}}}]
    if user:
        clauses.append(user)
    return {"bool": {"filter": clauses}}


class ElasticsearchStore(DelegatingReader, VectorStoreDriver):
    store_type = "ELASTICSEARCH"
    capabilities = Capabilities(keyword=True, approximate=True)

    def __init__(self, context: StoreContext) -> None:
        super().__init__(context)
        self.connection = dict(context.connection or {})
        if not self.connection.get("url"):
            raise InvalidInputError("an ELASTICSEARCH knowledge bank needs a connection with a 'url'")
        self.index = f"{self.connection.get('index_prefix', '')}kb-{context.kb_id}".lower()
        self.dir = Path(context.folder) / "es-store"
        self.ledger = GenerationLedger(self.dir, "es-meta.sqlite", context.kb_id)
        self._client: Any = None
        self._lock = threading.Lock()

    # --- plumbing -------------------------------------------------------------------------------

    @property
    def es(self) -> Any:
        with self._lock:
            if self._client is None:
                from elasticsearch import Elasticsearch

                options: dict[str, Any] = {"request_timeout": float(self.connection.get("timeout", 30)),
                                           "retry_on_timeout": True, "max_retries": 3}
                if self.connection.get("api_key"):
                    options["api_key"] = self.connection["api_key"]
                elif self.connection.get("username"):
                    options["basic_auth"] = (self.connection["username"], self.connection.get("password", ""))
                if "verify_certs" in self.connection:
                    options["verify_certs"] = bool(self.connection["verify_certs"])
                urls = self.connection["url"]
                self._client = Elasticsearch(urls if isinstance(urls, list) else [urls], **options)
            return self._client

    def call(self, method: str, **kwargs: Any) -> Any:
        from elastic_transport import ConnectionError as ESConnectionError
        from elastic_transport import ConnectionTimeout
        from elasticsearch import ApiError

        try:
            target: Any = self.es
            for part in method.split("."):
                target = getattr(target, part)
            return target(**kwargs)
        except (ESConnectionError, ConnectionTimeout) as exc:
            raise StoreUnavailableError(f"Elasticsearch at {self.connection['url']} is unavailable for knowledge "
                                        f"bank {self.context.kb_id}: {exc}") from exc
        except ApiError as exc:
            if getattr(exc, "status_code", None) == 404 and method in ("search", "count"):
                raise _NoIndex() from exc
            raise StoreError(f"Elasticsearch refused {method} on index {self.index}: {exc}") from exc

    def ensure_index(self, dim: int) -> None:
        if self.call("indices.exists", index=self.index):
            return
        mappings = {
            "dynamic_templates": [
                {"strings": {"path_match": "m.*_s", "mapping": {"type": "keyword"}}},
                {"numbers": {"path_match": "m.*_n", "mapping": {"type": "double"}}},
                {"booleans": {"path_match": "m.*_b", "mapping": {"type": "boolean"}}},
            ],
            "properties": {
                "kb_id": {"type": "keyword"}, "kb_gen": {"type": "long"}, "kb_del": {"type": "long"},
                "text": {"type": "text", "analyzer": "english"},
                "vector": {"type": "dense_vector", "dims": dim, "index": True, "similarity": "cosine",
                           "index_options": {"type": "hnsw", "m": 16, "ef_construction": 100}},
                "meta_json": {"type": "keyword", "index": False, "doc_values": False},
                "m": {"type": "object"},
            },
        }
        settings = {"number_of_shards": int(self.connection.get("shards", 1)),
                    "number_of_replicas": int(self.connection.get("replicas", 0))}
        analyzer = self.connection.get("text_analyzer", "english")
        mappings["properties"]["text"]["analyzer"] = analyzer
        try:
            self.call("indices.create", index=self.index, mappings=mappings, settings=settings)
        except StoreError as exc:
            # Minimal distributions (such as the integ-test-zip) ship without the analysis-common module.
            if f"analyzer [{analyzer}] has not been configured" not in str(exc):
                raise
            log.warning("Elasticsearch has no %r analyzer; index %s uses 'standard'", analyzer, self.index)
            mappings["properties"]["text"]["analyzer"] = "standard"
            self.call("indices.create", index=self.index, mappings=mappings, settings=settings)

    def _view(self) -> _EsView:
        generation, dim = self.ledger.committed()
        return _EsView(self, generation, dim)

    # --- reads ------------------------------------------------------------------------------------

    # --- writes -----------------------------------------------------------------------------------

    def begin(self, timeout: float = 30.0) -> EsTransaction:
        # Under the writer lock, before the SQLite transaction: remove what a dead writer left behind.
        write = self.ledger.begin(timeout, prepare=lambda conn: self.clean_leftovers(read_meta(conn)[0]))
        return EsTransaction(self, write)

    def matching_ids(self, query: dict[str, Any]) -> list[str]:
        """Physical ids of every document matching ``query`` (search_after pages; no reindex module needed)."""
        found: list[str] = []
        after: list[Any] | None = None
        while True:
            extra = {"search_after": after} if after else {}
            try:
                hits = self.call("search", index=self.index, query=query, size=_PAGE, source=False,
                                 sort=[{"kb_id": "asc"}, {"kb_gen": "asc"}], **extra)["hits"]["hits"]
            except _NoIndex:
                return found
            if not hits:
                return found
            found += [h["_id"] for h in hits]
            after = hits[-1]["sort"]

    def clean_leftovers(self, committed: int) -> None:
        """Undo what a crashed writer left: documents of uncommitted generations, uncommitted deletion marks."""
        if not self.call("indices.exists", index=self.index):
            return
        stale = self.matching_ids({"range": {"kb_gen": {"gt": committed}}})
        marked = self.matching_ids({"range": {"kb_del": {"gt": committed, "lt": NEVER}}})
        actions = [{"_op_type": "delete", "_index": self.index, "_id": i} for i in stale]
        actions += [{"_op_type": "update", "_index": self.index, "_id": i, "doc": {"kb_del": NEVER}}
                    for i in marked if i not in set(stale)]
        if actions:
            self.bulk(actions)
            self.call("indices.refresh", index=self.index)

    def vacuum(self, before: int) -> None:
        """Delete documents replaced at or before generation ``before`` (no reader can still see them)."""
        old = self.matching_ids({"range": {"kb_del": {"lte": before}}})
        if old:
            self.bulk([{"_op_type": "delete", "_index": self.index, "_id": i} for i in old])

    def bulk(self, actions: list[dict[str, Any]]) -> None:
        from elasticsearch.helpers import BulkIndexError, streaming_bulk

        try:
            for ok, item in streaming_bulk(self.es, actions, chunk_size=500, max_retries=5, initial_backoff=0.5,
                                           max_backoff=10, raise_on_error=True, refresh=False):
                if not ok:
                    raise StoreError(f"Elasticsearch bulk write failed: {item}")
        except BulkIndexError as exc:
            raise StoreError(f"Elasticsearch bulk write to {self.index} failed: {exc.errors[:3]}") from exc
        except Exception as exc:
            if "Connection" in type(exc).__name__:
                raise StoreUnavailableError(f"Elasticsearch at {self.connection['url']} is unavailable: "
                                            f"{exc}") from exc
            raise

    def langchain_vectorstore(self, core: Any, tx: StoreTransaction | None, **kwargs: Any) -> Any:
        return KBElasticsearchStore(core, tx, **kwargs)

    def close(self) -> None:
        self.ledger.close()

    def destroy(self) -> None:
        try:
            self.call("indices.delete", index=self.index, ignore_unavailable=True)
        finally:
            self.close()
            import shutil

            shutil.rmtree(self.dir, ignore_errors=True)


class _NoIndex(Exception):
    """The index does not exist yet (nothing was ever written)."""


class _EsView(StoreReader):
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
        except _NoIndex:
            return []

    def get(self, ids: Sequence[str], with_vectors: bool = False) -> list[Record]:
        found: dict[str, Record] = {}
        unique = list(dict.fromkeys(ids))
        for start in range(0, len(unique), _PAGE):
            part = unique[start : start + _PAGE]
            hits = self._search(query=_visible(self.generation, {"terms": {"kb_id": part}}), size=len(part),
                                source=self._source(with_vectors))
            found.update((r.id, r) for r in (self._record(h, with_vectors) for h in hits))
        return [found[i] for i in ids if i in found]

    def count(self, flt: Filter | None = None) -> int:
        if self._dim is None:
            return 0
        try:
            return int(self.store.call("count", index=self.store.index,
                                       query=_visible(self.generation, to_query(flt)))["count"])
        except _NoIndex:
            return 0

    def _pages(self, flt: Filter | None, size: int, source: list[str]) -> Iterator[list[dict[str, Any]]]:
        after: list[Any] | None = None
        while True:
            extra = {"search_after": after} if after else {}
            hits = self._search(query=_visible(self.generation, to_query(flt)), size=size, sort=[{"kb_id": "asc"}],
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
               "filter": _visible(self.generation, to_query(flt))}
        hits = self._search(knn=knn, size=k, source=self._source(with_vectors))
        # Elasticsearch's cosine score is (1 + cos) / 2; kb reports cosine similarity like every store.
        return [Hit(self._record(h, with_vectors), 2.0 * float(h["_score"]) - 1.0) for h in hits]

    def keyword(self, query: str, k: int, flt: Filter | None = None) -> list[Hit]:
        if k <= 0 or not query.strip():
            return []
        body = {"bool": {"must": [{"match": {"text": query}}], "filter": [_visible(self.generation, to_query(flt))]}}
        return [Hit(self._record(h, False), float(h["_score"])) for h in
                self._search(query=body, size=k, source=self._source(False))]


class EsTransaction(DelegatingReader, StoreTransaction):
    def __init__(self, store: ElasticsearchStore, write: LedgerWrite) -> None:
        self.store, self.write = store, write
        self.committed, self.generation = write.committed, write.generation
        self._open = True

    def _view(self) -> _EsView:
        if not self._open:
            raise WriterClosedError("this transaction is already committed or rolled back")
        return _EsView(self.store, self.generation, self.write.dim)

    @property
    def dimension(self) -> int | None:
        return self.write.dim

    def _retire(self, ids: Sequence[str]) -> int:
        own, older = self.write.retire(ids)
        if not own and not older:
            return 0
        actions: list[dict[str, Any]] = [{"_op_type": "delete", "_index": self.store.index, "_id": p} for p in own]
        actions += [{"_op_type": "update", "_index": self.store.index, "_id": p, "doc": {"kb_del": self.generation}}
                    for p in older]
        self.store.bulk(actions)
        self.store.call("indices.refresh", index=self.store.index)
        return len(own) + len(older)

    def upsert(self, records: Sequence[Record]) -> None:
        self._view()
        if not records:
            return
        dim = check_records(records, self.write.dim)
        sources = []
        for record in records:
            try:
                sources.append(json.dumps(record.metadata, allow_nan=False))
            except (TypeError, ValueError) as exc:
                raise InvalidInputError(f"document {record.id!r}: metadata is not JSON-serialisable: {exc}") from exc
        self.store.ensure_index(dim)
        self._retire([r.id for r in records])
        vectors = normalise(np.stack([np.asarray(r.vector, dtype=np.float32) for r in records]))
        actions = [{"_op_type": "index", "_index": self.store.index, "_id": f"{self.generation}:{r.id}",
                    "_source": {"kb_id": r.id, "kb_gen": self.generation, "kb_del": NEVER, "text": r.text,
                                "vector": v.tolist(), "meta_json": meta, "m": _metadata_fields(r.metadata)}}
                   for r, v, meta in zip(records, vectors, sources, strict=True)]
        self.store.bulk(actions)
        self.store.call("indices.refresh", index=self.store.index)  # read-your-writes, and visible at commit
        fault_point("store_records_written")
        self.write.add(((r.id, f"{self.generation}:{r.id}") for r in records), dim)

    def delete(self, ids: Sequence[str]) -> int:
        self._view()
        return self._retire(list(dict.fromkeys(ids)))

    def clear(self) -> None:
        self._view()
        self._retire(self.write.all_ids())

    def commit(self) -> None:
        self._view()
        try:
            self.write.commit()  # the commit point (with its fault points)
        except BaseException:
            self.rollback()
            raise
        self._finish()
        try:
            self.store.vacuum(self.committed)
        except (StoreError, StoreUnavailableError):
            pass  # invisible garbage, vacuumed by a later commit

    def rollback(self) -> None:
        if not self._open:
            return
        try:
            self.write.rollback()
            self.store.clean_leftovers(self.committed)
        finally:
            self._finish()

    def _finish(self) -> None:
        self._open = False
        self.write.close()

"""Elasticsearch driver: dense_vector kNN (HNSW), BM25 on the text field, filters inside both.

One index per knowledge bank (``<index_prefix>kb-<id>``, shards and replicas from the connection).
Writer atomicity uses the generation scheme of stores/generations.py (shared with Chroma and Azure
AI Search): documents carry ``kb_gen``/``kb_del`` and id ``<gen>:<id>``; readers filter on the
committed generation, which lives with the id map in ``GenerationLedger``'s SQLite file in the KB
folder (the commit point), or with a database URL in the shared database (``stores/commit_point/database.py``:
a lease and a compare-and-set commit, for several kb servers). Every write is
refreshed before the commit point flips, so a commit is visible to searches at once. Bulk
writes go through ``streaming_bulk`` in batches of 500 with retries and backoff on 429.

Metadata is indexed under typed fields so kb's filter semantics hold exactly: each key (hex
encoded, so dots and odd characters are safe) gets ``<key>_s`` (keyword), ``<key>_n`` (double)
or ``<key>_b`` (boolean) by value kind; the original metadata is kept as JSON for reading back.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from kb_base.errors import InvalidInputError, StoreError, StoreUnavailableError
from stores.base import (
    Capabilities,
    StoreContext,
    StoreTransaction,
    VectorStoreDriver,
)
from stores.commit_point.database import open_ledger
from stores.elasticsearch.langchain import KBElasticsearchStore
from stores.elasticsearch.view import EsView, NoIndex
from stores.elasticsearch.writer import EsTransaction
from stores.generations import NEVER, WholeGenerationReads

_PAGE = 1000
log = logging.getLogger(__name__)


class ElasticsearchStore(WholeGenerationReads, VectorStoreDriver):
    store_type = "ELASTICSEARCH"
    capabilities = Capabilities(keyword=True, approximate=True)

    def __init__(self, context: StoreContext) -> None:
        super().__init__(context)
        self.connection = dict(context.connection or {})
        if not self.connection.get("url"):
            raise InvalidInputError("an ELASTICSEARCH knowledge bank needs a connection with a 'url'")
        self.index = f"{self.connection.get('index_prefix', '')}kb-{context.kb_id}".lower()
        self.dir = Path(context.folder) / "es-store"
        self.ledger = open_ledger(self.dir, "es-meta.sqlite", context.kb_id, context.database_url)
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
                raise NoIndex() from exc
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

    def _view(self) -> EsView:
        generation, dim = self.ledger.committed()
        return EsView(self, generation, dim)

    # --- reads ------------------------------------------------------------------------------------

    # --- writes -----------------------------------------------------------------------------------

    def begin(self, timeout: float = 30.0) -> EsTransaction:
        # Under the writer lock (or lease), before the write opens: remove what a dead writer left behind.
        write = self.ledger.begin(timeout, prepare=lambda notes: self.clean_leftovers(notes.committed))
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
            except NoIndex:
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

    def committed_ids(self) -> list[str]:
        return self.ledger.ids()

    def close(self) -> None:
        self.ledger.close()

    def destroy(self) -> None:
        try:
            self.call("indices.delete", index=self.index, ignore_unavailable=True)
        finally:
            self.ledger.destroy()
            self.close()
            import shutil

            shutil.rmtree(self.dir, ignore_errors=True)



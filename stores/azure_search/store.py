"""Azure AI Search driver: one index per knowledge bank, vector (HNSW, cosine), BM25, hybrid and semantic
ranking done by the service, kb's filters as OData, atomic writers through the generation scheme.

Files: this module (the driver), view.py (a committed generation: every read), writer.py (the transaction), client.py
(SDK clients, index schema, batches, errors), filters.py (filters -> OData),
langchain.py (LangChain's ``AzureSearch`` routed through kb), stores/generations.py (the scheme
shared with Chroma and Elasticsearch).

Index ``<index_prefix>kb-<id>-<hash of the id>``: ``key`` (``<gen>-<sha256 of the kb id>``: Azure keys
allow only letters, digits, ``_ - =``), ``kb_id``, ``kb_gen``/``kb_del`` (the generation scheme), ``text`` (searchable),
``meta_json`` (the original metadata, whole), ``vector`` (Collection(Edm.Single), HNSW cosine profile) and
typed filterable fields per metadata key and value kind (stores/azure_search/filters.py). The index is created
with the knowledge bank, with typed fields for the keys its metadata schema declares; the vector field
is added by the first write (the dimension is known then), other typed fields as keys appear (Azure
lets an index gain fields, never change them).

Azure AI Search indexes asynchronously (about a second on a live service), so a commit waits until the
service's searches see every document and deletion mark of the new generation before it flips the commit
point; the emulator the tests use makes writes searchable at once.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from kb_base.filters import Filter
from stores.azure_search.client import AzureSearchConnection
from stores.azure_search.filters import schema_fields
from stores.azure_search.langchain import KBAzureSearch
from stores.azure_search.view import PAGE, AzureView, index_name
from stores.azure_search.writer import AzureTransaction
from stores.base import (
    Capabilities,
    StoreContext,
    StoreTransaction,
    VectorStoreDriver,
)
from stores.commit_point.database import open_ledger
from stores.generations import NEVER, LedgerNotes, WholeGenerationReads

log = logging.getLogger(__name__)
class AzureSearchStore(WholeGenerationReads, VectorStoreDriver):
    store_type = "AZURE_AI_SEARCH"
    capabilities = Capabilities(keyword=True, native_hybrid=True, approximate=True)

    def __init__(self, context: StoreContext) -> None:
        super().__init__(context)
        connection = dict(context.connection or {})
        self.index = index_name(str(connection.get("index_prefix", "")), context.kb_id)
        self.service = AzureSearchConnection(connection, self.index, context.kb_id)
        self.exhaustive = bool((context.settings or {}).get("exhaustive", False))
        self.dir = Path(context.folder) / "azure-store"
        self.ledger = open_ledger(self.dir, "azure-meta.sqlite", context.kb_id, context.database_url)
        where = f"{self.service.endpoint} {self.index}"
        if self.ledger.meta("index") != where:  # created with the knowledge bank (or on a new connection's service)
            generation, dim = self.ledger.committed()
            self.service.ensure_index(dim, schema_fields(context.metadata_schema))
            self.ledger.set_meta("index", where)

    def _view(self) -> AzureView:
        generation, dim = self.ledger.committed()
        return AzureView(self, generation, dim)

    def native_hybrid_search(self, request: Any, flt: Filter | None, query_vector: Callable[[], np.ndarray]
                             ) -> list[Any]:
        return self._whole(lambda view: view.native_hybrid_search(request, flt, query_vector))

    # --- writes ----------------------------------------------------------------------------------------

    def begin(self, timeout: float = 30.0) -> StoreTransaction:
        def prepare(notes: LedgerNotes) -> None:
            if notes.meta("dirty") == "1":  # a writer died, or could not clean up: undo what it left
                self.clean_leftovers(notes.committed)
            notes.set_meta("dirty", "1")  # durable before any write

        return AzureTransaction(self, self.ledger.begin(timeout, prepare))

    def keys_where(self, odata: str) -> Iterator[list[str]]:
        """Pages of keys matching a raw OData filter (each page is re-queried: callers change what matches).

        A live service indexes asynchronously, so a page may repeat keys just handled; only new keys are
        yielded, and a page of nothing new ends the walk after a few short waits."""
        seen: set[str] = set()
        stale = 0
        while True:
            items, _, _ = self.service.search(search_text="*", filter=odata, top=PAGE, select=["key"])
            fresh = [item["key"] for item in items if item["key"] not in seen]
            if not items or (not fresh and stale >= 10):
                return
            if not fresh:
                stale += 1
                time.sleep(0.2)
                continue
            stale = 0
            seen.update(fresh)
            yield fresh

    def clean_leftovers(self, committed: int) -> None:
        """Remove documents of uncommitted generations and undo uncommitted deletion marks."""
        if not self.service.known_fields():
            return
        for keys in self.keys_where(f"kb_gen gt {committed}"):
            self.service.write("delete", [{"key": k} for k in keys])
        for keys in self.keys_where(f"kb_del gt {committed} and kb_del lt {NEVER}"):
            self.service.write("merge", [{"key": k, "kb_del": NEVER} for k in keys])

    def vacuum(self, before: int) -> None:
        """Delete documents retired at or before generation ``before``: no reader can still see them."""
        for keys in self.keys_where(f"kb_del le {before}"):
            self.service.write("delete", [{"key": k} for k in keys])

    def langchain_vectorstore(self, core: Any, tx: StoreTransaction | None, **kwargs: Any) -> Any:
        return KBAzureSearch(core, tx, **kwargs)

    def committed_ids(self) -> list[str]:
        return self.ledger.ids()

    def close(self) -> None:
        self.ledger.close()
        self.service.close()

    def destroy(self) -> None:
        try:
            self.service.delete_index()
        finally:
            self.ledger.destroy()
            self.close()
            shutil.rmtree(self.dir, ignore_errors=True)

"""The write side of the Azure AI Search driver: one transaction at generation committed + 1 (design in
stores/azure_search/store.py and generations.py)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from kb_base.errors import InvalidInputError, KBError, StoreError, WriterClosedError
from kb_base.filters import Filter
from stores.azure_search.filters import EDM_TYPES, field_name, kind_of, typed_value
from stores.azure_search.view import AzureView, physical_key
from stores.base import DelegatingReader, Record, StoreTransaction, release_after_failure
from stores.generations import NEVER, CommitPointWrite, PartialWrites
from stores.record_checks import check_records, metadata_json, normalise

if TYPE_CHECKING:  # the store imports this module to open transactions
    from stores.azure_search.store import AzureSearchStore

log = logging.getLogger(__name__)
MAX_FILTERABLE_BYTES = 32766  # the service's limit for a filterable string value


class AzureTransaction(DelegatingReader, StoreTransaction):
    def __init__(self, store: AzureSearchStore, write: CommitPointWrite) -> None:
        self.store, self.write = store, write
        self.committed, self.generation = write.committed, write.generation
        self._open = True
        self._written: set[str] = set()  # physical keys this transaction wrote and still holds
        self._marked: set[str] = set()  # older physical keys it marked retired
        self._partial = PartialWrites()  # a write failed part way: the transaction can only roll back

    def _view(self) -> AzureView:
        if not self._open:
            raise WriterClosedError("this transaction is already committed or rolled back")
        return AzureView(self.store, self.generation, self.write.dim)

    @property
    def dimension(self) -> int | None:
        return self._view().dimension

    def native_hybrid_search(self, request: Any, flt: Filter | None, query_vector: Callable[[], np.ndarray]
                             ) -> list[Any]:
        return self._view().native_hybrid_search(request, flt, query_vector)

    def _send(self, action: str, documents: list[dict[str, Any]]) -> None:
        """A remote write; if it fails, part of it may have been applied, so this transaction cannot commit."""
        try:
            self.store.service.write(action, documents)
        except BaseException as exc:
            self._partial.failed = exc
            raise

    def _retire(self, ids: Sequence[str]) -> int:
        own, older = self.write.retire(ids)
        if own:
            self._send("delete", [{"key": k} for k in own])
            self._written.difference_update(own)
        if older:
            self._marked.update(older)  # before the call: a call that fails may still have been applied
            self._send("merge", [{"key": k, "kb_del": self.generation} for k in older])
        return len(own) + len(older)

    def upsert(self, records: Sequence[Record]) -> None:
        self._view()
        if not records:
            return
        dim = check_records(records, self.write.dim)
        documents, typed = [], {}
        for record in records:
            fields = {}
            for key, value in record.metadata.items():
                if isinstance(value, str) and len(value.encode()) > MAX_FILTERABLE_BYTES:
                    raise InvalidInputError(f"document {record.id!r}: metadata {key!r} is {len(value.encode())} bytes "
                                            f"of UTF-8; Azure AI Search filterable strings hold at most "
                                            f"{MAX_FILTERABLE_BYTES}")
                if isinstance(value, bool | int | float | str) and not (isinstance(value, float) and
                                                                         not np.isfinite(value)):
                    name = field_name(str(key), kind_of(value))
                    typed[name] = EDM_TYPES[kind_of(value)]
                    fields[name] = typed_value(value)
            documents.append((record, metadata_json(record), fields))
        self.store.service.ensure_index(dim, typed)
        self._retire([r.id for r in records])
        vectors = normalise(np.stack([np.asarray(r.vector, dtype=np.float32) for r in records]))
        payload = [{"key": physical_key(self.generation, r.id), "kb_id": r.id, "kb_gen": self.generation,
                    "kb_del": NEVER, "text": r.text, "meta_json": meta, "vector": [float(x) for x in v], **fields}
                   for (r, meta, fields), v in zip(documents, vectors, strict=True)]
        self._written.update(d["key"] for d in payload)  # before the call, as for marks
        self._send("upload", payload)
        self.write.add(((r.id, physical_key(self.generation, r.id)) for r in records), dim)

    def delete(self, ids: Sequence[str]) -> int:
        self._view()
        return self._retire(list(dict.fromkeys(ids)))

    def clear(self) -> None:
        self._view()
        self._retire(self.write.all_ids())

    def _await_searchable(self, timeout: float = 60.0) -> None:
        """Wait until the service's searches see this generation's documents and marks (indexing is
        asynchronous on Azure). One count each on the emulator, which indexes synchronously."""
        if not self._written and not self._marked or self.write.dim is None:
            return
        deadline = time.monotonic() + timeout
        view = AzureView(self.store, self.generation, self.write.dim)
        while True:
            self.write.fence()  # a writer fenced off waits for counts its successor's writes may never give
            _, written, _ = view._search(search_text="*", filter=f"kb_gen eq {self.generation} and kb_del eq {NEVER}",
                                         top=0, include_total_count=True)
            _, marked, _ = view._search(search_text="*", filter=f"kb_del eq {self.generation}", top=0,
                                        include_total_count=True)
            if written == len(self._written) and marked == len(self._marked):
                return
            if time.monotonic() > deadline:
                raise StoreError(f"Azure AI Search index {self.store.index} did not make generation "
                                 f"{self.generation} searchable within {timeout:g}s")
            time.sleep(0.2)

    def commit(self) -> None:
        self._view()
        self._partial.refuse_commit(self, self.store.context.kb_id)
        try:
            self._await_searchable()
            self.write.commit()  # the commit point
        except BaseException as exc:
            release_after_failure(self, exc)  # rolled back and unlocked now, however long the caller keeps exc
            raise
        self._finish(clean=True)
        try:
            self.store.vacuum(self.committed)
        except KBError as exc:  # invisible garbage, vacuumed by a later commit
            log.warning("could not delete replaced documents of index %s: %s", self.store.index, exc)

    def rollback(self) -> None:
        if not self._open:
            return
        clean = False
        try:
            if not self.write.done:  # a failure after the commit point undoes nothing
                self.write.rollback()
                if not self.write.holds_lock():  # fenced off: what lies above C may be the successor's
                    return  # still dirty: the successor cleans
                self.store.clean_leftovers(self.committed)
            clean = True
        finally:
            self._finish(clean)

    def _finish(self, clean: bool) -> None:
        self._open = False
        try:
            if clean:  # a durable note outside the transaction; if it fails, the next writer cleans again
                self.write.set_meta("dirty", "0")
        finally:
            self.write.close()

"""The write side of the Elasticsearch driver: one transaction at generation committed + 1."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from kb_base.errors import InvalidInputError, StoreError, StoreUnavailableError, WriterClosedError
from stores.base import (
    DelegatingReader,
    Record,
    StoreTransaction,
    fault_point,
    release_after_failure,
)
from stores.elasticsearch.filters import metadata_fields
from stores.elasticsearch.view import EsView
from stores.generations import NEVER, CommitPointWrite, PartialWrites
from stores.record_checks import check_records, normalise

if TYPE_CHECKING:  # the store imports this module to open transactions
    from stores.elasticsearch.store import ElasticsearchStore

log = logging.getLogger(__name__)


class EsTransaction(DelegatingReader, StoreTransaction):
    def __init__(self, store: ElasticsearchStore, write: CommitPointWrite) -> None:
        self.store, self.write = store, write
        self.committed, self.generation = write.committed, write.generation
        self._open = True
        self._partial = PartialWrites()  # a write failed part way: the transaction can only roll back

    def _view(self) -> EsView:
        if not self._open:
            raise WriterClosedError("this transaction is already committed or rolled back")
        return EsView(self.store, self.generation, self.write.dim)

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
        with self._partial.writing():
            self._retire([r.id for r in records])
            vectors = normalise(np.stack([np.asarray(r.vector, dtype=np.float32) for r in records]))
            actions = [{"_op_type": "index", "_index": self.store.index, "_id": f"{self.generation}:{r.id}",
                        "_source": {"kb_id": r.id, "kb_gen": self.generation, "kb_del": NEVER, "text": r.text,
                                    "vector": v.tolist(), "meta_json": meta, "m": metadata_fields(r.metadata)}}
                       for r, v, meta in zip(records, vectors, sources, strict=True)]
            self.store.bulk(actions)
            self.store.call("indices.refresh", index=self.store.index)  # read-your-writes, and visible at commit
            fault_point("store_records_written")
            self.write.add(((r.id, f"{self.generation}:{r.id}") for r in records), dim)

    def delete(self, ids: Sequence[str]) -> int:
        self._view()
        with self._partial.writing():
            return self._retire(list(dict.fromkeys(ids)))

    def clear(self) -> None:
        self._view()
        with self._partial.writing():
            self._retire(self.write.all_ids())

    def commit(self) -> None:
        self._view()
        self._partial.refuse_commit(self, self.store.context.kb_id)
        try:
            self.write.commit()  # the commit point (with its fault points)
        except BaseException as exc:
            release_after_failure(self, exc)  # rolled back and unlocked now, however long the caller keeps exc
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
            if not self.write.done:  # a failure after the commit point undoes nothing
                self.write.rollback()
                if self.write.holds_lock():  # fenced off: what lies above C may be the successor's
                    self.store.clean_leftovers(self.committed)
        finally:
            self._finish()

    def _finish(self) -> None:
        self._open = False
        self.write.close()

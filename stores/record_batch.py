"""A write's records held as columns: ids, texts, metadata, their JSON, and the matrix of their vectors.

``CoreKnowledgeBank.prepare_records`` checks and embeds a batch column by column; building a ``Record`` per
document from those columns, and taking the columns back out of the Records in the store, cost about half a
second per 100k documents. A store that knows the batch (FAISS) reads the columns straight through
``columns()``; every other caller sees an ordinary sequence of Records, made on first use. Once Records have
been handed out they may be changed (an ingestion sets their vectors), so from then on they are the truth:
``columns()`` answers None, and ``vectors()`` gives the matrix only while every record still holds its own row.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, overload

import numpy as np
import orjson

from stores.base import Record


class RecordBatch(Sequence["Record"]):
    def __init__(self, ids: Sequence[str], texts: Sequence[str], metadatas: Sequence[dict[str, Any]] | None,
                 encoded: Sequence[str | None], matrix: np.ndarray) -> None:
        """``metadatas`` None: every record's metadata is its JSON text ``encoded``, decoded when Records are
        made (a bulk load into FAISS then never builds 100k dicts, which also wake Python's cyclic GC)."""
        if not len(ids) == len(texts) == len(encoded) == matrix.shape[0] or \
                (metadatas is None and None in encoded) or (metadatas is not None and len(metadatas) != len(ids)):
            raise ValueError("a record batch's columns must have the same length")
        self.ids, self.texts, self.metadatas, self.encoded = ids, texts, metadatas, encoded
        self.matrix = matrix
        self._records: list[Record] | None = None
        self._rows: list[np.ndarray] = []

    def __len__(self) -> int:
        return len(self.ids)

    @overload
    def __getitem__(self, index: int) -> Record: ...
    @overload
    def __getitem__(self, index: slice) -> list[Record]: ...
    def __getitem__(self, index: int | slice) -> Record | list[Record]:
        return self.records()[index]

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records())

    def records(self) -> list[Record]:
        """The batch as Records (made once; from then on ``columns()`` is None)."""
        if self._records is None:
            self._rows = list(self.matrix)
            metadatas = self.metadatas if self.metadatas is not None else list(map(orjson.loads, self.encoded))
            self._records = [Record(i, t, m, v, e) for i, t, m, v, e
                             in zip(self.ids, self.texts, metadatas, self._rows, self.encoded, strict=True)]
        return self._records

    def columns(self) -> RecordBatch | None:
        """This batch, to read its columns, while no Record of it has been handed out; else None."""
        return self if self._records is None else None

    def vectors(self) -> np.ndarray | None:
        """The matrix, if record i still holds row i of it (the very object it was given), else None."""
        if self._records is None:
            return self.matrix
        if len(self._records) == len(self._rows) and \
                all(record.vector is row for record, row in zip(self._records, self._rows, strict=True)):
            return self.matrix
        return None

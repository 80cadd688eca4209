"""Records whose vectors are the rows of one matrix, so that a store can take the matrix whole.

``CoreKnowledgeBank.prepare_records`` embeds (or converts) a batch into one float32 matrix and gives each
Record a row of it; a store then needs that matrix again (``stores.base.checked_vectors``), and stacking
100k row views back into it cost a quarter of a second per 100k records. The batch remembers the matrix and
the row objects it handed out; the matrix is used only while every record still holds its own row (a record
replaced, or a vector reassigned, and the rows are stacked as before).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from stores.base import Record


class RecordBatch(list):  # type: ignore[type-arg]
    def __init__(self, records: Iterable[Record], matrix: np.ndarray, rows: list[Any]) -> None:
        super().__init__(records)
        self._matrix = matrix
        self._rows = rows

    def vectors(self) -> np.ndarray | None:
        """The matrix, if record i still holds row i of it (the very object it was given), else None."""
        if len(self) != len(self._rows) or self._matrix.shape[0] != len(self):
            return None
        if all(record.vector is row for record, row in zip(self, self._rows, strict=True)):
            return self._matrix
        return None

"""A compressed-type writer's new vectors, spilled to its staging folder as they arrive (issue 31).

A FLAT or HNSW writer gathers its vectors in the very index it commits. A compressed type's commit needs only its
vector file and a training sample, so holding a bulk load's vectors in memory (1.5 GB a million at 384
dimensions, twice over while the vector file was written from them) bought nothing: they are appended to
``<staging>/spill.vectors.npy`` instead, numpy's header first (written again with the final row count at commit:
numpy pads the header so that its length does not change with the count) and then float32 rows in the order they
came, which is rowid order. At commit the file is fsynced and renamed into ``segments/`` as the segment's vector
file, and its index is trained on a sample and filled a slice at a time (``stores.faiss.compressed``), so a bulk
load's anonymous memory is a batch, the training sample and the codes, whatever its size.

Rows the writer removes again (a replacement or delete of its own records) stay in the file, marked; a commit
with any copies the live rows into a fresh file, a slice at a time. The writer's own reads (rare in a bulk load)
search a flat index of the spilled rows, filled from the file when a read comes and kept up to date from then on.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import faiss
import numpy as np

from stores.faiss.compressed import VECTORS_SUFFIX, write_vectors
from stores.sqlite.background_io import fsync_path

SLICE = 50_000  # rows copied at a time when the live rows are compacted into a fresh file


def _header(count: int, dim: int) -> bytes:
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")),
                                               "fortran_order": False, "shape": (count, dim)})
    return out.getvalue()


class SpilledVectors:
    """One writer's new vectors in an append-only file. ``add_with_ids`` may run on a helper thread (one at a time,
    in order); everything else runs on the writer's thread once those adds are joined."""

    def __init__(self, folder: Path, dim: int) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.dim = folder, dim
        self.path = folder / f"spill{VECTORS_SUFFIX}"
        self._header_size = len(_header(0, dim))
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(self._fd, _header(0, dim))  # a placeholder: the count is written at commit
        self._rowids: list[np.ndarray] = []
        self.count = 0
        self._removed: list[np.ndarray] = []
        self._reads: faiss.Index | None = None  # the flat index the writer's own reads search, once one came
        self._read_rows = 0  # rows of the file already in it
        self._read_removed = 0  # entries of _removed already taken out of it

    def add_with_ids(self, vectors: np.ndarray, rowids: np.ndarray) -> None:
        """Append ``vectors`` (normalised float32, one row per rowid) to the file."""
        assert self._fd is not None, "spill file already finished"
        data = memoryview(np.ascontiguousarray(vectors, dtype=np.float32)).cast("B")
        while data:
            written = os.write(self._fd, data)
            data = data[written:]
        self._rowids.append(np.array(rowids, dtype=np.int64))  # a copy: the caller's array may be reused
        self.count += int(rowids.size)

    def remove(self, rowids: np.ndarray) -> None:
        """Mark rows of this writer's as removed (they stay in the file until commit)."""
        if rowids.size:
            self._removed.append(np.asarray(rowids, dtype=np.int64))

    def _all_rowids(self) -> np.ndarray:
        if len(self._rowids) > 1:
            self._rowids = [np.concatenate(self._rowids)]
        return self._rowids[0] if self._rowids else np.zeros(0, dtype=np.int64)

    def _live_mask(self) -> np.ndarray | None:
        """Which rows of the file are live; None when all are."""
        if not self._removed:
            return None
        return ~np.isin(self._all_rowids(), np.concatenate(self._removed))

    def live_rowids(self) -> np.ndarray:
        rowids, live = self._all_rowids(), self._live_mask()
        return rowids if live is None else rowids[live]

    def rows(self) -> np.ndarray:
        """Every row written so far, removed ones included, memory-mapped read-only."""
        if self.count == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.memmap(self.path, dtype=np.float32, mode="r", offset=self._header_size,
                         shape=(self.count, self.dim))

    def searchable(self) -> faiss.Index:
        """A flat ``IndexIDMap2`` of the live rows, for the writer's own reads (and a segment too small to train):
        filled from the file the first time, then with what was added or removed since."""
        if self._reads is None:
            self._reads = faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
        if self._read_rows < self.count:
            rows, rowids = self.rows(), self._all_rowids()
            for start in range(self._read_rows, self.count, SLICE):
                end = min(self.count, start + SLICE)
                self._reads.add_with_ids(np.ascontiguousarray(rows[start:end]), rowids[start:end])
            self._read_rows = self.count
        if self._read_removed < len(self._removed):
            removed = np.concatenate(self._removed[self._read_removed :])
            self._reads.remove_ids(faiss.IDSelectorBatch(removed.size, faiss.swig_ptr(removed)))
            self._read_removed = len(self._removed)
        return self._reads

    def finish(self) -> tuple[Path, np.ndarray]:
        """The file of the live rows, complete (header with its count) and fsynced, and their rowids. The writer
        adds nothing after this."""
        assert self._fd is not None, "spill file already finished"
        live = self._live_mask()
        if live is None:
            header = _header(self.count, self.dim)
            assert len(header) == self._header_size, "numpy's header changed length with the row count"
            os.pwrite(self._fd, header, 0)
            os.fsync(self._fd)
            self._close()
            fsync_path(self.folder)
            return self.path, self._all_rowids()
        rows, kept = self.rows(), np.flatnonzero(live)

        def fill(out: np.ndarray) -> None:
            at = 0
            for start in range(0, kept.size, SLICE):
                part = kept[start : start + SLICE]
                out[at : at + part.size] = rows[part]
                at += part.size

        path = self.folder / f"spill-live{VECTORS_SUFFIX}"
        write_vectors(path, fill, int(kept.size), self.dim)  # fsynced
        self._close()
        self.path.unlink(missing_ok=True)
        fsync_path(self.folder)
        return path, self._all_rowids()[kept]

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def discard(self) -> None:
        """Close and remove the file (a clear(), or the writer's end)."""
        self._close()
        self._reads = None
        self.path.unlink(missing_ok=True)

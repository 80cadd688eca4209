"""A compressed segment's exact vectors on disk, read row by row with ``pread`` (``stores.faiss.compressed``).

The file is numpy's ``.npy`` format (a header, then float32 rows; never pickle). A search reads only the rows
of its candidates, so a serving process holds none of the file: the rows it reads come from the kernel's page
cache (or disk) into a small array per query. A read-only memory map was used before; at 10M vectors (a 15 GB
file) 400 queries left 11.7 GB of file pages mapped into the serving process, because the kernel maps the
cached neighbours of every row a fault touches ("fault-around") and reads ahead around it: its resident
memory grew with the file, not with the queries. ``pread`` copies exactly the rows asked for.

Rows are read in position order, runs of consecutive positions in one call (a merge copies whole slices; a
query's candidates are mostly scattered, one call each: 2-5 us a row from the page cache on this VM).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from kb_base.errors import StoreError


class VectorFile:
    """The float32 rows of one ``.npy`` file, ``take``-n by position. Thread-safe (``pread`` has no shared file
    offset); the descriptor closes with the object, so a retired segment's unlinked file stays readable until the
    last reader lets go of it, as its memory map did."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
            self.offset = handle.tell()
        if dtype != np.float32 or fortran or len(shape) != 2:
            raise StoreError(f"{path}: expected a C-ordered 2-d float32 array, found {dtype} {shape}"
                             f"{' (Fortran order)' if fortran else ''}")
        self.shape: tuple[int, int] = (int(shape[0]), int(shape[1]))
        self.row_bytes = self.shape[1] * 4
        expected = self.offset + self.shape[0] * self.row_bytes
        actual = os.stat(path).st_size
        if actual < expected:
            raise StoreError(f"{path}: {actual} bytes, its header promises {expected} ({self.shape[0]} rows)")
        self._fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        self._closed = threading.Lock()

    def __len__(self) -> int:
        return self.shape[0]

    def take(self, positions: np.ndarray) -> np.ndarray:
        """The rows at ``positions`` (ascending), as a new ``(len(positions), dim)`` float32 array."""
        positions = np.asarray(positions, dtype=np.int64)
        out = np.empty((positions.size, self.shape[1]), dtype=np.float32)
        if positions.size == 0:
            return out
        if positions[0] < 0 or positions[-1] >= self.shape[0]:
            raise IndexError(f"{self.path}: row {int(positions[-1])} of {self.shape[0]}")
        view = memoryview(out).cast("B")
        row = self.row_bytes
        # runs of consecutive positions, each one call: (first row in ``out``, first row in the file, rows)
        breaks = np.flatnonzero(np.diff(positions) != 1) + 1
        starts = np.concatenate(([0], breaks))
        counts = np.diff(np.concatenate((starts, [positions.size])))
        fd, preadv = self._fd, os.preadv
        for start, first, count in zip(starts.tolist(), (self.offset + positions[starts] * row).tolist(),
                                       counts.tolist(), strict=True):
            got = preadv(fd, [view[start * row : (start + count) * row]], first)
            if got != count * row:
                self._read_rest(view[start * row + max(got, 0) : (start + count) * row], first + max(got, 0))
        return out

    def _read_rest(self, into: memoryview, at: int) -> None:
        """The rest of a short read (a regular file answers in full but for very large runs, capped near 2 GB)."""
        while len(into):
            got = os.preadv(self._fd, [into], at)
            if got <= 0:  # the file shrank under us: never score from a half-read row
                raise OSError(f"{self.path}: {len(into)} bytes short at byte {at}")
            into, at = into[got:], at + got

    def close(self) -> None:
        with self._closed:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def __del__(self) -> None:
        try:
            self.close()
        except (AttributeError, OSError):  # a half-built object, or interpreter shutdown
            pass

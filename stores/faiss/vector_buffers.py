"""Where a writer's batches of normalised vectors go: two buffers, used in turn, instead of a new array a batch.

On this 2-core VM a page of memory touched for the first time costs microseconds (the hypervisor backs it
then), so a fresh 20k x 384 float32 array (30 MB) cost ~60 ms of page zeroing before the first division, on
the writer's own thread, in every batch of a bulk load: 12% of a 100k load's CPU (``perf``). The index
add of a batch reads its buffer on a helper thread while the next batch is normalised into the other one;
a buffer is written again only once the add that read it has ended.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from stores.record_checks import normalise

# Buffers up to this size are kept for the next batches; a bigger batch gets an array of its own, freed with it
# (a transaction must not hold on to gigabytes because one call passed a million vectors).
KEPT_BYTES = 64 * 2**20


class _Reader(Protocol):
    def wait(self) -> None: ...


class NormalisedBuffers:
    """Two reusable buffers for a writer's normalised batches (one writer thread: not thread-safe)."""

    def __init__(self) -> None:
        self._buffers: list[np.ndarray | None] = [None, None]
        self._readers: list[_Reader | None] = [None, None]
        self._turn = 0

    def into_free_buffer(self, vectors: np.ndarray) -> tuple[np.ndarray, int]:
        """``normalise(vectors)`` written into the buffer whose turn it is (after its last reader ended); the
        result and the buffer's number, for ``lent``. -1: an array of its own (too big to keep)."""
        rows, dim = vectors.shape
        if rows * dim * 4 > KEPT_BYTES:
            return normalise(vectors), -1
        slot, self._turn = self._turn, 1 - self._turn
        reader, self._readers[slot] = self._readers[slot], None
        if reader is not None:
            reader.wait()  # the add that read this buffer two batches ago: done with it before it is overwritten
        buffer = self._buffers[slot]
        if buffer is None or buffer.shape[1] != dim or buffer.shape[0] < rows:
            buffer = self._buffers[slot] = np.empty((rows, dim), dtype=np.float32)
        return normalise(vectors, out=buffer[:rows]), slot

    def lent(self, slot: int, reader: _Reader | None) -> None:
        """``reader`` (the index add) reads buffer ``slot`` until it ends."""
        if slot >= 0:
            self._readers[slot] = reader

"""A writer's normalised batches in two reused buffers (stores.faiss.vector_buffers): the same bits as ``normalise``,
never overwritten while an index add still reads them, and every batch of a transaction intact in the index."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from stores.base import Record, StoreContext
from stores.faiss import vector_buffers
from stores.faiss.store import FaissStore
from stores.faiss.vector_buffers import NormalisedBuffers
from stores.record_checks import normalise


def _batch(rows: int, seed: int, dim: int = 16) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(rows, dim)).astype(np.float32) * 3
    vectors[rows // 2] = 0  # a zero row stays zero
    return vectors


def test_batches_come_out_as_normalise_makes_them_in_two_buffers_in_turn() -> None:
    buffers = NormalisedBuffers()
    outs = []
    for number, rows in enumerate((40, 25, 40, 60, 10)):
        vectors = _batch(rows, number)
        out, slot = buffers.into_free_buffer(vectors)
        assert slot == number % 2
        assert np.array_equal(out, normalise(vectors)) and out.dtype == np.float32 and out.flags.c_contiguous
        outs.append(out)
    assert np.shares_memory(outs[0], outs[2])  # the first buffer again, not a new array
    assert not np.shares_memory(outs[0], outs[1])
    assert not np.shares_memory(outs[1], outs[3])  # 60 rows did not fit the second buffer's 25: a bigger one


def test_a_buffer_is_not_written_again_before_the_add_that_reads_it_ends() -> None:
    buffers = NormalisedBuffers()
    first, slot = buffers.into_free_buffer(_batch(8, 1))
    kept = first.copy()
    release = threading.Event()
    reader = threading.Thread(target=release.wait)
    reader.start()
    buffers.lent(slot, _Waiting(reader))
    buffers.into_free_buffer(_batch(8, 2))  # the other buffer: no wait
    done = threading.Event()
    third = threading.Thread(target=lambda: (buffers.into_free_buffer(_batch(8, 3)), done.set()), daemon=True)
    try:
        third.start()
        assert not done.wait(0.3)  # blocked on the reader of the first buffer
        assert np.array_equal(first, kept)  # which is untouched meanwhile
    finally:
        release.set()  # a failed check must not leave the reader thread waiting forever
    third.join(5)
    assert done.is_set() and np.array_equal(first, normalise(_batch(8, 3)))


class _Waiting:
    def __init__(self, thread: threading.Thread) -> None:
        self.thread = thread

    def wait(self) -> None:
        self.thread.join()


def test_a_batch_too_big_to_keep_gets_an_array_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vector_buffers, "KEPT_BYTES", 40 * 16 * 4)
    buffers = NormalisedBuffers()
    small, slot = buffers.into_free_buffer(_batch(40, 1))
    big, big_slot = buffers.into_free_buffer(_batch(41, 2))
    assert slot == 0 and big_slot == -1 and np.array_equal(big, normalise(_batch(41, 2)))
    buffers.lent(big_slot, None)  # nothing to record
    again, again_slot = buffers.into_free_buffer(_batch(40, 3))
    assert again_slot == 1  # the turn did not move for the big one


@pytest.mark.parametrize("kind", ["FLAT", "HNSW"])
def test_every_batch_of_one_transaction_is_in_the_index_as_written(tmp_path: Path, kind: str) -> None:
    store = FaissStore(StoreContext("kb", tmp_path, settings={"index": {"type": kind}}))
    batches = [_batch(rows, seed) for seed, rows in enumerate((30, 30, 12, 30, 30, 7))]
    writer = store.begin()
    start = 0
    for vectors in batches:
        writer.upsert([Record(f"r{start + i}", f"t {start + i}", {}, v) for i, v in enumerate(vectors)])
        start += len(vectors)
    writer.commit()
    index = store.committed_index()
    held = index.index.reconstruct_n(0, index.ntotal)  # in the order added
    assert np.array_equal(held, normalise(np.vstack(batches)))

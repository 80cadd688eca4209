"""FAISS index files written with O_DIRECT (stores.faiss.index_file): the same bytes as faiss.write_index, fsynced,
and the ordinary write where the file system refuses direct I/O; a failing disk raises its own error."""

from __future__ import annotations

import errno
import os

import faiss
import numpy as np
import pytest

from stores.faiss import index_file
from stores.faiss.index_file import write_durably


def flat(n: int, dim: int = 48, seed: int = 0) -> faiss.Index:
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    if n:
        index.add_with_ids(np.random.default_rng(seed).random((n, dim), dtype=np.float32), np.arange(n) * 3 + 1)
    return index


def hnsw(n: int, dim: int = 16) -> faiss.Index:
    index = faiss.IndexIDMap2(faiss.IndexHNSWFlat(dim, 8, faiss.METRIC_INNER_PRODUCT))
    index.add_with_ids(np.random.default_rng(1).random((n, dim), dtype=np.float32), np.arange(n))
    return index


def direct_writes(monkeypatch) -> list[int]:
    """Count the buffers the O_DIRECT path writes (so a test knows which path ran)."""
    writes: list[int] = []
    flush = index_file._DirectWriter._flush

    def counting(self, length):
        writes.append(length)
        return flush(self, length)

    monkeypatch.setattr(index_file._DirectWriter, "_flush", counting)
    return writes


# from an empty index to more than one 8 MB buffer (43691 x 192 bytes)
@pytest.mark.parametrize("n", [0, 1, 21, 42, 43, 5000, 43690, 43691])
def test_the_file_holds_exactly_what_faiss_writes(tmp_path, monkeypatch, n):
    writes = direct_writes(monkeypatch)
    index = flat(n)
    path = tmp_path / "index.faiss"
    write_durably(index, path)
    assert path.read_bytes() == faiss.serialize_index(index).tobytes()
    assert writes and all(length % 4096 == 0 for length in writes)  # the direct path ran, block-aligned
    back = faiss.read_index(str(path))
    assert back.ntotal == n
    if n:
        query = np.random.default_rng(5).random((3, 48), dtype=np.float32)
        assert np.array_equal(back.search(query, 4)[1], index.search(query, 4)[1])


def test_an_hnsw_index_and_an_overwritten_longer_file(tmp_path, monkeypatch):
    direct_writes(monkeypatch)
    path = tmp_path / "index.faiss"
    write_durably(flat(20000), path)  # a longer file first: the shorter one must not keep its tail
    index = hnsw(300)
    write_durably(index, path)
    assert path.read_bytes() == faiss.serialize_index(index).tobytes()


def test_every_write_is_fsynced(tmp_path, monkeypatch):
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    write_durably(flat(10), tmp_path / "a.faiss")
    assert len(synced) == 1

    monkeypatch.delattr(os, "O_DIRECT")  # a platform without the flag: the ordinary write, fsynced too
    write_durably(flat(10), tmp_path / "b.faiss")
    assert len(synced) == 2
    assert (tmp_path / "b.faiss").read_bytes() == faiss.serialize_index(flat(10)).tobytes()


def test_a_file_system_refusing_direct_io_gets_the_ordinary_write(tmp_path, monkeypatch):
    real_open = os.open

    def refusing_open(path, flags, *args):
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", refusing_open)
    write_durably(flat(100), tmp_path / "a.faiss")
    assert (tmp_path / "a.faiss").read_bytes() == faiss.serialize_index(flat(100)).tobytes()


def test_a_refused_direct_write_is_rewritten_the_ordinary_way(tmp_path, monkeypatch):
    def refusing_write(self, length):
        raise index_file._DirectRefused()

    monkeypatch.setattr(index_file._DirectWriter, "_flush", refusing_write)
    index = flat(30000)  # more than a buffer: the refusal comes in the middle of faiss's write
    write_durably(index, tmp_path / "a.faiss")
    assert (tmp_path / "a.faiss").read_bytes() == faiss.serialize_index(index).tobytes()


def test_a_full_disk_raises_its_own_error_not_faiss_wrapping(tmp_path, monkeypatch):
    real_write = os.write

    def full(fd, data):
        if len(data) % 4096 == 0 and len(data) >= 4096:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(OSError) as raised:
        write_durably(flat(30000), tmp_path / "a.faiss")
    assert raised.value.errno == errno.ENOSPC

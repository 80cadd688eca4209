"""A loaded FAISS index moved onto 2 MB pages (stores.faiss.huge_pages): the arrays it finds are the index's own
memory, the move keeps every byte and every search answer, and it can be turned off."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import faiss
import numpy as np
import pytest

from stores.base import Record, StoreContext
from stores.faiss import huge_pages
from stores.faiss.store import FaissStore


def _kernel_collapses() -> bool:
    """Whether this machine should honour MADV_COLLAPSE: Linux 6.1+ with transparent huge pages not off."""
    if not sys.platform.startswith("linux"):
        return False
    major, minor = (int(x) for x in re.match(r"(\d+)\.(\d+)", Path("/proc/sys/kernel/osrelease").read_text()).groups())
    setting = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    return (major, minor) >= (6, 1) and setting.exists() and "[never]" not in setting.read_text()


def _huge_kb_at(address: int) -> int:
    """AnonHugePages (kB) of the mapping holding ``address`` in this process."""
    mapping = None
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = re.match(r"([0-9a-f]+)-([0-9a-f]+) ", line)
        if head:
            mapping = (int(head.group(1), 16), int(head.group(2), 16))
        elif line.startswith("AnonHugePages:") and mapping and mapping[0] <= address < mapping[1]:
            return int(line.split()[1])
    return 0


def _vectors(n: int, dim: int = 64) -> np.ndarray:
    vectors = np.random.default_rng(5).normal(size=(n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.mark.parametrize("kind", ["FLAT", "HNSW"])
def test_the_arrays_found_are_the_index_memory(kind: str) -> None:
    vectors = _vectors(500)
    inner = faiss.IndexFlatIP(64) if kind == "FLAT" else faiss.IndexHNSWFlat(64, 8, faiss.METRIC_INNER_PRODUCT)
    index = faiss.IndexIDMap2(inner)
    index.add_with_ids(vectors, np.arange(1, 501))
    arrays = huge_pages.index_arrays(index)
    codes = arrays[-1]
    assert np.array_equal(codes.view(np.float32).reshape(-1, 64), vectors)  # the vectors, in place
    if kind == "HNSW":
        neighbours = arrays[0]
        assert neighbours.dtype == np.int32 and neighbours.size >= 500 * 16 and neighbours.max() < 500
    assert huge_pages.index_arrays(faiss.IndexFlatIP(64)) == []  # nothing held: nothing to move


def test_the_move_keeps_the_bytes_and_the_answers() -> None:
    vectors = _vectors(40_000)  # 10 MB: several whole huge pages
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(64))
    index.add_with_ids(vectors, np.arange(1, 40_001))
    queries = _vectors(20)[:, ::-1].copy()
    before = index.search(queries, 10)
    codes = huge_pages.index_arrays(index)[0]
    moved = huge_pages.back_with_huge_pages(index)
    if _kernel_collapses():
        whole = codes.nbytes // huge_pages.HUGE_PAGE - 1  # at least, wherever the array starts
        assert moved >= whole * huge_pages.HUGE_PAGE and moved % huge_pages.HUGE_PAGE == 0
        assert _huge_kb_at(codes.ctypes.data + codes.nbytes // 2) >= 2048
    else:
        assert moved == 0
    assert np.array_equal(codes.view(np.float32).reshape(-1, 64), vectors)
    after = index.search(queries, 10)
    assert np.array_equal(before[1], after[1]) and np.array_equal(before[0], after[0])


def test_an_array_smaller_than_a_huge_page_is_left_alone() -> None:
    assert huge_pages.collapse(np.zeros(1000, np.float32)) == 0


def test_it_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KB_HUGE_PAGES", "0")
    assert huge_pages.start_backing(faiss.IndexFlatIP(4)) is None


def test_a_store_moves_the_index_it_loads_and_answers_as_before(tmp_path: Path) -> None:
    store = FaissStore(StoreContext("kb", tmp_path))
    vectors = _vectors(20_000)
    store.upsert([Record(f"r{i}", f"text {i}", {}, v) for i, v in enumerate(vectors)])
    first = store.similarity(vectors[7], 5)
    thread = store.huge_pages
    assert thread is not None and thread.name == huge_pages.THREAD_NAME
    thread.join(30)
    assert not thread.is_alive()
    assert [(h.record.id, h.score) for h in store.similarity(vectors[7], 5)] == \
        [(h.record.id, h.score) for h in first]
    assert first[0].record.id == "r7"


def test_a_transient_shortage_is_tried_again_and_other_refusals_are_not(monkeypatch: pytest.MonkeyPatch) -> None:
    import ctypes
    import errno

    calls: list[int] = []

    def refusing(times: int, error: int):  # noqa: ANN202 - a stand-in for libc's madvise
        def madvise(start: int, length: int, advice: int) -> int:
            calls.append(advice)
            if len(calls) <= times:
                ctypes.set_errno(error)
                return -1
            return 0
        return madvise

    array = np.zeros(3 * huge_pages.HUGE_PAGE // 4, np.float32)  # 3 huge pages of bytes: at least 2 whole
    monkeypatch.setattr(huge_pages, "_MADVISE", refusing(2, errno.EAGAIN))
    assert huge_pages.collapse(array) >= 2 * huge_pages.HUGE_PAGE and calls == [huge_pages.MADV_COLLAPSE] * 3
    calls.clear()
    monkeypatch.setattr(huge_pages, "_MADVISE", refusing(1, errno.EINVAL))
    assert huge_pages.collapse(array) == 0 and len(calls) == 1
    calls.clear()
    monkeypatch.setattr(huge_pages, "_MADVISE", refusing(5, errno.EAGAIN))
    assert huge_pages.collapse(array) == 0 and len(calls) == 3

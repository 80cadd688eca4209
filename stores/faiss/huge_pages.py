"""A loaded FAISS index's big arrays moved onto 2 MB pages (Linux ``MADV_COLLAPSE``), on a helper thread.

faiss allocates an index's vectors (and an HNSW graph's neighbour lists) with ``malloc``: with transparent
huge pages in ``madvise`` mode (the common default), that memory is mapped 4 KB at a time, and a search that
streams or hops through 154 MB of vectors (100k x 384) spends much of its time on TLB misses, the more so in a
virtual machine, where each miss walks two page tables. On this 2-core VM a 100k flat search took 10.8 ms on
4 KB pages and 5.1 ms once its vectors were on 2 MB pages; a 100k HNSW search 0.366 ms and 0.312 ms
(``/work/scratch/collapse.py``, ``collapse_hnsw.py``).

``MADV_COLLAPSE`` (Linux 6.1) asks the kernel to copy a range into huge pages now, whatever the THP setting
says for new memory, keeping its contents; readers of the range during the copy just wait for it. It takes
~0.15 s for 154 MB, so it runs on a thread of its own after the index is loaded, holding the index object
until it is done (its memory cannot be freed under it). Where it is refused (another OS, an older kernel,
THP off, no free huge pages) nothing changes: the index works as it did. ``KB_HUGE_PAGES=0`` turns it off.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import sys
import threading
from typing import Any

import faiss
import numpy as np

log = logging.getLogger(__name__)

MADV_COLLAPSE = 25
HUGE_PAGE = 2 * 2**20
THREAD_NAME = "kb-huge-pages"
_ATTEMPTS = 3


def _madvise() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.madvise
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    function.restype = ctypes.c_int
    return function


_MADVISE = _madvise()


def enabled() -> bool:
    return _MADVISE is not None and os.environ.get("KB_HUGE_PAGES", "1") != "0"


def index_arrays(index: faiss.Index) -> list[np.ndarray]:
    """Views of the index's big arrays, in place: the vectors, and an HNSW graph's neighbour lists."""
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index
    arrays: list[np.ndarray] = []
    if isinstance(inner, faiss.IndexHNSW):
        neighbours = inner.hnsw.neighbors
        if neighbours.size():
            arrays.append(faiss.rev_swig_ptr(neighbours.data(), neighbours.size()))
        inner = faiss.downcast_index(inner.storage)
    if isinstance(inner, faiss.IndexFlatCodes) and inner.codes.size():
        arrays.append(faiss.rev_swig_ptr(inner.codes.data(), inner.codes.size()))
    return arrays


def collapse(array: np.ndarray) -> int:
    """Move the whole 2 MB pages inside ``array`` onto huge pages; the bytes that moved (0: refused or too small)."""
    if _MADVISE is None:
        return 0
    address = array.ctypes.data
    start = -(-address // HUGE_PAGE) * HUGE_PAGE  # inward to whole huge pages: never advise a neighbour's memory
    end = (address + array.nbytes) // HUGE_PAGE * HUGE_PAGE
    if end <= start:
        return 0
    for _ in range(_ATTEMPTS):
        if _MADVISE(start, end - start, MADV_COLLAPSE) == 0:
            return end - start
        error = ctypes.get_errno()
        if error != errno.EAGAIN:  # EAGAIN: a transient shortage of huge pages, which a retry may find
            break
    log.debug("huge pages refused for %d MB of a FAISS index: %s", (end - start) >> 20, os.strerror(error))
    return 0


def back_with_huge_pages(index: faiss.Index) -> int:
    """Collapse the index's big arrays onto huge pages, now, on this thread; the bytes that moved."""
    return sum(collapse(array) for array in index_arrays(index))


def start_backing(index: faiss.Index) -> threading.Thread | None:
    """``back_with_huge_pages`` on a helper thread (None when off). The thread holds ``index`` until it ends."""
    if not enabled():
        return None

    def run() -> None:
        try:
            moved = back_with_huge_pages(index)
            log.debug("FAISS index of %d vectors: %d MB on huge pages", index.ntotal, moved >> 20)
        except Exception:  # noqa: BLE001 - an optimisation: whatever goes wrong, the index works as it is
            log.warning("moving a FAISS index onto huge pages failed", exc_info=True)

    thread = threading.Thread(target=run, name=THREAD_NAME, daemon=True)
    thread.start()
    return thread

"""Writes knowledge-bank versions with the FAISS driver until killed (the crash-safety test's victim).

Version v holds documents d0..d29 with text "v<v> d<i>" and metadata {"v": v}, plus ``30 + v % 3``
documents in all, so every version differs in content and size. Usage: crash_worker FOLDER FIRST LAST.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from stores.base import Record, StoreContext
from stores.faiss_store import FaissStore

DIM = 16


def version_records(version: int) -> list[Record]:
    count = 30 + version % 3
    rng = np.random.default_rng(version)
    return [Record(f"d{i}", f"v{version} d{i}", {"v": version}, rng.normal(size=DIM).astype(np.float32))
            for i in range(count)]


def write_version(store: FaissStore, version: int) -> None:
    with store.begin() as tx:
        tx.clear()
        tx.upsert(version_records(version))


def main() -> None:
    folder, first, last = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    store = FaissStore(StoreContext("crash", folder))
    for version in range(first, last + 1):
        write_version(store, version)
        print(version, flush=True)


if __name__ == "__main__":
    main()

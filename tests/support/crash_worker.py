"""Writes knowledge-bank versions with one store driver until killed (the crash-safety tests' victim).

Version v holds documents d0..d29 with text "v<v> d<i>" and metadata {"v": v}, plus ``30 + v % 3``
documents in all, so every version differs in content and size.
Usage: crash_worker FOLDER FIRST LAST [STORE [URL [KB_ID]]] with STORE one of faiss (default), chroma
(embedded), chroma-server, elasticsearch (URL: the server's; "" for none). Prints ``ready`` once the store
is open, then each version it committed; exits 3 when the store fails (its server was killed).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from kb_base.errors import KBError
from stores.base import Record, StoreContext, VectorStoreDriver

DIM = 16


def open_store(folder: Path, kind: str = "faiss", url: str | None = None, kb_id: str = "crash") -> VectorStoreDriver:
    if kind == "faiss":
        from stores.faiss.store import FaissStore

        return FaissStore(StoreContext(kb_id, folder))
    if kind == "faiss-hnsw_sq8":  # issue 31: a compressed type, every batch's segment trained, deep re-ranking
        from stores.faiss.store import FaissStore

        index = {"type": "HNSW_SQ8", "exact_below": 100, "rerank": 50}
        return FaissStore(StoreContext(kb_id, folder, settings={"index": index}))
    if kind in ("chroma", "chroma-server"):
        from stores.chroma.store import ChromaStore

        connection = {"url": url, "timeout": 10} if kind == "chroma-server" else {}
        return ChromaStore(StoreContext(kb_id, folder, connection=connection))
    if kind == "elasticsearch":
        from stores.elasticsearch.store import ElasticsearchStore

        return ElasticsearchStore(StoreContext(kb_id, folder, connection={"url": url, "timeout": 10}))
    raise SystemExit(f"unknown store kind {kind!r}")


def version_records(version: int) -> list[Record]:
    count = 30 + version % 3
    rng = np.random.default_rng(version)
    return [Record(f"d{i}", f"v{version} d{i}", {"v": version}, rng.normal(size=DIM).astype(np.float32))
            for i in range(count)]


def write_version(store: VectorStoreDriver, version: int) -> None:
    with store.begin() as tx:
        tx.clear()
        tx.upsert(version_records(version))


def main() -> None:
    folder, first, last = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    kind = sys.argv[4] if len(sys.argv) > 4 else "faiss"
    url = (sys.argv[5] if len(sys.argv) > 5 else "") or None
    store = open_store(folder, kind, url, sys.argv[6] if len(sys.argv) > 6 else "crash")
    print("ready", flush=True)
    for version in range(first, last + 1):
        try:
            write_version(store, version)
        except KBError as exc:  # the store's server died under us: the test restarts it and checks
            print(f"error {type(exc).__name__}", flush=True)
            sys.exit(3)
        print(version, flush=True)


if __name__ == "__main__":
    main()

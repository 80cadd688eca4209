"""An embedded-Chroma knowledge bank written in batches until killed, and its checker (the Chroma kill tests).

``write FOLDER FIRST``: commits batch FIRST, FIRST+1, ... (300 records each: ids ``b<batch>-<i>``, text
``batch<batch> item<i> w<i % 7>``, a 16-dimension vector seeded by the batch), printing each batch number once
committed. Chroma writes its HNSW files every 1,000 records, so a kill often lands while it writes them.
``check FOLDER``: in a fresh process, prints JSON: the committed batches (asserting each is whole), and whether
a similarity and a keyword search answer exactly as an exact search over the committed records does.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from stores.base import Record, StoreContext
from stores.chroma.store import ChromaStore

BATCH, DIM = 300, 16


def batch_records(batch: int) -> list[Record]:
    vectors = np.random.default_rng(batch).normal(size=(BATCH, DIM)).astype(np.float32)
    return [Record(f"b{batch}-{i}", f"batch{batch} item{i} w{i % 7}", {"batch": batch}, vectors[i])
            for i in range(BATCH)]


def open_store(folder: Path) -> ChromaStore:
    return ChromaStore(StoreContext("killed", folder))


def write(folder: Path, first: int) -> None:
    store = open_store(folder)
    print("ready", flush=True)
    batch = first
    while True:
        with store.begin() as tx:
            tx.upsert(batch_records(batch))
        print(batch, flush=True)
        batch += 1


def check(folder: Path) -> dict[str, object]:
    store = open_store(folder)
    ids = store.ids_where(None)
    batches = sorted({int(i.split("-")[0][1:]) for i in ids})
    whole = len(ids) == BATCH * len(batches) and store.count() == len(ids)
    records = [r for b in batches for r in batch_records(b)]
    matrix = np.stack([r.vector for r in records]) if records else np.zeros((0, DIM), np.float32)
    matrix = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
    rng = np.random.default_rng(len(ids))
    similarity_exact = True
    for _ in range(5):
        query = rng.normal(size=DIM).astype(np.float32)
        exact = [records[i].id for i in np.argsort(-(matrix @ (query / np.linalg.norm(query))))[:5]]
        found = [h.record.id for h in store.similarity(query, 5)]
        similarity_exact &= found == exact
    word = f"batch{batches[-1]}" if batches else "batch0"
    keyword_exact = {h.record.id for h in store.keyword(word, BATCH + 10)} == (
        {r.id for r in batch_records(batches[-1])} if batches else set())
    return {"batches": batches, "records": len(ids), "whole": whole, "similarity_exact": bool(similarity_exact),
            "keyword_exact": keyword_exact, "recovered": store.recovered}


if __name__ == "__main__":
    if sys.argv[1] == "write":
        write(Path(sys.argv[2]), int(sys.argv[3]))
    else:
        print(json.dumps(check(Path(sys.argv[2]))))

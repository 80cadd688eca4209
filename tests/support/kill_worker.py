"""A knowledge bank written in batches until killed, and its checker (the kill tests, every store).

``write FOLDER FIRST KIND URL KB_ID``: opens the store (KIND: faiss, chroma, chroma-server, elasticsearch; URL
the server's, "" for none), prints ``ready``, then commits batch FIRST, FIRST+1, ... (300 records each: ids
``b<batch>-<i>``, text ``batch<batch> item<i> w<i % 7>``, a 16-dimension vector seeded by the batch), printing
each batch number once committed. Each commit also deletes batch N - 20 (a window of 20 batches, 6,000 records,
so the store stays small however many batches a fast store commits). Chroma writes its HNSW files every 1,000
changes, so a kill often lands while it writes them. ``KB_FAULT_POINT`` in the environment kills it at that
point of its first commit.
``check FOLDER KIND URL KB_ID``: in a fresh process, prints JSON: the batches held (and whether each is whole),
and whether a similarity and a hybrid search through kb's search path answer exactly as an exact search
over the committed records does (brute-force cosine; for hybrid that list fused with the keyword list by kb's
own fusion).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from kb.fusion import DEFAULT_FUSION, fuse
from kb.search import SearchContext, execute_search
from kb_base.search import SearchRequest
from stores.base import Record, VectorStoreDriver
from tests.support.crash_worker import open_store as open_kind

BATCH, DIM, K, WINDOW = 300, 16, 10, 20
TIE = 1e-5  # two scores this close are a tie: either order is exact


def batch_records(batch: int) -> list[Record]:
    vectors = np.random.default_rng(batch).normal(size=(BATCH, DIM)).astype(np.float32)
    return [Record(f"b{batch}-{i}", f"batch{batch} item{i} w{i % 7}", {"batch": batch}, vectors[i])
            for i in range(BATCH)]


def open_store(folder: Path, kind: str = "chroma", url: str | None = None,
               kb_id: str = "killed") -> VectorStoreDriver:
    return open_kind(folder, kind, url or None, kb_id)


def write(store: VectorStoreDriver, first: int) -> None:
    print("ready", flush=True)
    batch = first
    # armed at a merge's fault point: commits a little apart, so that the throttled background merge gets its
    # share of a loaded 2-core machine (back-to-back commits once kept a compressed merge from finishing in 120 s)
    pause = 0.1 if os.environ.get("KB_FAULT_POINT", "").startswith("merge_") else 0.0
    while True:
        time.sleep(pause)
        with store.begin() as tx:
            tx.upsert(batch_records(batch))
            if batch >= WINDOW:
                tx.delete([f"b{batch - WINDOW}-{i}" for i in range(BATCH)])
        print(batch, flush=True)
        batch += 1


def window(last: int) -> list[int]:
    """The batches a store holds once batch ``last`` is committed."""
    return list(range(max(0, last - WINDOW + 1), last + 1))


def same_ranking(found: list[str], exact: list[tuple[str, float]], scores: dict[str, float]) -> bool:
    """Whether ``found`` is the exact ranking, up to the order of tied scores."""
    if len(found) != len(exact):
        return False
    return all(doc_id == want or (doc_id in scores and abs(scores[doc_id] - score) <= TIE)
               for doc_id, (want, score) in zip(found, exact, strict=True))


def check(store: VectorStoreDriver) -> dict[str, object]:
    ids = store.ids_where(None)
    batches = sorted({int(i.split("-")[0][1:]) for i in ids})
    records = [r for b in batches for r in batch_records(b)]
    whole = sorted(ids) == sorted(r.id for r in records) and store.count() == len(ids)
    matrix = np.stack([r.vector for r in records]) if records else np.zeros((0, DIM), np.float32)
    matrix = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
    rng = np.random.default_rng(len(ids))
    # every keyword hit (one record a batch) among the candidates: no cut through tied keyword scores
    depth = max(DEFAULT_FUSION["candidates"], len(batches) + 50)
    settings = {**DEFAULT_FUSION, "candidates": depth}
    similarity_exact = hybrid_exact = True
    for _ in range(5):
        query = rng.normal(size=DIM).astype(np.float32)
        cosines = matrix @ (query / np.linalg.norm(query))
        order = np.argsort(-cosines)
        dense = [(records[i].id, float(cosines[i])) for i in order[:depth]]
        every = {records[i].id: float(cosines[i]) for i in order}
        found = [h.record.id for h in store.similarity(query, K)]
        similarity_exact &= same_ranking(found, dense[:K], every)
        # hybrid through kb's search path; exact: the exact dense list fused with the keyword list by kb's fusion
        text = f"item{rng.integers(BATCH)}"
        request = SearchRequest(query=text, vector=query.tolist(), k=K, search_type="hybrid", candidates=depth)
        hybrid = [r.id for r in execute_search(store, request, SearchContext(embed_query=lambda _, q=query: q))]
        keyword = [(h.record.id, h.score) for h in store.keyword(text, depth)]
        fused = fuse(dense, keyword, settings)
        hybrid_exact &= same_ranking(hybrid, fused[:K], dict(fused))
    return {"batches": batches, "records": len(ids), "whole": whole, "similarity_exact": bool(similarity_exact),
            "hybrid_exact": bool(hybrid_exact), "recovered": list(getattr(store, "recovered", []))}


if __name__ == "__main__":
    command, folder, kind, url, kb_id = sys.argv[1], Path(sys.argv[2]), *sys.argv[-3:]
    opened = open_store(folder, kind, url, kb_id)
    if command == "write":
        write(opened, int(sys.argv[3]))
    else:
        print(json.dumps(check(opened)))

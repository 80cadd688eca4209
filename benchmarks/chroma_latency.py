"""Search latency of Chroma knowledge banks, embedded and against a server, beside FAISS, in one run.

    python -m benchmarks.chroma_latency --chunks 10000 --queries 200

Every driver gets the same 10k chunks (384-d unit vectors in 100 clusters, as
embeddings of a real corpus cluster by topic; synthetic text) and the same queries
(a stored vector plus noise), and is timed at the driver level, k=10:

- similarity, no filter;
- similarity with a filter Chroma's ``where`` expresses (``{"group": 3}``, 10%);
- similarity with one it cannot (``{"date": {"$gte": ...}}``, string ordering, ~10%),
  answered by SQLite's matches and a Chroma query restricted to their ids;
- BM25 keyword search;
- similarity while a writer holds an uncommitted replacement of 20% of the records
  (readers must skip the pending records);
- Chroma only: the query with kb's visibility filter in Chroma (``__kb_gen``/``__kb_del``),
  which readers fall back to when invisible records crowd the top;
- for Chroma, the bare chromadb query on the same collection (no kb layer), and
  recall@10 against FAISS's exact answer.

A ``chroma run`` server is started on a free loopback port and stopped afterwards.
Prints p50/p99 per driver and search, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.writer_throughput import synthetic_chunks
from kb_base.filters import parse_filter
from stores.base import Record, StoreContext, VectorStoreDriver
from stores.chroma.codec import visibility
from stores.chroma.store import ChromaStore
from stores.faiss.store import FaissStore


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _percentiles(run: Callable[[int], object], n: int) -> dict[str, float]:
    run(0)  # warm caches and connections
    samples = []
    for i in range(n):
        started = time.perf_counter()
        run(i)
        samples.append(time.perf_counter() - started)
    ms = np.array(samples) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2)}


def _start_server(path: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    process = subprocess.Popen([str(Path(sys.executable).parent / "chroma"), "run", "--path", str(path), "--host",
                                "127.0.0.1", "--port", str(port)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env={**os.environ, "ANONYMIZED_TELEMETRY": "False"})
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(f"{url}/api/v2/heartbeat", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("chroma run did not start")


def clustered_vectors(n: int, dim: int = 384, clusters: int = 100, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(clusters, dim))
    vectors = (centers[rng.integers(0, clusters, size=n)] + rng.normal(size=(n, dim))).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def measure(name: str, driver: VectorStoreDriver, records: list[Record], queries: np.ndarray, words: list[str],
            exact: list[list[str]] | None) -> dict[str, Any]:
    started = time.perf_counter()
    with driver.begin() as tx:
        for start in range(0, len(records), 5000):
            tx.upsert(records[start : start + 5000])
    out: dict[str, Any] = {"write_seconds": round(time.perf_counter() - started, 2)}
    n = len(queries)
    group, dates = parse_filter({"group": 3}), parse_filter({"date": {"$gte": "2024-10-01"}})
    out["similarity"] = _percentiles(lambda i: driver.similarity(queries[i], 10), n)
    out["similarity_where"] = _percentiles(lambda i: driver.similarity(queries[i], 10, group), n)
    out["similarity_string_order"] = _percentiles(lambda i: driver.similarity(queries[i], 10, dates), n)
    out["keyword"] = _percentiles(lambda i: driver.keyword(f"{words[i % len(words)]} {words[(i * 7) % len(words)]}",
                                                           10), n)
    if exact is not None:
        found = [[h.record.id for h in driver.similarity(q, 10)] for q in queries]
        out["recall_at_10"] = round(float(np.mean([len(set(f) & set(e)) / 10 for f, e in zip(found, exact,
                                                                                              strict=True)])), 4)
    tx = driver.begin()
    try:
        step = 5
        tx.upsert([Record(r.id, "pending", {"group": -1}, r.vector) for r in records[::step]])
        out["similarity_during_write"] = _percentiles(lambda i: driver.similarity(queries[i], 10), n)
    finally:
        tx.rollback()
    collection = getattr(driver, "live_collection", lambda: None)()
    if collection is not None:
        view = driver._view()  # type: ignore[attr-defined]

        def filtered(i: int) -> object:
            with view._snapshot() as snap:
                return view._query(snap, queries[i].tolist(), 10, False, where=visibility(snap.generation))

        out["similarity_visibility_filter"] = _percentiles(filtered, n)
        out["bare_chromadb_query"] = _percentiles(lambda i: collection.query(
            query_embeddings=[queries[i].tolist()], n_results=10, include=["documents", "metadatas", "distances"]), n)
    print(f"{name:<16} " + " | ".join(f"{key} p50 {value['p50_ms']:.2f} p99 {value['p99_ms']:.2f}"
                                      for key, value in out.items() if isinstance(value, dict))
          + (f" | recall@10 {out['recall_at_10']}" if "recall_at_10" in out else "")
          + f" | write {out['write_seconds']} s", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--ef-search", type=int, default=None, help="Chroma HNSW ef_search (default: Chroma's 100)")
    parser.add_argument("--out", type=Path, default=Path("bench-results/chroma_latency.json"))
    args = parser.parse_args(argv)
    os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

    texts, _ = synthetic_chunks(args.chunks)
    vectors = clustered_vectors(args.chunks)
    records = [Record(f"c{i}", t, {"group": i % 10, "date": f"2024-{1 + i % 12:02d}-01"}, v)
               for i, (t, v) in enumerate(zip(texts, vectors, strict=True))]
    rng = np.random.default_rng(7)
    picks = rng.integers(0, args.chunks, size=args.queries)
    queries = vectors[picks] + rng.normal(scale=0.02, size=(args.queries, vectors.shape[1])).astype(np.float32)
    words = sorted({w for t in texts[:50] for w in t.split()[2:]})
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        process, url = _start_server(Path(tmp) / "server")
        try:
            faiss = FaissStore(StoreContext("faiss", Path(tmp) / "faiss"))
            results["faiss_flat"] = measure("faiss_flat", faiss, records, queries, words, None)
            exact = [[h.record.id for h in faiss.similarity(q, 10)] for q in queries]
            settings = {"hnsw": {"ef_search": args.ef_search}} if args.ef_search else {}
            drivers = {"chroma_embedded": ChromaStore(StoreContext("embedded", Path(tmp) / "embedded",
                                                                   settings=settings)),
                       "chroma_server": ChromaStore(StoreContext("server", Path(tmp) / "srv", settings=settings,
                                                                 connection={"url": url}))}
            for name, driver in drivers.items():
                results[name] = measure(name, driver, records, queries, words, exact)
        finally:
            process.terminate()
            process.wait(30)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"chunks": args.chunks, "queries": args.queries, "ef_search": args.ef_search,
                                    "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

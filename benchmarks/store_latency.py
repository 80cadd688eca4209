"""Search latency of the store drivers side by side, in one run, on the same vectors.

    python -m benchmarks.store_latency --chunks 10000 --queries 200 [--chroma-server]

Drivers: FAISS (FLAT), Chroma embedded and, with ``--chroma-server``, Chroma over HTTP
against a ``chroma run`` process started here. Times ``driver.similarity`` (k=10) with and
without a metadata filter; prints p50/p99 and ratios to FAISS, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.writer_throughput import synthetic_chunks
from kb_base.filters import parse_filter
from stores.base import Record, StoreContext, VectorStoreDriver
from stores.chroma.store import ChromaStore
from stores.faiss.store import FaissStore


def _time(driver: VectorStoreDriver, queries: np.ndarray, flt: Any) -> dict[str, float]:
    samples = []
    for query in queries:
        started = time.perf_counter()
        driver.similarity(query, 10, flt)
        samples.append(time.perf_counter() - started)
    ms = np.array(samples) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--chroma-server", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("bench-results/store_latency.json"))
    args = parser.parse_args(argv)

    texts, vectors = synthetic_chunks(args.chunks)
    records = [Record(f"c{i}", t, {"group": i % 10}, v) for i, (t, v) in enumerate(zip(texts, vectors, strict=True))]
    queries = np.random.default_rng(7).normal(size=(args.queries, vectors.shape[1])).astype(np.float32)
    flt = parse_filter({"group": 3})
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        drivers: dict[str, VectorStoreDriver] = {
            "faiss_flat": FaissStore(StoreContext("faiss", Path(tmp) / "faiss")),
            "chroma_embedded": ChromaStore(StoreContext("embedded", Path(tmp) / "chroma")),
        }
        server = None
        if args.chroma_server:
            port = 18000 + os.getpid() % 1000
            server = subprocess.Popen([str(Path(sys.executable).parent / "chroma"), "run", "--path",
                                       str(Path(tmp) / "server"), "--port", str(port)], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, env={**os.environ, "ANONYMIZED_TELEMETRY": "False"})
            for _ in range(300):
                try:
                    httpx.get(f"http://127.0.0.1:{port}/api/v2/heartbeat", timeout=1)
                    break
                except httpx.TransportError:
                    time.sleep(0.2)
            drivers["chroma_server"] = ChromaStore(StoreContext("server", Path(tmp) / "srv",
                                                                connection={"url": f"http://127.0.0.1:{port}"}))
        try:
            for name, driver in drivers.items():
                started = time.perf_counter()
                with driver.begin() as tx:
                    for start in range(0, len(records), 5000):
                        tx.upsert(records[start : start + 5000])
                write_s = time.perf_counter() - started
                results[name] = {"write_seconds": round(write_s, 2), "similarity": _time(driver, queries, None),
                                 "filtered_similarity": _time(driver, queries, flt)}
        finally:
            if server is not None:
                server.terminate()
                server.wait(30)
    base = results["faiss_flat"]["similarity"]["p50_ms"]
    for name, figures in results.items():
        figures["p50_ratio_to_faiss"] = round(figures["similarity"]["p50_ms"] / base, 2)
        plain, filtered = figures["similarity"], figures["filtered_similarity"]
        print(f"{name:<16} similarity p50 {plain['p50_ms']:>7.2f} ms p99 {plain['p99_ms']:>7.2f} ms | filtered p50 "
              f"{filtered['p50_ms']:>7.2f} ms p99 {filtered['p99_ms']:>7.2f} ms | write {figures['write_seconds']} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"chunks": args.chunks, "queries": args.queries, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

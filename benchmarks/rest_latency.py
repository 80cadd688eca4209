"""Search latency over REST at N chunks: query by vector, and by text (model included, then cached).

    python -m benchmarks.rest_latency --chunks 10000 --queries 300 --out bench-results/rest_latency.json

Starts a real ``kb serve`` process (uvicorn, auth off, temp KB_HOME), writes N
chunks with precomputed 384-d vectors through the REST API, then times
searches from one client with httpx (keep-alive).
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from benchmarks.results import write_results
from benchmarks.writer_throughput import synthetic_chunks


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _percentiles(samples: list[float]) -> dict[str, float]:
    ms = np.array(samples) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p95_ms": round(float(np.percentile(ms, 95)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2), "qps": round(len(ms) / (ms.sum() / 1000), 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--out", type=Path, default=Path("bench-results/rest_latency.json"))
    args = parser.parse_args(argv)
    texts, vectors = synthetic_chunks(args.chunks)
    port = _free_port()
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "KB_HOME": home, "KB_AUTH": "off", "HF_HUB_OFFLINE": "1"}
        server = subprocess.Popen([sys.executable, "-m", "api.cli", "serve", "--port", str(port),
                                   "--log-level", "warning"], env=env, stderr=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        try:
            with httpx.Client(base_url=base, timeout=120) as http:
                deadline = time.monotonic() + 180  # /readyz answers 200 once the local model is loaded
                while time.monotonic() < deadline:
                    try:
                        if http.get("/readyz").status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    time.sleep(0.2)
                kb_id = http.post("/v1/projects/DEFAULT/knowledge-banks", json={"name": "bench"}).json()["id"]
                path = f"/v1/projects/DEFAULT/knowledge-banks/{kb_id}"
                for start in range(0, args.chunks, 2000):
                    docs = [{"id": f"c{i}", "text": texts[i], "metadata": {"n": i % 10},
                             "vector": vectors[i].tolist()} for i in range(start, min(start + 2000, args.chunks))]
                    http.post(path + "/documents", json={"documents": docs}).raise_for_status()
                rng = np.random.default_rng(1)
                queries = rng.normal(size=(args.queries, 384)).astype(np.float32)
                timings: dict[str, list[float]] = {"vector": [], "vector_filtered": [], "text_first_time": [],
                                                   "text_repeated": []}
                http.post(path + "/search", json={"query": "warm the model up", "k": 10}).raise_for_status()
                for i, q in enumerate(queries):
                    for name, body in (("vector", {"vector": q.tolist(), "k": 10}),
                                       ("vector_filtered", {"vector": q.tolist(), "k": 10, "filter": {"n": 3}}),
                                       ("text_first_time", {"query": f"unique question number {i} about cells",
                                                            "k": 10}),
                                       ("text_repeated", {"query": "a question asked again and again", "k": 10})):
                        started = time.perf_counter()
                        http.post(path + "/search", json=body).raise_for_status()
                        timings[name].append(time.perf_counter() - started)
        finally:
            server.terminate()
            server.wait(30)
    report = {"benchmark": "rest_search_latency", "chunks": args.chunks, "queries": args.queries,
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
              "results": {name: _percentiles(samples) for name, samples in timings.items()}}
    write_results(args.out, report)
    for name, figures in report["results"].items():
        print(f"{name:<18} p50 {figures['p50_ms']:>7.2f} ms   p99 {figures['p99_ms']:>7.2f} ms   "
              f"{figures['qps']:>7.1f} q/s")
    print(f"report: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

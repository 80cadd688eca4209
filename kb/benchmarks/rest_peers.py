"""REST search side by side: a ``kb serve`` process and a ``chroma run`` server, same corpus, same clients.

Each server runs in its own process on loopback; the clients are threads of this process with one
keep-alive httpx connection each, sending a query vector and asking for 10 hits with text and
metadata. Every client count runs for a fixed time; latencies and completed queries are counted.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from kb.benchmarks.corpus import Corpus


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer 200 within {seconds:.0f}s")


@contextmanager
def kb_server(home: Path, workers: int = 1) -> Iterator[tuple[str, str]]:
    """(search URL, base URL) of a ``kb serve --workers N`` on the KB in ``home`` (made by the kb-flat peer)."""
    port = free_port()
    env = {**os.environ, "KB_HOME": str(home), "KB_AUTH": "off", "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen([sys.executable, "-m", "api.cli", "serve", "--port", str(port), "--workers",
                                str(workers), "--log-level", "warning"], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base + "/readyz")
        kb_id = httpx.get(base + "/v1/projects/DEFAULT/knowledge-banks").json()[0]["id"]
        yield f"{base}/v1/projects/DEFAULT/knowledge-banks/{kb_id}/search", base
    finally:
        process.terminate()
        process.wait(60)


@contextmanager
def chroma_server(corpus: Corpus, folder: Path) -> Iterator[str]:
    """Query URL of a ``chroma run`` server holding the corpus in one cosine collection."""
    import chromadb

    shutil.rmtree(folder, ignore_errors=True)
    port = free_port()
    process = subprocess.Popen([str(Path(sys.executable).parent / "chroma"), "run", "--path", str(folder), "--port",
                                str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "ANONYMIZED_TELEMETRY": "False"})
    try:
        wait_ready(f"http://127.0.0.1:{port}/api/v2/heartbeat")
        client = chromadb.HttpClient(host="127.0.0.1", port=port)
        collection = client.create_collection("bench", metadata={"hnsw:space": "cosine"})
        texts, metadatas, ids = corpus.texts, corpus.metadatas(), corpus.ids
        for start in range(0, corpus.size, 5000):
            end = min(corpus.size, start + 5000)
            collection.add(ids=ids[start:end], documents=texts[start:end], metadatas=metadatas[start:end],
                           embeddings=np.asarray(corpus.vectors[start:end]))
        yield (f"http://127.0.0.1:{port}/api/v2/tenants/default_tenant/databases/default_database/collections/"
               f"{collection.id}/query")
    finally:
        process.terminate()
        process.wait(60)


def kb_body(vector: np.ndarray) -> dict[str, Any]:
    return {"vector": vector.tolist(), "k": 10}


def chroma_body(vector: np.ndarray) -> dict[str, Any]:
    return {"query_embeddings": [vector.tolist()], "n_results": 10, "include": ["documents", "metadatas", "distances"]}


def load_test(url: str, body: Callable[[np.ndarray], dict[str, Any]], queries: np.ndarray, clients: int,
              seconds: float) -> dict[str, float]:
    """``clients`` threads send queries back to back for ``seconds``; every answer must be 200."""
    bodies = [body(q) for q in queries]
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[str] = []
    stop = time.monotonic() + seconds

    def client(slot: int) -> None:
        with httpx.Client(timeout=60) as http:
            for i in range(5):  # warm the connection and the server's caches
                http.post(url, json=bodies[(slot + i) % len(bodies)])
            i = slot
            while time.monotonic() < stop:
                started = time.perf_counter()
                response = http.post(url, json=bodies[i % len(bodies)])
                latencies[slot].append(time.perf_counter() - started)
                if response.status_code != 200:
                    errors.append(f"{response.status_code}: {response.text[:200]}")
                    return
                i += clients

    threads = [threading.Thread(target=client, args=(slot,)) for slot in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"{url}: {errors[0]}")
    ms = np.concatenate([np.asarray(x) for x in latencies]) * 1000
    return {"clients": clients, "qps": float(ms.size / elapsed), "p50_ms": float(np.percentile(ms, 50)),
            "p95_ms": float(np.percentile(ms, 95)), "p99_ms": float(np.percentile(ms, 99)), "queries": int(ms.size)}

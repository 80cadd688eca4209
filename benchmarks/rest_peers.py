"""REST search side by side: a ``kb serve`` process and a ``chroma run`` server, same corpus, same clients.

Each server runs in its own process on loopback; the clients are asyncio connections of this process
(one keep-alive HTTP/1.1 connection each, pre-encoded requests), sending a query vector and asking for
10 hits with text and metadata. Every client count runs for a fixed time; latencies and completed
queries are counted.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np

from benchmarks.corpus import Corpus


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
    """(search URL, base URL) of a ``kb serve --workers N`` on the KB in ``home`` (made by a kb peer)."""
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


def kb_ids(answer: dict[str, Any]) -> list[str]:
    return [hit["id"] for hit in answer["results"]]


def chroma_ids(answer: dict[str, Any]) -> list[str]:
    return list(answer["ids"][0])


def recall_over_rest(url: str, body: Callable[[np.ndarray], dict[str, Any]],
                     ids: Callable[[dict[str, Any]], list[str]], queries: np.ndarray, exact: np.ndarray) -> float:
    """Recall@10 of what the server answers (every query once), against exact search."""
    found = []
    with httpx.Client(timeout=60) as http:
        for query, row in zip(queries, exact, strict=True):
            response = http.post(url, json=body(query))
            response.raise_for_status()
            found.append(len(set(ids(response.json())) & {f"chunk-{i}" for i in row}) / exact.shape[1])
    return float(np.mean(found))


def kb_body(vector: np.ndarray) -> dict[str, Any]:
    return {"vector": vector.tolist(), "k": 10}


def chroma_body(vector: np.ndarray) -> dict[str, Any]:
    return {"query_embeddings": [vector.tolist()], "n_results": 10, "include": ["documents", "metadatas", "distances"]}


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One HTTP/1.1 response: status and body (Content-Length or chunked)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    if "content-length" in headers:
        return status, await reader.readexactly(int(headers["content-length"]))
    body = b""
    while True:  # chunked
        size = int((await reader.readuntil(b"\r\n")).strip(), 16)
        chunk = await reader.readexactly(size + 2)
        if size == 0:
            return status, body
        body += chunk[:-2]


async def _load(url: str, bodies: list[bytes], clients: int, seconds: float) -> tuple[list[float], float, list[str]]:
    parsed = urlsplit(url)
    requests = [(f"POST {parsed.path} HTTP/1.1\r\nHost: {parsed.netloc}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(b)}\r\n\r\n").encode() + b for b in bodies]
    latencies: list[float] = []
    errors: list[str] = []

    async def client(slot: int, stop: float) -> None:
        reader, writer = await asyncio.open_connection(parsed.hostname, parsed.port)
        try:
            for i in range(3):  # warm the connection and the server's caches
                writer.write(requests[(slot + i) % len(requests)])
                await _read_response(reader)
            i = slot
            while time.monotonic() < stop and not errors:
                started = time.perf_counter()
                writer.write(requests[i % len(requests)])
                status, body = await _read_response(reader)
                latencies.append(time.perf_counter() - started)
                if status != 200:
                    errors.append(f"{status}: {body[:200]!r}")
                i += clients
        finally:
            writer.close()

    started = time.perf_counter()
    stop = time.monotonic() + seconds
    await asyncio.gather(*(client(slot, stop) for slot in range(clients)))
    return latencies, time.perf_counter() - started, errors


def load_test(url: str, body: Callable[[np.ndarray], dict[str, Any]], queries: np.ndarray, clients: int,
              seconds: float) -> dict[str, float]:
    """``clients`` keep-alive connections send queries back to back for ``seconds``; every answer must be 200.

    The clients are asyncio streams in this process sending pre-encoded requests (about 50 us of client
    work a request), so the figures are the server's, not a Python HTTP client's; both servers get the
    same client.
    """
    bodies = [json.dumps(body(q)).encode() for q in queries]
    latencies, elapsed, errors = asyncio.run(_load(url, bodies, clients, seconds))
    if errors:
        raise RuntimeError(f"{url}: {errors[0]}")
    ms = np.asarray(latencies) * 1000
    return {"clients": clients, "qps": float(ms.size / elapsed), "p50_ms": float(np.percentile(ms, 50)),
            "p95_ms": float(np.percentile(ms, 95)), "p99_ms": float(np.percentile(ms, 99)), "queries": int(ms.size)}

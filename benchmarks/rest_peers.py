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
from dataclasses import asdict, dataclass
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


def log_tail(log: Path, lines: int = 40) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(no log: {exc})"


@contextmanager
def logged_server(command: list[str], env: dict[str, str], log: Path, name: str) -> Iterator[subprocess.Popen]:
    """A server process writing its stdout and stderr to ``log`` (appended); when the body fails, the log's last
    lines are printed to stderr, since what the server said is often the reason."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        out.write(f"==== {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(command)}\n".encode())
        out.flush()
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield process
    except BaseException:
        print(f"\n{name} failed; the last lines of its log {log}:\n{log_tail(log)}\n", file=sys.stderr, flush=True)
        raise
    finally:
        process.terminate()
        process.wait(60)


@contextmanager
def kb_server(home: Path, workers: int = 1, log: Path | None = None) -> Iterator[tuple[str, str]]:
    """(search URL, base URL) of a ``kb serve --workers N`` on the KB in ``home`` (made by a kb peer); its output
    goes to ``log`` (default: ``kb-serve.log`` beside ``home``)."""
    port = free_port()
    env = {**os.environ, "KB_HOME": str(home), "KB_AUTH": "off", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "api.cli", "serve", "--port", str(port), "--workers", str(workers),
               "--log-level", "warning"]
    with logged_server(command, env, log or home.parent / "kb-serve.log", "kb serve"):
        base = f"http://127.0.0.1:{port}"
        wait_ready(base + "/readyz")
        kb_id = httpx.get(base + "/v1/projects/DEFAULT/knowledge-banks").json()[0]["id"]
        yield f"{base}/v1/projects/DEFAULT/knowledge-banks/{kb_id}/search", base


@contextmanager
def chroma_server(corpus: Corpus, folder: Path, log: Path | None = None) -> Iterator[str]:
    """Query URL of a ``chroma run`` server holding the corpus in one cosine collection; its output goes to ``log``."""
    import chromadb

    shutil.rmtree(folder, ignore_errors=True)
    port = free_port()
    command = [str(Path(sys.executable).parent / "chroma"), "run", "--path", str(folder), "--port", str(port)]
    with logged_server(command, {**os.environ, "ANONYMIZED_TELEMETRY": "False"},
                       log or folder.parent / "chroma-server.log", "chroma run"):
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


IDLE_CLOSE_SECONDS = 1.0  # a close after this long idle may be the server's keep-alive timeout (uvicorn: 5 s)


@dataclass
class Connections:
    """How the clients' keep-alive connections ended, when not by the client.

    ``graceful``: the server's answer said ``Connection: close`` (a shutdown, a recycled worker); the client
    reconnects. ``idle``: the server closed a connection that sat idle (seen before a request was sent, or no
    answer after ``IDLE_CLOSE_SECONDS`` idle): its keep-alive timeout, normal HTTP, the request goes again on a
    new connection. ``dropped``: closed or reset with a request outstanding on a connection in use: a server
    fault (a worker died, or a server stalled past its own keep-alive timeout), counted and never retried.
    """

    opened: int = 0
    graceful: int = 0
    idle: int = 0
    dropped: int = 0
    first_drop: str = ""


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response: status, headers (lower-case names) and body (Content-Length or chunked)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    if "content-length" in headers:
        return status, headers, await reader.readexactly(int(headers["content-length"]))
    body = b""
    while True:  # chunked
        size = int((await reader.readuntil(b"\r\n")).strip(), 16)
        chunk = await reader.readexactly(size + 2)
        if size == 0:
            return status, headers, body
        body += chunk[:-2]


async def _load(url: str, bodies: list[bytes], clients: int, seconds: float, headers: dict[str, str] | None = None,
                pause: float = 0.0) -> tuple[list[float], float, list[str], Connections]:
    parsed = urlsplit(url)
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    requests = [(f"POST {parsed.path} HTTP/1.1\r\nHost: {parsed.netloc}\r\nContent-Type: application/json\r\n"
                 f"{extra}Content-Length: {len(b)}\r\n\r\n").encode() + b for b in bodies]
    latencies: list[float] = []
    errors: list[str] = []
    counts = Connections()

    async def client(slot: int, stop: float) -> None:
        connection: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        last_used = time.monotonic()
        warm, i = 3, slot  # the first requests warm the connection and the server's caches, untimed
        try:
            while time.monotonic() < stop and (warm or not errors):
                if connection is None:
                    connection = await asyncio.open_connection(parsed.hostname, parsed.port)
                    counts.opened += 1
                    last_used = time.monotonic()
                reader, writer = connection
                await asyncio.sleep(0)  # yields, so that a close the server sent is seen before the next request
                idle = time.monotonic() - last_used
                if reader.at_eof():  # closed while idle, before this request: reconnect and send it
                    counts.idle += 1
                    writer.close()
                    connection = None
                    continue
                started = time.perf_counter()
                writer.write(requests[(slot + warm) % len(requests) if warm else i % len(requests)])
                try:
                    status, response_headers, body = await _read_response(reader)
                except (asyncio.IncompleteReadError, ConnectionError) as exc:
                    answered = isinstance(exc, asyncio.IncompleteReadError) and exc.partial
                    if not answered and idle >= IDLE_CLOSE_SECONDS:
                        counts.idle += 1  # the server's keep-alive timeout crossed this request: send it again
                    else:
                        counts.dropped += 1
                        counts.first_drop = counts.first_drop or (
                            f"{time.strftime('%H:%M:%S')}: {exc!r} after {idle * 1000:.0f} ms idle, "
                            f"{len(latencies)} answers into the run")
                        warm, i = (warm - 1, i) if warm else (warm, i + clients)
                    writer.close()
                    connection = None
                    continue
                last_used = time.monotonic()
                if warm:
                    warm -= 1
                else:
                    latencies.append(time.perf_counter() - started)
                    if status != 200:
                        errors.append(f"{status}: {body[:200]!r}")
                    i += clients
                if response_headers.get("connection", "").lower() == "close":
                    counts.graceful += 1
                    writer.close()
                    connection = None
                if pause:
                    await asyncio.sleep(pause)
        finally:
            if connection is not None:
                connection[1].close()

    started = time.perf_counter()
    stop = time.monotonic() + seconds
    await asyncio.gather(*(client(slot, stop) for slot in range(clients)))
    return latencies, time.perf_counter() - started, errors, counts


def load_test(url: str, body: Callable[[np.ndarray], dict[str, Any]], queries: np.ndarray, clients: int,
              seconds: float, headers: dict[str, str] | None = None, pause: float = 0.0) -> dict[str, Any]:
    """``clients`` keep-alive connections send queries back to back for ``seconds``; every answer must be 200
    and no connection may be dropped with a request outstanding (``Connections``); both raise RuntimeError.

    The clients are asyncio streams in this process sending pre-encoded requests (about 50 us of client
    work a request), so the figures are the server's, not a Python HTTP client's; both servers get the
    same client. ``pause``: seconds each client waits between requests (0: back to back).
    """
    bodies = [json.dumps(body(q)).encode() for q in queries]
    latencies, elapsed, errors, connections = asyncio.run(_load(url, bodies, clients, seconds, headers, pause))
    if errors:
        raise RuntimeError(f"{url}: {errors[0]}")
    if connections.dropped:
        raise RuntimeError(f"{url}: the server closed {connections.dropped} connection(s) with a request outstanding "
                           f"({clients} clients; first: {connections.first_drop}); {asdict(connections)}")
    if not latencies:
        raise RuntimeError(f"{url}: no answer in {seconds:.0f} s with {clients} clients; {asdict(connections)}")
    ms = np.asarray(latencies) * 1000
    return {"clients": clients, "qps": float(ms.size / elapsed), "p50_ms": float(np.percentile(ms, 50)),
            "p95_ms": float(np.percentile(ms, 95)), "p99_ms": float(np.percentile(ms, 99)), "queries": int(ms.size),
            "connections": asdict(connections)}

"""Bounded load test of the REST service: concurrent search and ingestion clients on loopback.

    python -m benchmarks.load --url http://127.0.0.1:8080 --api-key kb_... --kb ID [--clients 8] [--seconds 20]
    python -m benchmarks.load --spawn [--clients 8] [--seconds 20]      # starts its own kb serve (auth off)

Every client loops for a fixed duration and stops by itself; one client in four writes small
batches, the others search (text and vector). Only loopback addresses are accepted. Prints
requests, errors, p50/p99 and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import numpy as np

from benchmarks.results import write_results

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def run_load(url: str, api_key: str | None, kb_id: str, project: str = "DEFAULT", clients: int = 8,
             seconds: float = 20.0, dim: int = 384) -> dict[str, Any]:
    host = urlparse(url).hostname or ""
    if host not in LOOPBACK and not host.startswith("127."):
        raise SystemExit(f"refusing to load {host}: the load test only targets loopback addresses")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    base = f"{url}/v1/projects/{project}/knowledge-banks/{kb_id}"
    deadline = time.monotonic() + seconds
    latencies: dict[str, list[float]] = {"search": [], "write": []}
    errors: list[str] = []
    closed: list[str] = []
    lock = threading.Lock()

    def client(number: int) -> None:
        rng = np.random.default_rng(number)
        writer = number % 4 == 3
        with httpx.Client(timeout=60, headers=headers) as http:

            def post(url: str, body: dict[str, Any]) -> httpx.Response | None:
                try:
                    return http.post(url, json=body)
                except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
                    with lock:  # closed or reset with the request outstanding (httpx drops idle-closed ones itself)
                        closed.append(repr(exc))
                        errors.append(f"connection closed: {exc!r}")
                    return None

            sent = 0
            while time.monotonic() < deadline:
                if writer:
                    docs = [{"id": f"load-{number}-{sent + i}", "text": f"load document {number} {sent + i}",
                             "vector": rng.normal(size=dim).tolist(), "metadata": {"client": number}}
                            for i in range(20)]
                    kind, started = "write", time.perf_counter()
                    response = post(f"{base}/documents", {"documents": docs})
                    sent += 20
                else:
                    body: dict[str, Any] = ({"vector": rng.normal(size=dim).tolist(), "k": 10} if sent % 2 else
                                            {"query": f"question {sent % 50}", "k": 10})
                    kind, started = "search", time.perf_counter()
                    response = post(f"{base}/search", body)
                    sent += 1
                elapsed = time.perf_counter() - started
                with lock:
                    if response is None:
                        continue
                    latencies[kind].append(elapsed)
                    if response.status_code >= 400:
                        errors.append(f"{response.status_code} {response.text[:200]}")

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    figures: dict[str, Any] = {"clients": clients, "seconds": seconds, "errors": len(errors),
                               "closed_connections": len(closed), "first_errors": errors[:5]}
    for kind, samples in latencies.items():
        if samples:
            ms = np.array(samples) * 1000
            figures[kind] = {"requests": len(samples), "p50_ms": round(float(np.percentile(ms, 50)), 2),
                             "p99_ms": round(float(np.percentile(ms, 99)), 2),
                             "per_second": round(len(samples) / seconds, 1)}
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url")
    parser.add_argument("--api-key")
    parser.add_argument("--kb")
    parser.add_argument("--spawn", action="store_true", help="start a kb service on a temp KB_HOME (auth off)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--out", type=Path, default=Path("bench-results/load.json"))
    args = parser.parse_args(argv)
    server, log_path = None, None
    try:
        if args.spawn:
            port = 18500 + os.getpid() % 500
            home = tempfile.mkdtemp()
            log_path = args.out.with_name(args.out.stem + "-serve.log")
            log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(log_path, "ab") as log:  # kb serve's output, kept beside the JSON
                server = subprocess.Popen([sys.executable, "-m", "api.cli", "serve", "--port", str(port),
                                           "--log-level", "warning"], stdout=log, stderr=subprocess.STDOUT,
                                          env={**os.environ, "KB_HOME": home, "KB_AUTH": "off"})
            args.url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 180  # /readyz answers 200 once the local model is loaded
            while time.monotonic() < deadline:
                try:
                    if httpx.get(f"{args.url}/readyz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
            args.kb = httpx.post(f"{args.url}/v1/projects/DEFAULT/knowledge-banks", json={"name": "load"}).json()["id"]
        figures = run_load(args.url, args.api_key, args.kb, clients=args.clients, seconds=args.seconds)
    finally:
        if server is not None:
            server.terminate()
            server.wait(30)
    write_results(args.out, figures)
    print(json.dumps(figures, indent=2))
    if figures["errors"] and log_path is not None:
        print(f"the last lines of kb serve's log {log_path}:\n"
              + "\n".join(log_path.read_text(errors="replace").splitlines()[-40:]))
    return 0 if figures["errors"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())

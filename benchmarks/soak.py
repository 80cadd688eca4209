"""Soak test: a ``kb serve`` under a mixed, bounded load on loopback, watched through its ``/metrics``.

    python -m benchmarks.soak --minutes 10 [--workers 2] [--clients 4] [--rate 30] [--out soak.json]
    python -m benchmarks.soak --seconds 30 --interval 10     # the short version ``make test`` runs

It starts its own ``kb serve`` (auth on, the local model, a temporary ``$KB_HOME``), ingests a seed
corpus over REST, then for the whole duration runs ``--clients`` threads sharing a rate limit of
``--rate`` requests per second: searches of every type (similarity by text and by vector, a score
threshold, mmr, keyword, hybrid, filtered), small upserts and deletes, counts; a settings change every
``--settings-every`` seconds and an ingestion every ``--ingest-every`` seconds. Every answer must be a
2xx: anything else is an error (target 0).

Every ``--interval`` seconds (a minute by default) it scrapes ``/metrics`` and records the requests,
errors, p50/p99 latency (interpolated within the histogram buckets of ``kb_http_request_duration_seconds``)
and the resident memory of all service processes (``kb_process_resident_memory_bytes``), beside the
client's own exact p50/p99. RSS growth after the first interval (the warm-up) is checked against
``--rss-bound-mb``. Prints a table, writes JSON, exits 1 on an error or a breached bound. Connections the
server closed with a request outstanding are errors, and counted apart (``closed_connections``); kb serve's
output is kept beside the JSON (``soak-serve.log``) and its last lines printed when the run has errors.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.results import write_results

WORDS = ("alpha beta gamma delta river mountain forest ocean quantum protein enzyme galaxy market energy "
         "solar wind battery neuron memory language graph vector search index query answer cloud rain "
         "storm desert island harbour engine signal").split()
# (operation, weight): searches of every type dominate, as they do in service
OPERATIONS = (("similarity", 20), ("vector", 10), ("threshold", 5), ("mmr", 8), ("keyword", 12), ("hybrid", 12),
              ("filtered", 8), ("count", 5), ("upsert", 6), ("delete", 3), ("get", 5))


def _text(rng: random.Random, words: int = 24) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Service:
    """``kb serve`` in a process group of its own, on a temporary home."""

    def __init__(self, workers: int, home: Path, log: Path) -> None:
        self.home, self.port, self.log_path = home, _free_port(), log
        self.url = f"http://127.0.0.1:{self.port}"
        self.key = f"kb_soak_{secrets.token_hex(16)}"
        env = {**os.environ, "KB_HOME": str(home), "KB_AUTH": "on", "KB_BOOTSTRAP_ADMIN_KEY": self.key,
               "HF_HUB_OFFLINE": "1"}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        log.parent.mkdir(parents=True, exist_ok=True)
        self.log = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.log.write(f"==== {time.strftime('%Y-%m-%dT%H:%M:%S')} kb serve --workers {workers}\n".encode())
        self.log.flush()
        self.process = subprocess.Popen([sys.executable, "-m", "api.cli", "serve", "--port", str(self.port),
                                         "--workers", str(workers), "--log-level", "warning"],
                                        env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout  # /readyz answers 200 once the local model is loaded
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"kb serve exited; see {self.log_path}:\n{self.tail()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        raise SystemExit("kb serve did not become ready")

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(40)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, 9)
            self.process.wait()
        self.log.close()


def _quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """Prometheus' histogram_quantile: linear interpolation inside the bucket that holds the quantile."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank, previous_bound, previous_count = q * buckets[-1][1], 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return previous_bound
            share = (rank - previous_count) / (count - previous_count) if count > previous_count else 0.0
            return previous_bound + (bound - previous_bound) * share
        previous_bound, previous_count = bound, count
    return previous_bound


def scrape(url: str, key: str) -> dict[str, Any]:
    """Totals from /metrics: requests by status class, latency buckets (summed over routes), RSS."""
    text = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {key}"}, timeout=30).text
    buckets: dict[float, float] = {}
    requests = errors = 0.0
    rss = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "kb_http_request_duration_seconds_bucket" and sample.labels["route"] != "/metrics":
                bound = float(sample.labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + sample.value
            elif sample.name == "kb_http_requests_total" and sample.labels["route"] != "/metrics":
                requests += sample.value
                errors += sample.value if not sample.labels["status"].startswith("2") else 0.0
            elif sample.name == "kb_process_resident_memory_bytes":
                rss += sample.value
    return {"buckets": sorted(buckets.items()), "requests": requests, "errors": errors, "rss": rss}


class Load:
    def __init__(self, service: Service, kb_path: str, rate: float, seed: int) -> None:
        self.service, self.base = service, f"{service.url}{kb_path}"
        self.headers = {"Authorization": f"Bearer {service.key}"}
        self.interval = 1.0 / rate
        self.next_slot = time.monotonic()
        self.lock = threading.Lock()
        self.samples: list[tuple[float, str, float, int]] = []  # (time, operation, seconds, status)
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.seed = seed
        self.written = 0
        self.closed_connections = 0

    def _slot(self) -> None:
        with self.lock:  # a shared token bucket: the load is bounded whatever the latency
            slot = self.next_slot = max(self.next_slot + self.interval, time.monotonic())
        time.sleep(max(0.0, slot - time.monotonic()))

    def record(self, operation: str, started: float, response: httpx.Response | None, error: str = "") -> None:
        status = response.status_code if response is not None else 0
        with self.lock:
            self.samples.append((time.monotonic(), operation, time.perf_counter() - started, status))
            if not 200 <= status < 300:
                self.failures.append(f"{operation}: {status} {error or (response.text[:200] if response else '')}")

    def request(self, http: httpx.Client, operation: str, method: str, path: str, **kwargs: Any) -> None:
        started = time.perf_counter()
        try:
            response = http.request(method, f"{self.base}{path}", **kwargs)
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
            # the server closed or reset the connection with this request outstanding (httpx itself drops a
            # pooled connection it sees closed while idle, before sending): an error, counted apart too
            with self.lock:
                self.closed_connections += 1
            self.record(operation, started, None, f"connection closed: {exc!r}")
            return
        except httpx.HTTPError as exc:
            self.record(operation, started, None, repr(exc))
            return
        self.record(operation, started, response)

    def client(self, number: int) -> None:
        rng = random.Random(self.seed * 100 + number)
        names, weights = zip(*OPERATIONS, strict=True)
        queries = [_text(rng, 4) for _ in range(40)]  # repeated texts: the query cache is part of the service
        with httpx.Client(headers=self.headers, timeout=60) as http:
            while not self.stop.is_set():
                self._slot()
                operation = rng.choices(names, weights)[0]
                query = rng.choice(queries)
                if operation in ("similarity", "mmr", "keyword", "hybrid", "threshold", "filtered"):
                    body: dict[str, Any] = {"query": query, "k": 5, "search_type": {
                        "threshold": "similarity_score_threshold", "filtered": "similarity"}.get(operation, operation)}
                    if operation == "threshold":
                        body["score_threshold"] = 0.1
                    if operation == "filtered":
                        body["filter"] = {"group": {"$in": [rng.randrange(10), rng.randrange(10)]}}
                    self.request(http, operation, "POST", "/search", json=body)
                elif operation == "vector":
                    vector = np.random.default_rng(rng.randrange(1 << 30)).normal(size=384).tolist()
                    self.request(http, operation, "POST", "/search", json={"vector": vector, "k": 5})
                elif operation == "count":
                    self.request(http, operation, "GET", "/count", params={"filter": json.dumps({"group": 3})})
                elif operation == "get":
                    self.request(http, operation, "POST", "/documents/get",
                                 json={"ids": [f"seed-{rng.randrange(300)}#0" for _ in range(5)]})
                elif operation == "upsert":
                    picked = rng.sample(range(200), 3)  # distinct: the same id twice in one write is refused
                    docs = [{"id": f"w{number}-{i}", "text": _text(rng),
                             "metadata": {"group": rng.randrange(10), "source": "soak"}} for i in picked]
                    self.request(http, operation, "POST", "/documents", json={"documents": docs})
                else:
                    self.request(http, operation, "POST", "/documents/delete",
                                 json={"ids": [f"w{number}-{rng.randrange(200)}"]})

    def settings_changer(self, every: float) -> None:
        with httpx.Client(headers=self.headers, timeout=60) as http:
            flip = 0
            while not self.stop.wait(every):
                started = time.perf_counter()
                settings = http.get(f"{self.base}/settings").json()
                flip += 1
                settings["search"] = {**(settings.get("search") or {}),
                                      "fusion": {"method": "rrf", "rank_constant": 60 if flip % 2 else 20}}
                self.record("settings", started, http.put(f"{self.base}/settings", json=settings))

    def ingester(self, every: float) -> None:
        rng = random.Random(self.seed)
        with httpx.Client(headers=self.headers, timeout=300) as http:
            batch = 0
            while not self.stop.wait(every):
                batch += 1
                rows = "\n".join(json.dumps({"id": f"ingest-{batch}-{i}", "text": _text(rng, 60),
                                             "group": rng.randrange(10)}) for i in range(40))
                started = time.perf_counter()
                response = http.post(f"{self.base}/ingest", content=rows.encode(),
                                     params={"format": "jsonl", "id_column": "id", "chunk_size": 0})
                self.record("ingest", started, response)


def _seed(service: Service, rng: random.Random) -> str:
    headers = {"Authorization": f"Bearer {service.key}"}
    created = httpx.post(f"{service.url}/v1/projects/DEFAULT/knowledge-banks", headers=headers, timeout=60,
                         json={"name": "soak", "settings": {"metadata_schema": {"group": "int", "source": "string"}}})
    created.raise_for_status()
    path = f"/v1/projects/DEFAULT/knowledge-banks/{created.json()['id']}"
    rows = "\n".join(json.dumps({"id": f"seed-{i}", "text": _text(rng, 60), "group": i % 10, "source": "seed"})
                     for i in range(300))
    response = httpx.post(f"{service.url}{path}/ingest", headers=headers, content=rows.encode(), timeout=600,
                          params={"format": "jsonl", "id_column": "id", "chunk_size": 0})
    response.raise_for_status()
    return path


def _interval_row(index: int, load: Load, since: float, until: float, before: dict, after: dict) -> dict[str, Any]:
    with load.lock:
        window = [s for s in load.samples if since <= s[0] < until]
    client_ms = np.array([s[2] for s in window]) * 1000 if window else np.array([0.0])
    delta = [(bound, count - dict(before["buckets"]).get(bound, 0.0)) for bound, count in after["buckets"]]
    p50, p99 = _quantile(delta, 0.50), _quantile(delta, 0.99)
    return {"interval": index, "requests": int(after["requests"] - before["requests"]),
            "errors": int(after["errors"] - before["errors"]),
            "client_errors": sum(1 for s in window if not 200 <= s[3] < 300),
            "p50_ms": None if p50 is None else round(p50 * 1000, 2),
            "p99_ms": None if p99 is None else round(p99 * 1000, 2),
            "client_p50_ms": round(float(np.percentile(client_ms, 50)), 2),
            "client_p99_ms": round(float(np.percentile(client_ms, 99)), 2),
            "rss_mb": round(after["rss"] / 2**20, 1)}


def run(seconds: float, interval: float, workers: int, clients: int, rate: float, settings_every: float,
        ingest_every: float, rss_bound_mb: float, seed: int, log: Path) -> dict[str, Any]:
    """The soak; ``kb serve``'s output goes to ``log`` (kept: the home is deleted at the end)."""
    home = Path(tempfile.mkdtemp(prefix="kb-soak-"))
    service = Service(workers, home, log)
    try:
        service.wait_ready()
        kb_path = _seed(service, random.Random(seed))
        load = Load(service, kb_path, rate, seed)
        threads = [threading.Thread(target=load.client, args=(n,), daemon=True) for n in range(clients)]
        threads += [threading.Thread(target=load.settings_changer, args=(settings_every,), daemon=True),
                    threading.Thread(target=load.ingester, args=(ingest_every,), daemon=True)]
        previous, rows = scrape(service.url, service.key), []
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for index in range(1, max(1, round(seconds / interval)) + 1):
            window_start = time.monotonic()
            time.sleep(max(0.0, started + index * interval - time.monotonic()))
            current = scrape(service.url, service.key)
            rows.append(_interval_row(index, load, window_start, time.monotonic(), previous, current))
            print(json.dumps(rows[-1]), flush=True)
            previous = current
        load.stop.set()
        for thread in threads:
            thread.join(120)
    finally:
        service.stop()
        shutil.rmtree(home, ignore_errors=True)
    operations: dict[str, int] = {}
    for _, operation, _, _ in load.samples:
        operations[operation] = operations.get(operation, 0) + 1
    warm = [r["rss_mb"] for r in rows[1:]] or [rows[0]["rss_mb"]]
    growth = round(max(warm) - warm[0], 1)
    return {"measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "seconds": seconds, "interval_s": interval,
            "workers": workers, "clients": clients, "rate_per_s": rate,
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
            "operations": operations, "requests": len(load.samples), "errors": len(load.failures),
            "closed_connections": load.closed_connections, "server_log": str(log),
            "first_errors": load.failures[:10], "intervals": rows,
            "rss_growth_after_warmup_mb": growth, "rss_bound_mb": rss_bound_mb,
            "rss_within_bound": growth <= rss_bound_mb}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--minutes", type=float)
    length.add_argument("--seconds", type=float)
    parser.add_argument("--interval", type=float, default=60.0, help="seconds between /metrics readings")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rate", type=float, default=30.0, help="requests per second, all clients together")
    parser.add_argument("--settings-every", type=float, default=20.0)
    parser.add_argument("--ingest-every", type=float, default=60.0)
    parser.add_argument("--rss-bound-mb", type=float, default=100.0, help="allowed RSS growth after warm-up")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path("bench-results/soak.json"))
    args = parser.parse_args(argv)
    # SIGTERM ends the run through the finally that stops kb serve (background jobs ignore SIGINT)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    seconds = args.seconds if args.seconds is not None else (args.minutes or 10.0) * 60
    interval = min(args.interval, seconds)
    log = args.out.with_name(args.out.stem + "-serve.log")
    figures = run(seconds, interval, args.workers, args.clients, args.rate, args.settings_every,
                  min(args.ingest_every, seconds / 2), args.rss_bound_mb, args.seed, log)
    write_results(args.out, figures)
    print(f"\n{figures['requests']} requests, {figures['errors']} errors ({figures['closed_connections']} connections "
          f"closed by the server with a request outstanding); operations {figures['operations']}")
    print("interval  requests  errors  p50 ms  p99 ms  client p50  client p99  RSS MB")
    for row in figures["intervals"]:
        print(f"{row['interval']:>8}  {row['requests']:>8}  {row['errors']:>6}  {row['p50_ms']!s:>6}  "
              f"{row['p99_ms']!s:>6}  {row['client_p50_ms']:>10}  {row['client_p99_ms']:>10}  {row['rss_mb']:>6}")
    print(f"RSS growth after warm-up: {figures['rss_growth_after_warmup_mb']} MB (bound {args.rss_bound_mb} MB); "
          f"JSON in {args.out}")
    if figures["errors"]:
        print(f"first errors: {figures['first_errors'][:3]}\nthe last lines of kb serve's log {log}:\n"
              + "\n".join(log.read_text(errors="replace").splitlines()[-40:]))
    return 0 if figures["errors"] == 0 and figures["rss_within_bound"] else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""Scale out (issue 28): searches of one Elasticsearch knowledge bank through one and two ``kb serve`` servers,
with the catalog on PostgreSQL beside the same on SQLite.

    python -m benchmarks.scale_out [--documents 2000] [--queries 400] [--seconds 10] [--clients 8]
                                   [--out bench-results/scale_out.json]

Run from a checkout: it starts its own Elasticsearch node, PostgreSQL cluster, OpenAI-compatible stub model
and ``kb serve`` processes with the launchers of ``tests/support`` (one uvicorn worker each), writes
``--documents`` documents with 16-dimensional vectors, then searches by vector (no embedding on the search
path: what is measured is kb, its catalog and its commit point, and Elasticsearch).

Two set-ups run side by side, each over its own knowledge bank with the same documents: ``sqlite`` (one
server; the catalog and the commit point in its ``$KB_HOME``) and ``postgres`` (two servers A and B with
``KB_DATABASE_URL``: both in PostgreSQL). Latency: one client in sequence, its searches alternating between
the SQLite server and A, so that both meet the same moment's load (a busy machine's noise is larger than
what is measured); p50/p99 of each and the p50 of the paired differences. Throughput: searches per second
from ``--clients`` concurrent clients for ``--seconds`` against the SQLite server, against A alone, and
against A and B (clients split), in ``--rounds`` rounds; the median of the rounds.

Also, in this process, what the commit point costs a reader (``DatabaseLedger.committed``): the cache hit
every search takes, against one database read (what every search paid before the per-server cache).

Targets (issue 28): PostgreSQL adds < 0.2 ms p50 to a search over SQLite; two servers >= 1.6x the requests
per second of one *when the store is not the bottleneck*. On a small machine everything (Elasticsearch, the
servers, PostgreSQL, the clients) shares the same cores: the load average and core count are printed with the
figures, and the ratio says what this machine can show, not what N machines would.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.results import write_results
from benchmarks.suite import machine

DIM = 16  # the stub model's dimension (tests/support/openai_embeddings_server.py)


def _percentiles(samples: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in samples)
    return {"p50_ms": round(statistics.median(ms), 3), "p99_ms": round(ms[min(len(ms) - 1, int(len(ms) * 0.99))], 3),
            "mean_ms": round(statistics.fmean(ms), 3)}


def _vectors(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(count, DIM)).astype(np.float32)


class Setup:
    """Servers over one knowledge bank: ``database_url`` None means each server's own SQLite catalog."""

    def __init__(self, name: str, work: Path, servers: int, database_url: str | None, parts: dict[str, Any]) -> None:
        self.name, self.work, self.count, self.database_url, self.parts = name, work, servers, database_url, parts
        self.servers: list[Any] = []
        self.kb_url = ""

    def start(self, documents: int) -> Setup:
        from kb.catalog import Catalog
        from tests.support.kb_serve import STUB_MODEL, KBServe
        from tests.support.openai_embeddings_server import API_KEY

        es, embeddings = self.parts["es"], self.parts["embeddings"]
        env = {"KB_DATABASE_URL": self.database_url} if self.database_url else {}
        home = self.work / f"{self.name}-home-0"
        catalog = Catalog(self.database_url or home / "catalog.sqlite")
        for name, kind, params in (("stub", "openai-compatible", {"base_url": embeddings.url, "api_key": API_KEY,
                                                                   "models": ["text-embedding-3-small"]}),
                                   ("es", "elasticsearch", {"url": es.url, "index_prefix": f"{self.name}-"})):
            catalog.save_connection(name, kind, params, replace=True)
        catalog.close()
        for number in range(self.count):
            self.servers.append(KBServe(self.work / f"{self.name}-home-{number}", workers=1, env=env).start())
        first = self.servers[0]
        created = httpx.post(f"{first.url}/v1/projects/DEFAULT/knowledge-banks", headers=self.headers, json={
            "name": f"bench-{uuid.uuid4().hex[:6]}", "embedding_llm_id": STUB_MODEL,
            "vector_store_type": "ELASTICSEARCH", "settings": {"connection": "es"}}, timeout=60)
        created.raise_for_status()
        self.kb_path = f"/v1/projects/DEFAULT/knowledge-banks/{created.json()['id']}"
        vectors = _vectors(documents, 1)
        for start in range(0, documents, 500):
            batch = [{"id": f"d{i}", "text": f"document number {i}", "metadata": {"n": i},
                      "vector": vectors[i].tolist()} for i in range(start, min(documents, start + 500))]
            httpx.post(f"{first.url}{self.kb_path}/documents", headers=self.headers, json={"documents": batch},
                       timeout=120).raise_for_status()
        return self

    @property
    def headers(self) -> dict[str, str]:
        from tests.support.server import ADMIN_KEY

        return {"Authorization": f"Bearer {ADMIN_KEY}"}

    def search(self, client: httpx.Client, server: int, vector: list[float]) -> None:
        answer = client.post(f"{self.servers[server].url}{self.kb_path}/search", headers=self.headers,
                             json={"vector": vector, "k": 10})
        if answer.status_code != 200 or len(answer.json()["results"]) != 10:
            raise RuntimeError(f"{self.name}: search failed: {answer.status_code} {answer.text[:300]}")

    def latency(self, queries: list[list[float]]) -> dict[str, float]:
        samples: list[float] = []
        with httpx.Client(timeout=30) as client:
            for number, vector in enumerate(queries):
                started = time.perf_counter()
                self.search(client, number % self.count, vector)
                samples.append(time.perf_counter() - started)
        return _percentiles(samples)

    def throughput(self, queries: list[list[float]], clients: int, seconds: float, servers: int
                   ) -> dict[str, float]:
        done = [0] * clients
        failures: list[BaseException] = []
        stop = time.monotonic() + seconds

        def client_loop(number: int) -> None:
            try:
                with httpx.Client(timeout=30) as client:
                    while time.monotonic() < stop:
                        self.search(client, number % servers, queries[(done[number] * clients + number)
                                                                      % len(queries)])
                        done[number] += 1
            except BaseException as exc:  # noqa: BLE001 - reported below
                failures.append(exc)

        threads = [threading.Thread(target=client_loop, args=(n,)) for n in range(clients)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if failures:
            raise failures[0]
        return {"requests": sum(done), "rps": round(sum(done) / (time.monotonic() - started), 1)}

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


def side_by_side(sqlite: Setup, postgres: Setup, queries: list[list[float]], args: argparse.Namespace
                 ) -> dict[str, Any]:
    for setup in (sqlite, postgres):
        setup.latency(queries[:50])  # warm: connections, caches, Elasticsearch's own
    samples: dict[str, list[float]] = {"sqlite-1": [], "postgres-1": []}
    with httpx.Client(timeout=30) as client:
        for vector in queries:
            for name, setup in (("sqlite-1", sqlite), ("postgres-1", postgres)):
                started = time.perf_counter()
                setup.search(client, 0, vector)
                samples[name].append(time.perf_counter() - started)
    paired = [(p - s) * 1000 for p, s in zip(samples["postgres-1"], samples["sqlite-1"], strict=True)]
    latency = {name: _percentiles(values) for name, values in samples.items()}
    latency["paired_difference_p50_ms"] = round(statistics.median(paired), 3)
    print(f"latency, one client, alternating: SQLite p50 {latency['sqlite-1']['p50_ms']} ms p99 "
          f"{latency['sqlite-1']['p99_ms']} ms; PostgreSQL p50 {latency['postgres-1']['p50_ms']} ms p99 "
          f"{latency['postgres-1']['p99_ms']} ms; paired difference p50 {latency['paired_difference_p50_ms']} ms")
    rounds: dict[str, list[float]] = {"sqlite-1": [], "postgres-1": [], "postgres-2": []}
    for number in range(args.rounds):
        for name, setup, servers in (("sqlite-1", sqlite, 1), ("postgres-1", postgres, 1),
                                     ("postgres-2", postgres, 2)):
            rps = setup.throughput(queries, args.clients, args.seconds, servers)["rps"]
            rounds[name].append(rps)
            print(f"round {number + 1}: {name} {rps} searches/s ({args.clients} clients, load average "
                  f"{os.getloadavg()[0]:.2f})")
    throughput = {name: statistics.median(values) for name, values in rounds.items()}
    return {"latency": latency, "throughput": throughput, "throughput_rounds": rounds}


def ledger_read_cost(database_url: str, calls: int) -> dict[str, Any]:
    """``DatabaseLedger.committed`` on its cache-hit path against one read of the database per call."""
    from stores.commit_point.database import DatabaseLedger

    ledger = DatabaseLedger(database_url, f"bench-{uuid.uuid4().hex[:8]}")
    deadline = time.monotonic() + 10
    while ledger.watch.cached(ledger.kb_id) is None and time.monotonic() < deadline:
        ledger.committed()
        time.sleep(0.01)
    figures = {}
    for name, call in (("cache_hit", ledger.committed), ("database_read", ledger._read_committed)):
        samples = []
        for _ in range(calls):
            started = time.perf_counter()
            call()
            samples.append(time.perf_counter() - started)
        figures[name] = {k.replace("_ms", "_us"): round(v * 1000, 2) for k, v in _percentiles(samples).items()}
    ledger.destroy()
    ledger.watch.close()  # before PostgreSQL stops: its listener would log the lost connection
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--documents", type=int, default=2000)
    parser.add_argument("--queries", type=int, default=400, help="sequential searches per set-up (latency)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each throughput run")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients in the throughput runs")
    parser.add_argument("--rounds", type=int, default=3, help="throughput rounds (each runs every target)")
    parser.add_argument("--out", type=Path, default=Path("bench-results/scale_out.json"))
    args = parser.parse_args(argv)

    from tests.support.elasticsearch_server import ElasticsearchNode
    from tests.support.openai_embeddings_server import EmbeddingsServer
    from tests.support.postgres_server import PostgresServer

    queries = [v.tolist() for v in _vectors(args.queries, 2)]
    results: dict[str, Any] = {"machine": machine(), "documents": args.documents, "clients": args.clients,
                               "seconds": args.seconds, "rounds": args.rounds, "setups": {}}
    print(f"machine: {results['machine']['cpus']} cores, {results['machine']['cpu']}, "
          f"flags {' '.join(results['machine']['cpu_flags'])}; load average before: {os.getloadavg()}")
    parts: dict[str, Any] = {"es": ElasticsearchNode(name="scale-out"), "embeddings": EmbeddingsServer(),
                             "postgres": PostgresServer()}
    with tempfile.TemporaryDirectory(prefix="kb-scale-out-") as work:
        try:
            parts["es"].start()
            parts["embeddings"].start()
            parts["postgres"].start()
            url = parts["postgres"].create_kb_database("kb")
            results["ledger_read"] = ledger_read_cost(url, 5000)
            print(f"commit point read, in process: cache hit p50 {results['ledger_read']['cache_hit']['p50_us']} "
                  f"us, database read p50 {results['ledger_read']['database_read']['p50_us']} us")
            sqlite = Setup("sqlite", Path(work), 1, None, parts).start(args.documents)
            postgres = Setup("postgres", Path(work), 2, url, parts).start(args.documents)
            try:
                results["setups"] = side_by_side(sqlite, postgres, queries, args)
            finally:
                sqlite.stop()
                postgres.stop()
        finally:
            for part in ("embeddings", "postgres"):
                parts[part].stop()
            parts["es"].cleanup()
    setups = results["setups"]
    results["postgres_adds_p50_ms"] = setups["latency"]["paired_difference_p50_ms"]
    results["two_servers_rps_ratio"] = round(setups["throughput"]["postgres-2"] / setups["throughput"]["postgres-1"], 2)
    print(f"PostgreSQL adds {results['postgres_adds_p50_ms']} ms p50 over SQLite, paired (target < 0.2); two servers "
          f"serve {results['two_servers_rps_ratio']}x the searches/s of one (target >= 1.6 when the store is not "
          f"the bottleneck; here {results['machine']['cpus']} cores run Elasticsearch, PostgreSQL, the servers and "
          f"the clients; load average after: {os.getloadavg()})")
    write_results(args.out, results)
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

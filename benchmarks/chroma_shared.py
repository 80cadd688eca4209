"""Chroma-server knowledge banks across servers (issue 28): what the shared commit point and the per-server cache
cost, beside the same knowledge bank on one machine.

    python -m benchmarks.chroma_shared [--documents 5183] [--queries 300] [--out bench-results/chroma_shared.json]

Run from a checkout: it starts a ``chroma run`` server and a PostgreSQL cluster with the launchers of
``tests/support``, and writes SciFact's abstracts (read in place from /work/shared/datasets/scifact, with their
MiniLM vectors: no embedding is measured) into two knowledge banks on that Chroma server: ``local`` (the commit
point in its folder, one machine) and ``shared`` (the commit point in PostgreSQL), written through "server" A
and read through "server" B (two drivers with folders of their own, in this process).

Measured, side by side: searches (similarity, keyword, filtered similarity; k = 10) alternating between the
local knowledge bank and B's view of the shared one, p50/p99 each; B's first read after A's commit of
``--documents`` (a rebuild of B's cache from Chroma) and after commits of 1, 100 and 1,000 replaced documents
(catch-ups); and commits replacing 100 documents through each.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.results import write_results
from benchmarks.suite import machine
from kb_base.filters import parse_filter
from stores.base import Record, StoreContext
from stores.chroma.store import ChromaStore

SCIFACT = Path("/work/shared/datasets/scifact")


def corpus(limit: int) -> list[Record]:
    vectors = np.load(SCIFACT / "corpus-all-MiniLM-L6-v2.npy")
    found = []
    with open(SCIFACT / "corpus.jsonl", encoding="utf-8") as lines:
        for n, line in zip(range(limit), lines, strict=False):
            row = json.loads(line)
            found.append(Record(f"sf{row['_id']}", f"{row['title']} {row['text']}",
                                {"n": n, "long": len(row["text"]) > 1200, "year": 1990 + n % 30}, vectors[n]))
    return found


def write(store: ChromaStore, records: list[Record]) -> float:
    started = time.perf_counter()
    with store.begin(120) as tx:
        for start in range(0, len(records), 500):
            tx.upsert(records[start : start + 500])
    return time.perf_counter() - started


def timed(call: Callable[[], Any]) -> float:
    started = time.perf_counter()
    call()
    return (time.perf_counter() - started) * 1000


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"p50_ms": round(statistics.median(ordered), 3), "p99_ms": round(ordered[int(0.99 * (len(ordered) - 1))], 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--documents", type=int, default=5183)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--out", type=Path, default=Path("bench-results/chroma_shared.json"))
    args = parser.parse_args(argv)

    from tests.support.chroma_server import ChromaServer
    from tests.support.postgres_server import PostgresServer

    records = corpus(args.documents)
    results: dict[str, Any] = {"machine": machine(), "documents": len(records), "queries": args.queries}
    print(f"machine: {results['machine']['cpus']} cores, {results['machine']['cpu']}, flags "
          f"{' '.join(results['machine']['cpu_flags'])}; load average before: {os.getloadavg()}")
    with tempfile.TemporaryDirectory(prefix="kb-chroma-shared-") as work:
        root = Path(work)
        chroma, postgres = ChromaServer(root / "chroma"), PostgresServer()
        try:
            chroma.start()
            postgres.start()
            url = postgres.create_kb_database("kb")
            connection = {"url": chroma.url, "timeout": 120}
            local = ChromaStore(StoreContext("local", root / "local", connection=connection))
            a = ChromaStore(StoreContext("shared", root / "a", connection=connection, database_url=url))
            b = ChromaStore(StoreContext("shared", root / "b", connection=connection, database_url=url))
            results["write_all_s"] = {"local": round(write(local, records), 2), "shared": round(write(a, records), 2)}
            results["b_rebuild_ms"] = round(timed(lambda: b.count()), 1)
            print(f"wrote {len(records)} abstracts: local {results['write_all_s']['local']} s, shared through A "
                  f"{results['write_all_s']['shared']} s; B's first read (a rebuild of its cache) "
                  f"{results['b_rebuild_ms']} ms")
            results["search"] = side_by_side(local, b, records, args.queries)
            results["catch_up_ms"] = {}
            rng = np.random.default_rng(7)
            for size in (1, 100, 1000):
                picked = [records[int(i)] for i in rng.choice(len(records), size, replace=False)]
                changed = [Record(r.id, r.text + " revised", {**r.metadata, "revised": True}, r.vector) for r in picked]
                write(a, changed)
                results["catch_up_ms"][str(size)] = round(timed(lambda: b.count()), 1)
            print(f"B's first read after A's commit of n replaced abstracts (catch-up), ms: {results['catch_up_ms']}")
            results["commit_100_ms"] = commits(local, a, records)
            print(f"a commit replacing 100 abstracts (median of 3, after one to even out pending vacuums), ms: "
                  f"{results['commit_100_ms']}")
        finally:
            chroma.stop()
            postgres.stop()
    results["load_after"] = os.getloadavg()
    write_results(args.out, results)
    print(f"load average after: {results['load_after']}; written to {args.out}")
    return 0


def commits(local: ChromaStore, shared: ChromaStore, records: list[Record]) -> dict[str, float]:
    """Commits replacing 100 records, alternating; the first of each only vacuums what earlier ones left."""
    times: dict[str, list[float]] = {"local": [], "shared": []}
    for round_number in range(4):
        batch = [Record(r.id, f"{r.text} round {round_number}", r.metadata, r.vector)
                 for r in records[100 * round_number : 100 * (round_number + 1)]]
        for name, store in (("local", local), ("shared", shared)):
            elapsed = write(store, batch) * 1000
            if round_number:
                times[name].append(elapsed)
    return {name: round(statistics.median(values), 1) for name, values in times.items()}


def side_by_side(local: ChromaStore, shared: ChromaStore, records: list[Record], queries: int) -> dict[str, Any]:
    """Each search through both, alternating, so that both meet the same moment's load."""
    flt = parse_filter({"$and": [{"long": True}, {"year": {"$gte": 2000}}]})
    words = [r.text.split()[3] for r in records[:queries]]
    kinds: dict[str, Callable[[ChromaStore, int], Any]] = {
        "similarity": lambda s, i: s.similarity(records[i].vector, 10),
        "keyword": lambda s, i: s.keyword(words[i], 10),
        "filtered similarity": lambda s, i: s.similarity(records[i].vector, 10, flt),
    }
    out: dict[str, Any] = {}
    for kind, search in kinds.items():
        for i in range(5):  # warm both (columns, connections)
            search(local, i), search(shared, i)
        times: dict[str, list[float]] = {"local": [], "shared": []}
        for i in range(queries):
            for name, store in (("local", local), ("shared", shared)) if i % 2 else (("shared", shared),
                                                                                   ("local", local)):
                times[name].append(timed(lambda s=store, n=i, run=search: run(s, n)))

        def ranked(store: ChromaStore, i: int, run: Callable[[ChromaStore, int], Any] = search) -> list[Any]:
            return sorted((round(h.score, 4), h.record.id) for h in run(store, i))  # ties in any order

        same = all(ranked(local, i) == ranked(shared, i) for i in range(20))
        out[kind] = {name: percentiles(values) for name, values in times.items()} | {"same_answers": same}
        print(f"{kind}: local {out[kind]['local']}, shared (B) {out[kind]['shared']}, same answers: {same}")
    return out


if __name__ == "__main__":
    raise SystemExit(main())

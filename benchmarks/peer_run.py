"""One peer, one corpus size, one phase, in a process of its own (so peak memory and cold open are its own).

    python -m benchmarks.peer_run ingest kb-flat 100000 <folder> <out.json>
    python -m benchmarks.peer_run serve  kb-flat 100000 <folder> <out.json>
    python -m benchmarks.peer_run compare kb-flat,langchain-faiss 100000 <work folder> <out.json>

``ingest`` writes the corpus durably and reports chunks/s, disk bytes per chunk and peak RSS.
``serve`` opens the store cold, then times every search the peer offers over the corpus' queries
(p50/p95/p99, single-client QPS) with recall@10 against exact search; a kb peer is timed in alternation
with raw faiss searching the very same index file, query by query.
``compare`` opens several ingested peers in one process and times their similarity searches in rotation,
query by query, for the ratios between peers.
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from benchmarks.corpus import exact_neighbours, load
from benchmarks.peers import KBPeer, Peer, RawFaissPeer, make

ROUNDS = 3  # each query this many times: 200 queries -> 600 samples


def peak_rss_mb() -> float:
    """This process's peak RSS since its exec (VmHWM). ``getrusage``'s ru_maxrss survives exec on Linux, so it
    reported the benchmark parent's peak (1.6 GB with the model loaded) for every small peer."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def disk_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def timed(run: Callable[[int], Any], count: int) -> tuple[dict[str, float], list[Any]]:
    for i in range(min(20, count)):  # warm-up: caches, lazy imports, first-generation loads
        run(i)
    samples, results = [], []
    for _ in range(ROUNDS):
        for i in range(count):
            started = time.perf_counter()
            out = run(i)
            samples.append(time.perf_counter() - started)
            if len(results) < count:
                results.append(out)
    return _figures(samples, count), results


def paired(first: Callable[[int], Any], second: Callable[[int], Any],
           count: int) -> tuple[tuple[dict[str, float], list[Any]], tuple[dict[str, float], list[Any]]]:
    """Two searches timed in alternation, which one goes first alternating too: this machine's speed drifts
    within a minute, so a ratio of two figures taken minutes apart measures the drift as much as the code.

    When the two search one index in memory, neither should find the other's work in the CPU cache: in each
    slot they take queries half the list apart, so no query's path is searched twice in a row. Each still
    searches every query once a round; results come back in query order.
    """
    half = count // 2
    for i in range(min(20, count)):
        first(i)
        second((i + half) % count)
    samples: tuple[list[float], list[float]] = ([], [])
    results: tuple[list[Any], list[Any]] = ([None] * count, [None] * count)
    runs = (first, second)
    for round_number in range(ROUNDS):
        for i in range(count):
            order = (0, 1) if (i + round_number) % 2 == 0 else (1, 0)
            for which in order:
                query = (i + half * which) % count
                started = time.perf_counter()
                out = runs[which](query)
                samples[which].append(time.perf_counter() - started)
                if round_number == 0:
                    results[which][query] = out
    return (_figures(samples[0], count), results[0]), (_figures(samples[1], count), results[1])


def _figures(samples: list[float], count: int) -> dict[str, float]:
    """Percentiles over every round, and the p50 of the first round alone: each query's first time, when no
    cache (kb's record cache, the OS page cache of a peer's files) has seen its results yet."""
    ms = np.asarray(samples) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "p99_ms": float(np.percentile(ms, 99)), "qps": float(len(ms) / (ms.sum() / 1000)),
            "first_round_p50_ms": float(np.percentile(ms[:count], 50))}


def recall(peer: Peer, results: list[Any], exact: np.ndarray) -> float:
    found = [len(set(peer.ids(r)) & {f"chunk-{i}" for i in row}) / exact.shape[1]
             for r, row in zip(results, exact, strict=False)]
    return float(np.mean(found))


def ingest(peer: Peer, size: int, folder: Path) -> dict[str, Any]:
    corpus = load(size)
    corpus.texts, corpus.ids, corpus.metadatas()  # noqa: B018 - decoded (and kept) before the clock, for every peer
    # The corpus and the imported modules are this harness's heap, not the peer's: frozen, Python's full
    # collections (80 ms each here, one or two per run, at a moment that depends on the allocation counts the
    # imports left) skip them for every peer alike. Collections of what a peer allocates still count.
    gc.collect()
    gc.freeze()
    started = time.perf_counter()
    peer.ingest(corpus, folder)
    ended = time.perf_counter()
    seconds = ended - started - peer.harness_seconds  # the vectors turned into lists: the harness's time
    peer.settle()  # background work the ingestion left (kb's WAL checkpoint): reported, not in "seconds"
    settle_seconds = time.perf_counter() - ended
    return {"seconds": seconds, "chunks_per_second": size / seconds, "settle_seconds": settle_seconds,
            "harness_seconds": peer.harness_seconds, "disk_bytes_per_chunk": disk_bytes(folder) / size,
            "peak_rss_mb": peak_rss_mb()}


def serve(peer: Peer, size: int, folder: Path) -> dict[str, Any]:
    corpus = load(size)
    exact = exact_neighbours(corpus)
    queries, texts = corpus.queries, corpus.query_texts
    started = time.perf_counter()
    peer.open(folder)
    peer.search(queries[0], 10)
    out: dict[str, Any] = {"cold_open_seconds": time.perf_counter() - started}
    opened = time.perf_counter()
    peer.settle()  # work the open left running (kb: its index onto huge pages): the timed searches see it done
    out["settle_seconds"] = time.perf_counter() - opened
    if isinstance(peer, KBPeer):
        # kb's overhead: raw faiss searching the very index object kb serves from, the two timed in alternation.
        # Not a second copy read from kb's file: where a copy lands in memory moved its speed by up to 30%
        # against the other copy (10k flat), more than kb's own work per search.
        raw = RawFaissPeer(peer.index_type, first_id=1)
        raw.use_index(peer.served_index())
        (figures, results), (raw_figures, raw_results) = paired(
            lambda i: peer.search(queries[i], 10), lambda i: raw.search(queries[i], 10), len(queries))
        out["raw_faiss_same_index"] = {**raw_figures, "recall_at_10": recall(raw, raw_results, exact)}
    else:
        figures, results = timed(lambda i: peer.search(queries[i], 10), len(queries))
    out["similarity"] = {**figures, "recall_at_10": recall(peer, results, exact)}
    if not isinstance(peer, RawFaissPeer):
        figures, _ = timed(lambda i: peer.filtered(queries[i], 10), len(queries))
        out["filtered_similarity"] = figures
    if isinstance(peer, KBPeer) and peer.keyword_index:
        out["hybrid"], _ = timed(lambda i: peer.hybrid_search(texts[i], queries[i], 10), len(queries))
        out["keyword"], _ = timed(lambda i: peer.keyword_search(texts[i], 10), len(queries))
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def compare(names: list[str], size: int, work: Path) -> dict[str, Any]:
    """Every peer open in this one process, timed query by query in rotating order: the ratios between peers
    then compare the same moments of this machine (separate processes minutes apart compare its drift)."""
    corpus = load(size)
    exact = exact_neighbours(corpus)
    queries = corpus.queries
    peers = [make(name) for name in names]
    for peer, name in zip(peers, names, strict=True):
        peer.open(work / f"{name}-{size}")
        peer.search(queries[0], 10)  # loads what a first search loads
        peer.settle()
    for i in range(min(20, len(queries))):
        for peer in peers:
            peer.search(queries[i], 10)
    samples: list[list[float]] = [[] for _ in peers]
    results: list[list[Any]] = [[] for _ in peers]
    for round_number in range(ROUNDS):
        for i, query in enumerate(queries):
            shift = (i + round_number) % len(peers)
            for which in [*range(shift, len(peers)), *range(shift)]:
                started = time.perf_counter()
                out = peers[which].search(query, 10)
                samples[which].append(time.perf_counter() - started)
                if round_number == 0:
                    results[which].append(out)
    return {name: {**_figures(samples[n], len(queries)), "recall_at_10": recall(peers[n], results[n], exact)}
            for n, name in enumerate(names)}


def main(argv: list[str] | None = None) -> int:
    phase, name, size, folder, out = argv if argv is not None else sys.argv[1:]
    if phase == "compare":  # name: comma-separated peers; folder: the work folder holding <peer>-<size>
        names = name.split(",")
        for module in {m for n in names for m in make(n).modules}:
            importlib.import_module(module)
        faiss.omp_set_num_threads(1)
        Path(out).write_text(json.dumps(compare(names, int(size), Path(folder)), indent=2))
        return 0
    peer = make(name)
    for module in peer.modules:
        importlib.import_module(module)
    # Serving: one OpenMP thread for every peer, kb's default and the fastest setting for one query at a
    # time here (the peers would otherwise run faiss with one thread per core, and be slower).
    # Ingesting: every core, for every peer (HNSW construction is parallel).
    faiss.omp_set_num_threads(1 if phase == "serve" else os.cpu_count() or 1)
    run = ingest if phase == "ingest" else serve
    report = run(peer, int(size), Path(folder))
    Path(out).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

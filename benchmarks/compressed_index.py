"""Compressed FAISS index types against today's HNSW and FLAT (issue 31): recall, latency, memory, disk, ingestion.

    python -m benchmarks.compressed_index --count 1000000 --types HNSW,HNSW_SQ8,IVF_PQ

Vectors have the structure of real embeddings: each is one of SciFact's 5,183 MiniLM document vectors (read in
place from ../shared/datasets/scifact) plus Gaussian noise of norm ~0.6, normalised (cosine ~0.85 to its
centre; never uniform random). Queries are held out: drawn afresh the same way. Ground truth is exact search
(a flat inner-product scan). Each type's knowledge bank is written in one commit by kb's FAISS driver, then
measured in a fresh process (``--child``): resident memory after opening and a warm-up (anonymous memory and
file-backed pages of the memory-mapped vector files reported apart), recall@10 and single-query latency through
kb (re-ranking included) beside raw faiss on the very index kb searches (codes only for the compressed types).
Figures are printed and written to ``docs/benchmarks/compressed_index.json`` with the CPU flags and load average.
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

import faiss
import numpy as np

from benchmarks.suite import machine as machine_info
from stores.base import Record, StoreContext
from stores.faiss.store import FaissStore

SCIFACT = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "scifact" / "corpus-all-MiniLM-L6-v2.npy"
OUT = Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "compressed_index.json"
BATCH = 20_000
NOISE = 0.6


def centres() -> np.ndarray:
    path = SCIFACT if SCIFACT.exists() else Path("/work/shared/datasets/scifact/corpus-all-MiniLM-L6-v2.npy")
    return np.load(path, mmap_mode="r")


def generate(count: int, seed: int) -> np.ndarray:
    """``count`` structured unit vectors (see the module docstring), generated a batch at a time."""
    real = np.asarray(centres())
    out = np.empty((count, real.shape[1]), dtype=np.float32)
    rng = np.random.default_rng(seed)
    for start in range(0, count, BATCH):
        n = min(BATCH, count - start)
        noisy = real[rng.integers(0, real.shape[0], size=n)] + rng.normal(
            scale=NOISE / np.sqrt(real.shape[1]), size=(n, real.shape[1])).astype(np.float32)
        out[start : start + n] = noisy / np.linalg.norm(noisy, axis=1, keepdims=True)
    return out


def ground_truth(data: np.ndarray, queries: np.ndarray, k: int = 10) -> np.ndarray:
    exact = faiss.IndexFlatIP(data.shape[1])
    exact.add(data)
    return exact.search(queries, k)[1]


def index_settings(kind: str) -> dict[str, Any]:
    return {"type": kind} if kind != "FLAT" else {}


def ingest(folder: Path, kind: str, data: np.ndarray, keyword: bool) -> dict[str, float]:
    """Write ``data`` into a new knowledge bank of ``kind`` in one commit; seconds taken."""
    store = FaissStore(StoreContext("bench", folder, settings={"index": index_settings(kind)},
                                    keyword_index=keyword))
    began = time.perf_counter()
    with store.begin(timeout=60) as tx:
        for start in range(0, data.shape[0], BATCH):
            part = data[start : start + BATCH]
            tx.upsert([Record(f"c{start + i}", f"chunk {start + i}", {"part": (start + i) % 10}, v)
                       for i, v in enumerate(part)])
    seconds = time.perf_counter() - began
    store.merger.close()
    store.close()
    return {"ingest_s": round(seconds, 1)}


def _status_kb() -> dict[str, int]:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            fields[key] = int(value.split()[0])
    return fields


def _quantiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"p50_ms": round(ordered[len(ordered) // 2] * 1000, 3),
            "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 3)}


def child(folder: Path, kind: str, queries_path: Path, truth_path: Path) -> dict[str, Any]:
    """In a fresh process: memory after open and warm-up, recall and latency through kb and raw faiss."""
    queries, truth = np.load(queries_path), np.load(truth_path)
    before = _status_kb()
    store = FaissStore(StoreContext("bench", folder, settings={"index": index_settings(kind)}))
    for query in queries:  # warm-up: segments loaded, vector pages touched by the queries' candidates
        store.similarity(query, 10)
    with store._snapshot() as view:
        segment = view.segments.segments[0]
        assert len(view.segments.segments) == 1, "one commit: one segment"
    after = _status_kb()
    kb_times, raw_times, kb_hits, raw_hits = [], [], 0, 0
    for query, wanted in zip(queries, truth, strict=True):
        began = time.perf_counter()
        hits = store.similarity(query, 10)
        kb_times.append(time.perf_counter() - began)
        kb_hits += len({int(h.record.id[1:]) for h in hits} & set(wanted.tolist()))
        began = time.perf_counter()
        labels = segment.index.search(query.reshape(1, -1), 10)[1][0]
        raw_times.append(time.perf_counter() - began)
        raw_hits += len({int(r) - 1 for r in labels} & set(wanted.tolist()))  # rowids count from 1
    n = queries.shape[0] * 10
    disk = sum(p.stat().st_size for p in (folder / "store" / "segments").iterdir())
    return {"type": kind, "vectors": int(segment.size), "recall_kb": round(kb_hits / n, 4),
            "recall_raw_faiss": round(raw_hits / n, 4), "kb": _quantiles(kb_times), "raw_faiss": _quantiles(raw_times),
            "rss_delta_mb": round((after["VmRSS"] - before["VmRSS"]) / 1024, 1),
            "anon_delta_mb": round((after["RssAnon"] - before["RssAnon"]) / 1024, 1),
            "file_delta_mb": round((after["RssFile"] - before["RssFile"]) / 1024, 1),
            "segment_disk_bytes_per_chunk": round(disk / segment.size, 1),
            "sqlite_disk_bytes_per_chunk": round((folder / "store" / "store.sqlite").stat().st_size / segment.size, 1)}


def kb_memory(folder: Path, kind: str, queries: np.ndarray, keyword: bool) -> dict[str, Any]:
    """kb's own per-chunk structures, measured as resident-memory growth of each step in this fresh process:
    the segments' id maps (rowids: positions and their sorted lookup), the record cache (full after this many
    distinct hits), the metadata columns (built by the first filtered search), the keyword index's in-memory
    state (after keyword searches)."""
    from kb_base.filters import parse_filter  # noqa: PLC0415 - only this measurement filters

    store = FaissStore(StoreContext("bench", folder, settings={"index": index_settings(kind)}, keyword_index=keyword))
    steps: dict[str, float] = {}
    last = _status_kb()["RssAnon"]

    def step(name: str) -> None:
        nonlocal last
        now = _status_kb()["RssAnon"]
        steps[name] = (now - last) * 1024
        last = now

    store.similarity(queries[0], 10)
    step("open_and_segments")
    with store._snapshot() as view:
        segments = view.segments.segments
        count = sum(s.size for s in segments)
        steps["id_maps_exact"] = float(sum(s.layout.rowids.nbytes + s.layout.sorted_rowids.nbytes *
                                           (s.layout.sorted_rowids is not s.layout.rowids) for s in segments))
    for i in range(0, count, max(1, count // 50_000)):  # 50k distinct rows through the record cache
        store.get([f"c{i}"])
    step("record_cache")
    store.similarity(queries[0], 10, parse_filter({"part": 3}))
    step("metadata_columns")
    if keyword:
        for word in ("chunk", "1", "2"):
            store.keyword(word, 10)
        step("keyword_index")
    return {"keyword_index": keyword, "chunks": count,
            "bytes_per_chunk": {name: round(value / count, 2) for name, value in steps.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--types", default="HNSW,HNSW_SQ8,IVF_PQ")
    parser.add_argument("--kb-memory", action="store_true", help="also measure kb's own per-chunk memory")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--child", nargs=4, metavar=("FOLDER", "TYPE", "QUERIES", "TRUTH"), help=argparse.SUPPRESS)
    parser.add_argument("--memory-child", nargs=4, metavar=("FOLDER", "TYPE", "QUERIES", "KEYWORD"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        folder, kind, queries, truth = args.child
        print(json.dumps(child(Path(folder), kind, Path(queries), Path(truth))))
        return
    if args.memory_child:
        folder, kind, queries, keyword = args.memory_child
        print(json.dumps(kb_memory(Path(folder), kind, np.load(queries), keyword == "1")))
        return
    machine = {**machine_info(), "load_average": os.getloadavg()}
    print(f"machine: {machine}")
    began = time.perf_counter()
    data = generate(args.count, seed=1)
    queries = generate(args.queries, seed=2)  # held out: other noise around the same real vectors
    truth = ground_truth(data, queries)
    print(f"{args.count:,} structured vectors and {args.queries} held-out queries with exact ground truth in "
          f"{time.perf_counter() - began:.0f} s")
    results: list[dict[str, Any]] = []
    memory: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="kb-compressed-") as scratch:
        root = Path(scratch)
        np.save(root / "queries.npy", queries)
        np.save(root / "truth.npy", truth)
        for kind in args.types.split(","):
            folder = root / kind
            timing = ingest(folder, kind, data, keyword=False)
            measured = subprocess.run([sys.executable, "-m", "benchmarks.compressed_index", "--child", str(folder),
                                       kind, str(root / "queries.npy"), str(root / "truth.npy")],
                                      check=True, capture_output=True, text=True)
            result = {**json.loads(measured.stdout.strip().splitlines()[-1]), **timing}
            results.append(result)
            print(json.dumps(result))
            if args.kb_memory and kind == args.types.split(",")[0]:
                for keyword in (False, True):
                    kw_folder = root / f"{kind}-kw{int(keyword)}"
                    ingest(kw_folder, kind, data, keyword=keyword)
                    out = subprocess.run([sys.executable, "-m", "benchmarks.compressed_index", "--memory-child",
                                          str(kw_folder), kind, str(root / "queries.npy"), str(int(keyword))],
                                         check=True, capture_output=True, text=True)
                    memory.append(json.loads(out.stdout.strip().splitlines()[-1]))
                    print(json.dumps(memory[-1]))
    base = next((r for r in results if r["type"] == "HNSW"), None)
    if base is not None:
        for result in results:
            result["memory_vs_hnsw"] = round(result["anon_delta_mb"] / max(base["anon_delta_mb"], 1e-9), 3)
            result["p50_vs_hnsw"] = round(result["kb"]["p50_ms"] / max(base["kb"]["p50_ms"], 1e-9), 2)
    report = {"count": args.count, "queries": args.queries, "machine": {**machine, "load_after": os.getloadavg()},
              "results": results, "kb_memory": memory}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'type':<10}{'recall kb':>10}{'raw':>7}{'p50 ms':>8}{'raw p50':>8}{'anon MB':>9}{'file MB':>9}"
          f"{'disk B/chunk':>13}{'ingest s':>9}")
    for r in results:
        print(f"{r['type']:<10}{r['recall_kb']:>10}{r['recall_raw_faiss']:>7}{r['kb']['p50_ms']:>8}"
              f"{r['raw_faiss']['p50_ms']:>8}{r['anon_delta_mb']:>9}{r['file_delta_mb']:>9}"
              f"{r['segment_disk_bytes_per_chunk']:>13}{r['ingest_s']:>9}")
    print(f"written to {args.out}; load average now {os.getloadavg()}")


if __name__ == "__main__":
    main()

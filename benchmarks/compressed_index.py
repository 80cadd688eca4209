"""Compressed FAISS index types against today's HNSW and FLAT (issue 31): recall, latency, memory, disk, ingestion.

    python -m benchmarks.compressed_index --count 1000000 --types HNSW_SQ8,IVF_PQ,HNSW,FLAT --kb-memory FLAT

Vectors have the structure of real embeddings (``benchmarks.compressed_data``: SciFact's MiniLM vectors plus
noise, generated a batch at a time); queries are held out (drawn afresh the same way); ground truth is exact
search, streamed. Each type's knowledge bank is written in one commit by kb's FAISS driver in a child process
(``--ingest-child``: time, and peak memory, anonymous apart from the memory-mapped files), then measured in
another fresh one (``--child``): resident memory after opening and a warm-up (anonymous memory and file-backed
pages of the memory-mapped vector files reported apart), recall@10 and single-query latency through kb
(re-ranking included) beside raw faiss on the very index kb searches (codes only for the compressed types).
Nothing holds all the vectors, so a 10M run needs memory for the index under test only.

``--workdir DIR`` keeps the knowledge banks, queries, ground truth and each finished type's figures there, so a
run stopped part-way is resumed by the same command: finished types are not measured again, a knowledge bank
whose ingestion finished is not written again (one whose ingestion was cut off is removed and written anew: a
commit is all or nothing). Without it everything lives in a temporary folder. Progress lines every 30 s.
Figures are printed and written to ``--out`` (``docs/benchmarks/compressed_index.json``) with the CPU flags and
load average.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.compressed_data import done_marker, generate, ground_truth, ingest, read_marker, status_kb, store_for
from benchmarks.results import write_results
from benchmarks.suite import machine as machine_info

OUT = Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "compressed_index.json"


def index_settings(kind: str, overrides: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {**({"type": kind} if kind != "FLAT" else {}), **overrides.get(kind, {})}


def _quantiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"p50_ms": round(ordered[len(ordered) // 2] * 1000, 3),
            "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 3)}


def child(folder: Path, settings: dict[str, Any], queries_path: Path, truth_path: Path) -> dict[str, Any]:
    """In a fresh process: memory after open and warm-up, recall and latency through kb and raw faiss."""
    queries, truth = np.load(queries_path), np.load(truth_path)
    before = status_kb()
    store = store_for(folder, settings)
    for query in queries:  # warm-up: segments loaded, vector pages touched by the queries' candidates
        store.similarity(query, 10)
    with store._snapshot() as view:
        segment = view.segments.segments[0]
        assert len(view.segments.segments) == 1, "one commit: one segment"
    after = status_kb()
    kb_times, raw_times, kb_hits, raw_hits = [], [], 0, 0
    for turn, (query, wanted) in enumerate(zip(queries, truth, strict=True)):
        # kb and raw faiss take turns going first: the second search of a query finds the memory the first one
        # touched in the CPU's caches (at 1M HNSW: 0.4 ms second against ~4 ms first)
        for side in (("kb", "raw") if turn % 2 == 0 else ("raw", "kb")):
            began = time.perf_counter()
            if side == "kb":
                hits = store.similarity(query, 10)
                kb_times.append(time.perf_counter() - began)
                kb_hits += len({int(h.record.id[1:]) for h in hits} & set(wanted.tolist()))
            else:
                labels = segment.index.search(query.reshape(1, -1), 10)[1][0]
                raw_times.append(time.perf_counter() - began)
                raw_hits += len({int(r) - 1 for r in labels} & set(wanted.tolist()))  # rowids count from 1
    n = queries.shape[0] * 10
    disk = sum(p.stat().st_size for p in (folder / "store" / "segments").iterdir())
    return {"type": settings.get("type", "FLAT"), "settings": settings, "vectors": int(segment.size),
            "recall_kb": round(kb_hits / n, 4),
            "recall_raw_faiss": round(raw_hits / n, 4), "kb": _quantiles(kb_times), "raw_faiss": _quantiles(raw_times),
            "rss_delta_mb": round((after["VmRSS"] - before["VmRSS"]) / 1024, 1),
            "anon_delta_mb": round((after["RssAnon"] - before["RssAnon"]) / 1024, 1),
            "file_delta_mb": round((after["RssFile"] - before["RssFile"]) / 1024, 1),
            "segment_disk_bytes_per_chunk": round(disk / segment.size, 1),
            "sqlite_disk_bytes_per_chunk": round((folder / "store" / "store.sqlite").stat().st_size / segment.size, 1)}


def kb_memory(folder: Path, settings: dict[str, Any], queries: np.ndarray, keyword: bool) -> dict[str, Any]:
    """kb's own per-chunk structures, measured as resident-memory growth of each step in this fresh process:
    the segments' id maps (rowids: positions and their sorted lookup), the record cache (full after this many
    distinct hits), the metadata columns (built by the first filtered search), the keyword index's in-memory
    state (after keyword searches)."""
    from kb_base.filters import parse_filter  # noqa: PLC0415 - only this measurement filters

    store = store_for(folder, settings, keyword)
    steps: dict[str, float] = {}
    last = status_kb()["RssAnon"]

    def step(name: str) -> None:
        nonlocal last
        now = status_kb()["RssAnon"]
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
    with store._snapshot() as view:
        kept = [s.layout.metadata for s in view.segments.segments]
        steps["metadata_columns_exact"] = float(sum(m[1].nbytes() for m in kept if m is not None))
    if keyword:
        for word in ("chunk", "1", "2"):
            store.keyword(word, 10)
        step("keyword_index")
    return {"keyword_index": keyword, "chunks": count,
            "bytes_per_chunk": {name: round(value / count, 2) for name, value in steps.items()}}


def _run_child(*args: str) -> dict[str, Any]:
    """A ``--*-child`` of this module: its progress lines passed through, its last line (JSON) returned."""
    proc = subprocess.Popen([sys.executable, "-u", "-m", "benchmarks.compressed_index", *args],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    last = ""
    for line in proc.stdout:
        if line.startswith("{"):
            last = line
        else:
            print(line, end="", flush=True)
    if proc.wait() != 0:
        raise SystemExit(f"child {args[0]} failed with exit code {proc.returncode}")
    return json.loads(last)


def _ingested(folder: Path, settings: dict[str, Any], count: int, keyword: bool) -> dict[str, Any]:
    """The knowledge bank at ``folder``, written unless a finished one is there already (resuming)."""
    finished = read_marker(folder)
    if finished is not None and finished.get("count") == count and finished.get("settings") == settings:
        print(f"{folder.name}: ingested already ({finished['ingest_s']} s): reused", flush=True)
        return finished
    if folder.exists():
        print(f"{folder.name}: an unfinished or different ingestion is there: removed, written anew", flush=True)
        shutil.rmtree(folder)
    print(f"{folder.name}: ingesting {count:,} vectors ({json.dumps(settings)})", flush=True)
    timing = _run_child("--ingest-child", str(folder), json.dumps(settings), str(count), str(int(keyword)))
    done = {"count": count, "settings": settings, **timing}
    done_marker(folder).write_text(json.dumps(done))
    return done


def _table(results: list[dict[str, Any]]) -> None:
    print(f"{'type':<10}{'recall kb':>10}{'raw':>7}{'p50 ms':>8}{'raw p50':>8}{'anon MB':>9}{'file MB':>9}"
          f"{'disk B/chunk':>13}{'ingest s':>9}{'ingest MB':>10}")
    for r in results:
        print(f"{r['type']:<10}{r['recall_kb']:>10}{r['recall_raw_faiss']:>7}{r['kb']['p50_ms']:>8}"
              f"{r['raw_faiss']['p50_ms']:>8}{r['anon_delta_mb']:>9}{r['file_delta_mb']:>9}"
              f"{r['segment_disk_bytes_per_chunk']:>13}{r['ingest_s']:>9}{r.get('ingest_peak_anon_mb', ''):>10}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--types", default="HNSW_SQ8,IVF_PQ,HNSW")
    parser.add_argument("--settings", default="{}", help='index settings by type (JSON), e.g. '
                        '\'{"IVF_PQ": {"nlist": 16384, "train_sample": 500000}}\'')
    parser.add_argument("--kb-memory", nargs="?", const="FLAT", metavar="TYPE",
                        help="also measure kb's own per-chunk memory, on knowledge banks of TYPE (default FLAT)")
    parser.add_argument("--workdir", type=Path, help="keep everything here and resume from it (see above)")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--child", nargs=4, metavar=("FOLDER", "SETTINGS", "QUERIES", "TRUTH"), help=argparse.SUPPRESS)
    parser.add_argument("--ingest-child", nargs=4, metavar=("FOLDER", "SETTINGS", "COUNT", "KEYWORD"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--memory-child", nargs=4, metavar=("FOLDER", "SETTINGS", "QUERIES", "KEYWORD"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        folder, settings, queries, truth = args.child
        print(json.dumps(child(Path(folder), json.loads(settings), Path(queries), Path(truth))))
        return
    if args.ingest_child:
        folder, settings, count, keyword = args.ingest_child
        print(json.dumps(ingest(Path(folder), json.loads(settings), int(count), seed=1, keyword=keyword == "1")))
        return
    if args.memory_child:
        folder, settings, queries, keyword = args.memory_child
        print(json.dumps(kb_memory(Path(folder), json.loads(settings), np.load(queries), keyword == "1")))
        return
    overrides: dict[str, dict[str, Any]] = json.loads(args.settings)
    machine = {**machine_info(), "load_average": os.getloadavg()}
    print(f"machine: {machine}", flush=True)
    with tempfile.TemporaryDirectory(prefix="kb-compressed-") as scratch:
        root = args.workdir or Path(scratch)
        root.mkdir(parents=True, exist_ok=True)
        print(f"working in {root}", flush=True)
        _measure(args, overrides, machine, root)


def _measure(args: argparse.Namespace, overrides: dict[str, dict[str, Any]], machine: dict[str, Any],
             root: Path) -> None:
    queries_path, truth_path, done_path = root / "queries.npy", root / f"truth-{args.count}.npy", root / "results.json"
    began = time.perf_counter()
    if not queries_path.exists() or np.load(queries_path).shape[0] != args.queries:
        np.save(queries_path, generate(args.queries, seed=2))  # held out: other noise around the same centres
        truth_path.unlink(missing_ok=True)
    if not truth_path.exists():
        np.save(truth_path, ground_truth(args.count, 1, np.load(queries_path)))
    print(f"{args.count:,} structured vectors: {args.queries} held-out queries with exact ground truth "
          f"({time.perf_counter() - began:.0f} s)", flush=True)
    done: dict[str, Any] = json.loads(done_path.read_text()) if done_path.exists() else {}
    results: list[dict[str, Any]] = []
    for kind in args.types.split(","):
        settings = index_settings(kind, overrides)
        key = f"{args.count}:{json.dumps(settings, sort_keys=True)}"
        if key in done:
            print(f"{kind}: measured already (resumed): {json.dumps(done[key])}", flush=True)
            results.append(done[key])
            continue
        # named by the settings too: a run with other settings (nlist, say) keeps its own knowledge bank
        tag = "-".join(f"{k}{v}" for k, v in sorted(settings.items()) if k != "type")
        folder = root / f"{kind}-{args.count}{'-' + tag if tag else ''}"
        timing = _ingested(folder, settings, args.count, keyword=False)
        print(f"{kind}: measuring in a fresh process", flush=True)
        measured = _run_child("--child", str(folder), json.dumps(settings), str(queries_path), str(truth_path))
        result = {**measured, **{k: v for k, v in timing.items() if k not in ("count", "settings")}}
        results.append(result)
        done[key] = result
        done_path.write_text(json.dumps(done, indent=1))
        print(json.dumps(result), flush=True)
    memory: list[dict[str, Any]] = []
    if args.kb_memory:
        settings = index_settings(args.kb_memory, overrides)
        for keyword in (False, True):
            folder = root / f"{args.kb_memory}-{args.count}-kw{int(keyword)}"
            _ingested(folder, settings, args.count, keyword=keyword)
            memory.append(_run_child("--memory-child", str(folder), json.dumps(settings), str(queries_path),
                                     str(int(keyword))))
            print(json.dumps(memory[-1]), flush=True)
    base = next((r for r in results if r["type"] == "HNSW"), None)
    if base is not None:
        for result in results:
            result["memory_vs_hnsw"] = round(result["anon_delta_mb"] / max(base["anon_delta_mb"], 1e-9), 3)
            result["p50_vs_hnsw"] = round(result["kb"]["p50_ms"] / max(base["kb"]["p50_ms"], 1e-9), 2)
    report = {"count": args.count, "queries": args.queries, "machine": {**machine, "load_after": os.getloadavg()},
              "results": results, "kb_memory": memory}
    write_results(args.out, report)
    _table(results)
    print(f"written to {args.out}; load average now {os.getloadavg()}")


if __name__ == "__main__":
    main()

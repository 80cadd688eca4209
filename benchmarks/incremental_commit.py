"""Issue 34: what a FAISS commit costs, today's whole-index rewrite beside segments, in one run.

    python -m benchmarks.incremental_commit --size 200000 --old-tree /tmp/kb-old [--kinds FLAT HNSW] [--out FILE]

``--old-tree``: a checkout of the code to compare with (``git archive <commit> | tar -x -C /tmp/kb-old``). One
knowledge bank of ``--size`` synthetic chunks (384-dimension unit vectors, 40-120 words each, keyword index on:
default settings) is written once per index type by the old code, then copied: the old code measures its copy,
the new code opens the other (adopting the old single index as its first segment, no rewrite) and measures it.
Every measurement runs in a fresh process with ``PYTHONPATH`` set to the tree measured. Figures:

- commit seconds and bytes written (``/proc/self/io`` write_bytes of the process: index file, WAL, database)
  for 1, 100, 1,000 and 10,000 added documents (``--old-repeats`` caps the old code's rounds); the fsync floor
  (a 4 KB write, fsync of file and folder) and the commit floor (the syncs of a one-document commit without kb:
  a 4 KB segment file written and fsynced, renamed, its folder fsynced, a one-row SQLite WAL commit);
- first-query latency after a commit in another reader (its own store object, warm before the commit) beside
  its warm p50, unfiltered and then with a filter (``group == 3``: the metadata columns of the new generation);
  the segment files that first search read on its own thread; the reader's warm p50 right after (merging is
  off: each commit adds a segment to search); ``visible_after_ms``: from the commit's return
  until that reader's search with one of the added vectors finds it as its top hit (searched every millisecond:
  a big commit's segments load on a helper thread while the old generation answers); and once, the writer's own
  store object (warm) searching right after a commit of 1,000 documents (it takes its segment from memory);
- search p50/p99 of a reader process while idle, while a writer commits 10 documents at a time, and (new code)
  before, during, in the half second right after (the reader takes the output) and after a background merge of
  10 segments of 1,000 (``--merge-rounds`` times);
- 1,000 one-document commits (new code; merging on): seconds, bytes written and write amplification (bytes
  written over the bytes of the vectors and texts added); the old code's figure is 1,000 times its 1-document
  commit (rewriting everything each time), measured on ``--old-small`` commits (20).
- old and new alternate phase by phase (commits, searches, the stream), and each worker records the load average.

``python -m benchmarks.incremental_commit alternate FOLDER KIND OLD_TREE DOCUMENTS ROUNDS``: commit times of the
old tree and this one on a copy of a knowledge bank written by the benchmark (``--bases``), five commits at a time
in turn (``ROUNDS`` turns each).

``--bases DIR`` keeps the knowledge banks the old code writes (an HNSW one of 200k chunks takes most of an hour
on a busy 2-core machine) and reuses them in later runs.

Prints a table with ratios and the CPU's vector flags; writes JSON (default bench-results/incremental_commit.json).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.results import write_results
from benchmarks.suite import cpu_flags
from benchmarks.writer_throughput import WORDS
from kb_base.filters import parse_filter
from stores.base import Record, StoreContext
from stores.faiss.store import FaissStore

try:
    from stores.faiss.index import configure_search_threads
    from stores.faiss.merge import choose_merge
except ImportError:  # a tree from before segments (--old-tree): no merger, no merge phase
    choose_merge = configure_search_threads = None  # type: ignore[assignment]

ROOT = Path(__file__).resolve().parents[1]
SEARCH_SECONDS = 12.0
COMMIT_SIZES = ((1, 5), (100, 3), (1_000, 3), (10_000, 1))  # (documents a commit adds, rounds)


def _written() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    return 0


def _records(start: int, n: int, seed: int) -> list[Record]:
    """``n`` chunks of 40-120 words with unit vectors (``writer_throughput.synthetic_chunks``'s shape, made ~20x
    faster: one draw of words for all of them)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(40, 120, n)
    words = np.asarray(WORDS)[rng.integers(0, len(WORDS), int(lengths.sum()))].tolist()
    bounds = np.concatenate([[0], np.cumsum(lengths)]).tolist()
    texts = [f"chunk {start + i}: " + " ".join(words[bounds[i] : bounds[i + 1]]) for i in range(n)]
    vectors = rng.normal(size=(n, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return [Record(f"c{start + i}", t, {"group": (start + i) % 10}, v)
            for i, (t, v) in enumerate(zip(texts, vectors, strict=True))]


def _open(folder: Path, kind: str) -> FaissStore:
    return FaissStore(StoreContext("bench", folder, settings={"index": {"type": kind}}))


def _queries(n: int) -> np.ndarray:
    queries = np.random.default_rng(99).normal(size=(n, 384)).astype(np.float32)
    return queries / np.linalg.norm(queries, axis=1, keepdims=True)


def _stats(ms: list[float]) -> dict[str, float]:
    if not ms:
        return {"p50_ms": float("nan"), "p99_ms": float("nan"), "max_ms": float("nan"), "n": 0}
    values = np.array(ms)
    return {"p50_ms": round(float(np.percentile(values, 50)), 3), "p99_ms": round(float(np.percentile(values, 99)), 3),
            "max_ms": round(float(values.max()), 1), "n": len(ms)}


# --- worker commands (run with PYTHONPATH set to the tree measured) -----------------------------------------------


def build(folder: Path, kind: str, size: int) -> dict[str, Any]:
    store = _open(folder, kind)
    started = time.perf_counter()
    with store.begin(timeout=600) as tx:
        for start in range(0, size, 20_000):
            tx.upsert(_records(start, min(20_000, size - start), seed=start + 1))
    return {"seconds": round(time.perf_counter() - started, 1)}


def _fsync_floor(folder: Path) -> float:
    samples = []
    for i in range(10):
        path = folder / f"floor-{i}"
        started = time.perf_counter()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, b"x" * 4096)
        os.fsync(fd)
        os.close(fd)
        dir_fd = os.open(folder, os.O_RDONLY)
        os.fsync(dir_fd)
        os.close(dir_fd)
        samples.append(time.perf_counter() - started)
        path.unlink()
    return round(float(np.median(samples)) * 1000, 2)


def _commit_floor(folder: Path) -> float:
    """The syncs a one-document commit cannot avoid with segment files, without kb: a 4 KB segment file written
    with O_DIRECT and fsynced, renamed into place, its folder fsynced, then a one-row SQLite commit (WAL,
    synchronous=FULL, as the store's connections are). Median of 10, ms."""
    staging, final = folder / "floor-staging", folder / "floor-final"
    staging.mkdir(exist_ok=True)
    final.mkdir(exist_ok=True)
    conn = sqlite3.connect(folder / "floor.sqlite", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE IF NOT EXISTS t (k INTEGER PRIMARY KEY, v BLOB)")
    block = np.zeros(4096 * 2, dtype=np.uint8)
    aligned = block[-block.ctypes.data % 4096 :][:4096]  # O_DIRECT wants aligned memory
    samples = []
    for i in range(10):
        began = time.perf_counter()
        path = staging / f"{i}.faiss"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | getattr(os, "O_DIRECT", 0), 0o644)
        try:
            os.write(fd, memoryview(aligned))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(path, final / path.name)
        dir_fd = os.open(final, os.O_RDONLY)
        os.fsync(dir_fd)
        os.close(dir_fd)
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t VALUES (?, ?)", (i, b"x" * 1000))
        conn.execute("COMMIT")
        samples.append(time.perf_counter() - began)
    conn.close()
    for name in ("floor.sqlite", "floor.sqlite-wal", "floor.sqlite-shm"):
        (folder / name).unlink(missing_ok=True)
    shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(final, ignore_errors=True)
    return round(float(np.median(samples)) * 1000, 2)


def _inline_reads(store: FaissStore) -> list[int]:
    """A growing list, one entry per segment file ``store``'s loader reads on the calling thread (the main one);
    none when the tree measured has no loader (the whole-index code)."""
    reads: list[int] = []
    loader = getattr(store, "loader", None)
    if loader is None or not hasattr(loader, "_read"):
        return reads
    read, main = loader._read, threading.current_thread()

    def counting(number: int) -> Any:
        if threading.current_thread() is main:
            reads.append(number)
        return read(number)

    loader._read = counting
    return reads


def _visible_after(store: FaissStore, record: Record, since: float) -> tuple[float, int]:
    """(ms from ``since`` until ``store``'s search with ``record``'s vector finds it first, searches it took)."""
    for searches in range(1, 100_000):
        if store.similarity(record.vector, 1)[0].record.id == record.id:
            return round((time.perf_counter() - since) * 1000, 2), searches
        time.sleep(0.001)
    raise RuntimeError(f"{record.id} never became visible")


def _own_store_search(writer: FaissStore, next_id: int, queries: np.ndarray) -> dict[str, Any]:
    """The writing store object, warm (as a service that writes and searches), searching right after its own
    commit of 1,000 documents for one of them."""
    for query in queries[:50]:
        writer.similarity(query, 10)
    reads = _inline_reads(writer)
    batch = _records(next_id, 1000, seed=next_id)
    with writer.begin(timeout=600) as tx:
        tx.upsert(batch)
    began = time.perf_counter()
    top = writer.similarity(batch[0].vector, 1)[0].record.id
    return {"documents": 1000, "first_query_ms": round((time.perf_counter() - began) * 1000, 2),
            "finds_own_commit": top == batch[0].id, "files_read_inline": len(reads)}


def measure(folder: Path, kind: str, size: int, max_repeats: int) -> dict[str, Any]:
    started = time.perf_counter()
    writer = _open(folder, kind)
    out: dict[str, Any] = {"open_seconds": round(time.perf_counter() - started, 2)}
    reader = _open(folder, kind)
    queries = _queries(300)
    warm = []
    for query in queries[:200]:
        began = time.perf_counter()
        reader.similarity(query, 10)
        warm.append((time.perf_counter() - began) * 1000)
    out["reader_warm"] = _stats(warm[20:])
    flt = parse_filter({"group": 3})  # a tenth of the records
    filtered = []
    for query in queries[:20]:  # the first one reads the metadata columns
        began = time.perf_counter()
        reader.similarity(query, 10, flt)
        filtered.append((time.perf_counter() - began) * 1000)
    out["reader_warm_filtered"] = {**_stats(filtered[5:]), "first_ms": round(filtered[0], 1)}
    out["fsync_floor_ms"] = _fsync_floor(folder)
    out["commit_floor_ms"] = _commit_floor(folder)
    reads = _inline_reads(reader)
    next_id = size
    commits: dict[str, Any] = {}
    for n, repeats in COMMIT_SIZES:
        seconds, written, first, first_filtered, first_reads, visible, searches, warm = [], [], [], [], [], [], [], []
        for repeat in range(min(repeats, max_repeats)):
            batch = _records(next_id, n, seed=next_id)
            next_id += n
            before = _written()
            began = time.perf_counter()
            with writer.begin(timeout=600) as tx:
                tx.upsert(batch)
            committed = time.perf_counter()
            seconds.append(committed - began)
            written.append(_written() - before)
            read_before = len(reads)
            began = time.perf_counter()
            reader.similarity(queries[200 + repeat], 10)
            first.append((time.perf_counter() - began) * 1000)
            first_reads.append(len(reads) - read_before)
            after, count = _visible_after(reader, batch[n // 2], committed)
            visible.append(after)
            searches.append(count)
            began = time.perf_counter()
            reader.similarity(queries[250 + repeat], 10, flt)
            first_filtered.append((time.perf_counter() - began) * 1000)
            # the reference for the first query: warm searches of the knowledge bank as it is now (each commit adds
            # a segment to search; merging is off), not as it was before the commits
            for query in queries[:20]:
                began = time.perf_counter()
                reader.similarity(query, 10)
                warm.append((time.perf_counter() - began) * 1000)
        commits[str(n)] = {"commit_ms": round(float(np.median(seconds)) * 1000, 1), "rounds": len(seconds),
                           "bytes_written": int(np.median(written)),
                           "first_query_ms": round(float(np.median(first)), 2),
                           "warm_after_ms": round(float(np.median(warm)), 2),
                           "first_query_files_read_inline": first_reads,
                           "visible_after_ms": round(float(np.median(visible)), 2),
                           "visible_after_searches": searches,
                           "first_filtered_query_ms": round(float(np.median(first_filtered)), 2)}
    out["commits"] = commits
    out["own_store"] = _own_store_search(writer, next_id, queries)
    next_id += 1000
    out["next_id"] = next_id
    out["load_average"] = os.getloadavg()
    return out


def search(folder: Path, kind: str, seconds: float) -> dict[str, Any]:
    reader = _open(folder, kind)
    queries = _queries(500)
    for query in queries[:50]:
        reader.similarity(query, 10)
    print("ready", flush=True)
    samples: list[tuple[float, float]] = []
    stop = threading.Event()
    if seconds <= 0:  # until told: a line on stdin (the driver does not know how long a merge will take)
        threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
    end = time.time() + seconds if seconds > 0 else float("inf")
    i = 0
    while time.time() < end and not stop.is_set():
        began = time.perf_counter()
        reader.similarity(queries[i % len(queries)], 10)
        samples.append((time.time(), (time.perf_counter() - began) * 1000))
        i += 1
        time.sleep(0.002)  # a steady stream of requests, not a spinning loop
    return {"samples": samples}


def _start_searcher(tree: Path, folder: Path, kind: str, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen(_worker(tree, "search", folder, kind, str(seconds)), stdout=subprocess.PIPE, text=True,
                            stdin=subprocess.PIPE, env=_env(tree))
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        raise RuntimeError("the search process did not start")
    return proc


def _samples(proc: subprocess.Popen) -> list[tuple[float, float]]:
    out, _ = proc.communicate("stop\n", timeout=600)
    return json.loads(out.strip().splitlines()[-1])["samples"]


def _merge_phase(tree: Path, folder: Path, kind: str, writer: FaissStore, merger: Any,
                 next_id: int) -> tuple[dict[str, Any], int]:
    """Search latency in a reader process before, during and after one background merge of ten segments of 1,000
    (a tier-1 merge), run as the background merger runs it (its thread settings and throttle). The reader searches
    until the merge is committed and six seconds more: twelve seconds before it, so that the idle p99 is one of
    hundreds of samples (a first version had three seconds, about a hundred samples at 30 ms: a p99 that was the
    run's second slowest search), and no pause after the merge counted as merging."""
    merger.merge_now()  # first what the stream of small commits left (tier 0), unmeasured: the merge measured
    for _ in range(10):  # is then these ten segments' (a first version measured ten 10-document segments' merge)
        with writer.begin(timeout=600) as tx:
            tx.upsert(_records(next_id, 1000, seed=next_id))
        next_id += 1000
    proc = _start_searcher(tree, folder, kind, 0)
    time.sleep(SEARCH_SECONDS)
    began = time.time()
    merges = merger.merges

    merged_vectors = 0

    def merge_once() -> None:
        nonlocal merged_vectors
        configure_search_threads()  # one OpenMP thread, as the merger's own thread sets

        def choose(segments: Any) -> Any:
            nonlocal merged_vectors
            chosen = choose_merge(segments)
            merged_vectors = sum(s.live for s in chosen or ())
            return chosen

        merger.merge_once(choose, throttle=True)

    thread = threading.Thread(target=merge_once)
    thread.start()
    thread.join()
    ended = time.time()
    time.sleep(SEARCH_SECONDS / 2)
    samples = _samples(proc)
    return {"idle_before": _stats([ms for t, ms in samples if t < began]),
            "during_merge": {**_stats([ms for t, ms in samples if began <= t <= ended]),
                             "merge_seconds": round(ended - began, 1), "merges": merger.merges - merges,
                             "merged_vectors": merged_vectors},
            # the reader takes the merge output here (loaded on its helper thread while the inputs answer)
            "right_after": _stats([ms for t, ms in samples if ended < t <= ended + 0.5]),
            "idle_after": _stats([ms for t, ms in samples if t > ended + 0.5]),
            "load_average": os.getloadavg()}, next_id


def load(folder: Path, kind: str, next_id: int, tree: str, merge_rounds: int) -> dict[str, Any]:
    """Search latency idle and while 10-document commits stream in (and, new code, while a merge runs)."""
    out: dict[str, Any] = {}
    tree_path = Path(tree)
    proc = _start_searcher(tree_path, folder, kind, SEARCH_SECONDS / 2)
    out["idle"] = _stats([ms for _, ms in _samples(proc)])
    writer = _open(folder, kind)
    proc = _start_searcher(tree_path, folder, kind, SEARCH_SECONDS)
    end = time.time() + SEARCH_SECONDS
    commits = 0
    while time.time() < end:
        with writer.begin(timeout=600) as tx:
            tx.upsert(_records(next_id, 10, seed=next_id))
        next_id += 10
        commits += 1
        time.sleep(0.05)
    out["during_small_commits"] = {**_stats([ms for _, ms in _samples(proc)]), "commits": commits}
    merger = getattr(writer, "merger", None)
    if merger is not None:
        for round_number in range(merge_rounds):
            phase, next_id = _merge_phase(tree_path, folder, kind, writer, merger, next_id)
            out[f"merge_round_{round_number}"] = phase
        out["load_average"] = os.getloadavg()
    out["next_id"] = next_id
    return out


def small_commits(folder: Path, kind: str, next_id: int, count: int) -> dict[str, Any]:
    writer = _open(folder, kind)
    merger = getattr(writer, "merger", None)
    texts_bytes = 0
    before = _written()
    started = time.perf_counter()
    for i in range(count):
        batch = _records(next_id + i, 1, seed=next_id + i)
        texts_bytes += sum(len(r.text.encode()) + 4 * r.vector.size for r in batch)
        with writer.begin(timeout=600) as tx:
            tx.upsert(batch)
    if merger is not None:
        merger.wait()
    seconds = time.perf_counter() - started
    written = _written() - before
    return {"commits": count, "seconds": round(seconds, 1), "bytes_written": written,
            "bytes_added": texts_bytes, "write_amplification": round(written / texts_bytes, 1),
            "merges": getattr(merger, "merges", 0)}


def commits(folder: Path, kind: str, next_id: int, count: int, documents: int) -> dict[str, Any]:
    """``count`` commits of ``documents`` each (after one unmeasured: first-call costs), with another connection
    open on the database as a serving process has (else each commit's close, the last, checkpoints the WAL)."""
    other = sqlite3.connect(folder / "store" / "store.sqlite")
    other.execute("SELECT 1 FROM meta").fetchall()
    writer = _open(folder, kind)
    ms = []
    for i in range(count + 1):
        batch = _records(next_id + i * documents, documents, seed=next_id + i)
        began = time.perf_counter()
        with writer.begin(timeout=600) as tx:
            tx.upsert(batch)
        ms.append((time.perf_counter() - began) * 1000)
    other.close()
    return {"commit_ms": ms[1:]}


def alternate(folder: Path, kind: str, old_tree: Path, documents: int, rounds: int, next_id: int) -> dict[str, Any]:
    """Commit times of the old tree and this one on the same knowledge bank, five commits at a time in turn, so
    that the machine's other work falls on both alike (phase by phase was not enough on a machine whose fsyncs
    took 0.5 ms in one phase and 5 ms in the next)."""
    times: dict[str, list[float]] = {"old": [], "new": []}
    for _ in range(rounds):
        for name, tree in (("old", old_tree), ("new", ROOT)):
            out = _run(tree, "commits", folder, kind, next_id, 5, documents, extra_env={"KB_FAISS_MERGE": "0"})
            times[name] += out["commit_ms"]
            next_id += 6 * documents
    summary = {name: {"median_ms": round(float(np.median(v)), 1), "p25_ms": round(float(np.percentile(v, 25)), 1),
                      "p75_ms": round(float(np.percentile(v, 75)), 1), "n": len(v)} for name, v in times.items()}
    return {"documents": documents, "kind": kind, "summary": summary, "load_average": os.getloadavg(),
            "cpu_flags": cpu_flags()}


# --- the driver ----------------------------------------------------------------------------------------------------


def _env(tree: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1"}


def _worker(tree: Path, command: str, *args: Any) -> list[str]:
    return [sys.executable, str(ROOT / "benchmarks" / "incremental_commit.py"), command, *map(str, args), str(tree)]


def _run(tree: Path, command: str, *args: Any, extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    done = subprocess.run(_worker(tree, command, *args), capture_output=True, text=True,
                          env={**_env(tree), **(extra_env or {})}, timeout=7200)
    if done.returncode != 0:
        raise RuntimeError(f"{command} in {tree} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _ratio(old: float, new: float) -> str:
    return f"{old / new:.1f}x" if new else "-"


def run(size: int, kinds: list[str], old_tree: Path, work: Path, small: int, old_repeats: int, old_small: int,
        merge_rounds: int, bases: Path | None = None) -> dict[str, Any]:
    results: dict[str, Any] = {"size": size, "cpu_flags": cpu_flags(), "cpus": os.cpu_count(),
                               "load_average_at_start": os.getloadavg(), "old_repeats": old_repeats, "kinds": {}}
    trees = {"old": old_tree, "new": ROOT}
    no_merge = {"KB_FAISS_MERGE": "0"}  # commit and stream figures without a merge running beside them
    for kind in kinds:
        base = (bases or work) / f"{kind}-{size}-base"
        if bases is not None and (base / "store").is_dir():
            print(f"[{kind}] reusing {base}", flush=True)
            built = {"seconds": None, "reused": str(base)}
        else:
            print(f"[{kind}] writing {size} chunks with the old code ...", flush=True)
            built = _run(old_tree, "build", base, kind, size)
            print(f"[{kind}] written in {built['seconds']} s (load average {os.getloadavg()[0]:.1f})", flush=True)
        per_kind: dict[str, Any] = {"build_seconds": built["seconds"]}
        folders = {name: work / f"{kind}-{name}" for name in trees}
        for folder in folders.values():
            shutil.copytree(base, folder)
        if bases is None:
            shutil.rmtree(base, ignore_errors=True)
        # old and new alternate phase by phase, so the machine's other work falls on both alike
        for name, tree in trees.items():
            repeats = old_repeats if name == "old" else 99
            per_kind[name] = _run(tree, "measure", folders[name], kind, size, repeats, extra_env=no_merge)
            print(f"[{kind}] {name}: commits {per_kind[name]['commits']}", flush=True)
        for name, tree in trees.items():
            loaded = _run(tree, "load", folders[name], kind, per_kind[name]["next_id"], str(tree), merge_rounds,
                          extra_env=no_merge)
            per_kind[name]["search"] = loaded
            print(f"[{kind}] {name}: search {loaded}", flush=True)
        for name, tree in trees.items():
            count = small if name == "new" else old_small
            stream = _run(tree, "small", folders[name], kind, per_kind[name]["search"]["next_id"], count)
            if name == "old":
                stream["extrapolated_1000"] = {"bytes_written": stream["bytes_written"] * 1000 // count,
                                               "seconds": round(stream["seconds"] * 1000 / count)}
            per_kind[name]["small_commits"] = stream
            print(f"[{kind}] {name}: {count} one-document commits {stream}", flush=True)
            shutil.rmtree(folders[name], ignore_errors=True)
        results["kinds"][kind] = per_kind
    results["load_average_at_end"] = os.getloadavg()
    return results


def _merge_rounds(search: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(key, value) for key, value in search.items() if key.startswith("merge_round_")]


def report(results: dict[str, Any]) -> None:
    print(f"\n{results['size']} chunks, {results['cpus']} CPUs, flags {' '.join(results['cpu_flags'])}; load average "
          f"{results['load_average_at_start'][0]:.1f} at start, {results['load_average_at_end'][0]:.1f} at end")
    for kind, per in results["kinds"].items():
        old, new = per["old"], per["new"]
        print(f"\n{kind}                          old (--old-tree)     new (this tree)   old/new")
        for n in new["commits"]:
            o, w = old["commits"].get(n), new["commits"][n]
            if o is None:
                continue
            print(f"commit {n:>5} docs        {o['commit_ms']:>12.1f} ms {w['commit_ms']:>12.1f} ms "
                  f"{_ratio(o['commit_ms'], w['commit_ms']):>8}   (rounds {o['rounds']}/{w['rounds']})")
            print(f"  bytes written         {o['bytes_written']:>15,} {w['bytes_written']:>15,} "
                  f"{_ratio(o['bytes_written'], w['bytes_written']):>8}")
            print(f"  first query after     {o['first_query_ms']:>12.2f} ms {w['first_query_ms']:>12.2f} ms "
                  f"{_ratio(o['first_query_ms'], w['first_query_ms']):>8}")
            if "warm_after_ms" in w and "warm_after_ms" in o:
                print(f"  warm search then      {o['warm_after_ms']:>12.2f} ms {w['warm_after_ms']:>12.2f} ms")
            if "visible_after_ms" in w and "visible_after_ms" in o:
                ov, nv = o["visible_after_ms"], w["visible_after_ms"]
                print(f"  visible after         {ov:>12.2f} ms {nv:>12.2f} ms {_ratio(ov, nv):>8}")
            if "first_filtered_query_ms" in w:
                of, nf = o["first_filtered_query_ms"], w["first_filtered_query_ms"]
                print(f"  first filtered after  {of:>12.2f} ms {nf:>12.2f} ms {_ratio(of, nf):>8}")
        print(f"warm p50 (reader)       {old['reader_warm']['p50_ms']:>12.2f} ms "
              f"{new['reader_warm']['p50_ms']:>12.2f} ms")
        if "reader_warm_filtered" in new:
            print(f"warm p50 filtered       {old['reader_warm_filtered']['p50_ms']:>12.2f} ms "
                  f"{new['reader_warm_filtered']['p50_ms']:>12.2f} ms")
        if "own_store" in new and "own_store" in old:
            o, w = old["own_store"], new["own_store"]
            print(f"own store, 1,000 docs   {o['first_query_ms']:>12.2f} ms {w['first_query_ms']:>12.2f} ms "
                  f"(finds its commit: {o['finds_own_commit']}/{w['finds_own_commit']}; files read "
                  f"{o['files_read_inline']}/{w['files_read_inline']})")
        print(f"fsync floor (4 KB)      {old['fsync_floor_ms']:>12.2f} ms {new['fsync_floor_ms']:>12.2f} ms")
        if "commit_floor_ms" in new:
            print(f"commit floor (file, folder, WAL syncs) {new['commit_floor_ms']:.2f} ms (new code's run)")
        for phase in ("idle", "during_small_commits"):
            o, w = old["search"][phase], new["search"][phase]
            print(f"search p50/p99 {phase:<22} {o['p50_ms']:.2f}/{o['p99_ms']:.2f} ms "
                  f"{w['p50_ms']:.2f}/{w['p99_ms']:.2f} ms (max {o['max_ms']}/{w['max_ms']})")
        for key, phase in [(f"{name} {key}", phase) for name in ("old", "new")
                           for key, phase in _merge_rounds(per[name]["search"])]:
            before, during, after = phase["idle_before"], phase["during_merge"], phase["idle_after"]
            print(f"{key}: search p50/p99 idle before {before['p50_ms']:.2f}/{before['p99_ms']:.2f} ms, during "
                  f"{during['p50_ms']:.2f}/{during['p99_ms']:.2f} ms ({during['merge_seconds']} s, "
                  f"{during.get('merged_vectors', '?')} vectors), right after "
                  f"{phase['right_after']['p50_ms']:.2f}/{phase['right_after']['p99_ms']:.2f} ms, after "
                  f"{after['p50_ms']:.2f}/{after['p99_ms']:.2f} ms; p99 during/before "
                  f"{during['p99_ms'] / before['p99_ms']:.2f}x")
        s_old, s_new = old["small_commits"], new["small_commits"]
        print(f"{s_new['commits']} one-doc commits: new {s_new['seconds']} s, {s_new['bytes_written']:,} bytes, write "
              f"amplification {s_new['write_amplification']} ({s_new['merges']} merges); old ({s_old['commits']} "
              f"measured, scaled to 1,000) {s_old['extrapolated_1000']['seconds']} s, "
              f"{s_old['extrapolated_1000']['bytes_written']:,} bytes, write amplification "
              f"{s_old['write_amplification']}")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "commits":
        print(json.dumps(commits(Path(args[1]), args[2], int(args[3]), int(args[4]), int(args[5]))), flush=True)
        return 0
    if args and args[0] == "alternate":  # alternate FOLDER KIND OLD_TREE DOCUMENTS ROUNDS [NEXT_ID]
        out = alternate(Path(args[1]), args[2], Path(args[3]).resolve(), int(args[4]), int(args[5]),
                        int(args[6]) if len(args) > 6 else 50_000_000)
        print(json.dumps(out, indent=2), flush=True)
        return 0
    if args and args[0] in ("build", "measure", "search", "load", "small"):
        command, folder, kind = args[0], Path(args[1]), args[2]
        if command == "build":
            out = build(folder, kind, int(args[3]))
        elif command == "measure":
            out = measure(folder, kind, int(args[3]), int(args[4]))
        elif command == "search":
            out = search(folder, kind, float(args[3]))
        elif command == "load":
            out = load(folder, kind, int(args[3]), args[4], int(args[5]))
        else:
            out = small_commits(folder, kind, int(args[3]), int(args[4]))
        print(json.dumps(out), flush=True)
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=200_000)
    parser.add_argument("--kinds", nargs="+", default=["FLAT", "HNSW"], choices=["FLAT", "HNSW"])
    parser.add_argument("--old-tree", type=Path, required=True, help="a checkout of the code to compare with")
    parser.add_argument("--small-commits", type=int, default=1000)
    parser.add_argument("--old-repeats", type=int, default=99,
                        help="at most this many rounds per commit size, old code (1 at 1M: each rewrites it all)")
    parser.add_argument("--old-small", type=int, default=20, help="one-document commits measured on the old code")
    parser.add_argument("--merge-rounds", type=int, default=2,
                        help="merge phases (each: ten segments of 1,000 written, then merged while a reader searches)")
    parser.add_argument("--work", type=Path, help="a folder for the knowledge banks (default: a temporary one)")
    parser.add_argument("--bases", type=Path, help="keep the knowledge banks the old code writes here "
                        "(<kind>-<size>-base) and reuse them in later runs instead of writing them again")
    parser.add_argument("--out", type=Path, default=Path("bench-results/incremental_commit.json"))
    parsed = parser.parse_args(args)
    with tempfile.TemporaryDirectory(dir=parsed.work) as tmp:
        results = run(parsed.size, parsed.kinds, parsed.old_tree.resolve(), Path(tmp), parsed.small_commits,
                      parsed.old_repeats, parsed.old_small, parsed.merge_rounds, parsed.bases)
    report(results)
    write_results(parsed.out, results)
    print(f"\nwritten to {parsed.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Issue 34 follow-up: the memory of a FAISS process that only writes, while its merger chooses and runs merges.

    python -m benchmarks.merge_memory --vectors 200000 --old-tree /tmp/kb-old [--commits 30] [--out FILE]

``--old-tree``: a checkout of the code to compare with (``git archive <commit> | tar -x -C /tmp/kb-old``). One
knowledge bank of ``--vectors`` 384-dimension vectors is written by this tree with merging off, as many segments
as a steady state of the tiered policy holds with nothing to merge (nine per tier, tiers 1-3: 90% of the vectors
in the top tier), 1% of each segment's rows deleted (tombstones). It is copied once per tree; each tree then runs,
in a fresh process with ``PYTHONPATH`` set to it and background merging on, ``--commits`` one-document commits
back to back (no search), waits for its merger, and reports, for commits alone and for commits each preceded by a
look-up of records by id (what ``kb ingest`` and a folder sync do before each commit):

- peak ``RssAnon`` (sampled every 20 ms) and ``VmHWM`` above the process's figures after opening the store,
  and ``RssAnon`` at the end (what the process keeps);
- segment files read (``faiss.read_index`` calls, counted in the child) and their bytes;
- merges committed, merger threads started, and the process's CPU seconds (``getrusage``: user + system).

No wall-clock figures: the machine is shared. Prints a table with ratios and the CPU's vector flags; writes JSON
(default bench-results/merge_memory.json).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.results import write_results
from benchmarks.suite import cpu_flags
from stores.base import Record, StoreContext
from stores.faiss.store import FaissStore

DIM = 384
ROOT = Path(__file__).resolve().parents[1]


def _status_kb() -> dict[str, int]:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon"):
            fields[key] = int(value.split()[0])
    return fields


def _records(start: int, n: int) -> list[Record]:
    vectors = np.random.default_rng(start).normal(size=(n, DIM)).astype(np.float32)
    return [Record(f"d{start + i}", f"chunk {start + i}", {"part": (start + i) % 10}, v)
            for i, v in enumerate(vectors)]


def _store(folder: Path) -> FaissStore:
    return FaissStore(StoreContext("bench", folder, settings={"index": {"type": "FLAT"}}, keyword_index=False))


def build(folder: Path, vectors: int) -> dict[str, Any]:
    """Nine segments per tier for tiers 3, 2 and 1 (sizes in ratio 100:10:1), 1% of each segment deleted."""
    store = _store(folder)
    unit = vectors / (9 * 111)
    sizes = [max(100, int(unit * 100))] * 9 + [max(100, int(unit * 10))] * 9 + [max(100, int(unit))] * 9
    start = 0
    for size in sizes:
        with store.begin(timeout=60) as tx:  # one commit a segment, written in batches of 20,000
            for offset in range(0, size, 20_000):
                tx.upsert(_records(start + offset, min(20_000, size - offset)))
        start += size
        print(f"  segment of {size:,} written ({start:,} vectors)", flush=True)
    with store.begin(timeout=60) as tx:
        tx.delete([f"d{i}" for i in range(0, start, 100)])
    store.checkpoints.wait()
    store.close()
    return {"vectors": start, "segments": len(sizes), "deleted": len(range(0, start, 100)),
            "segment_sizes": sorted(set(sizes), reverse=True)}


def write_only(folder: Path, commits: int, lookups: bool) -> dict[str, Any]:
    """``commits`` one-document commits, back to back, then the merger's work waited for (in the tree measured);
    ``lookups``: each preceded by a read of the stored record by id, as ``kb ingest`` and a folder sync do before
    each commit (``writers/ingest.py``, ``writers/sync.py``: ``driver.get``)."""
    import faiss

    read: list[int] = []
    real_read = faiss.read_index

    def counted(path: str, *args: Any) -> Any:
        read.append(Path(path).stat().st_size)
        return real_read(path, *args)

    faiss.read_index = counted
    started: list[str] = []
    real_start = threading.Thread.start

    def start(thread: threading.Thread) -> None:
        started.append(thread.name)
        real_start(thread)

    threading.Thread.start = start  # type: ignore[method-assign]
    store = _store(folder)
    baseline = _status_kb()
    peak = {"anon": baseline["RssAnon"]}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            peak["anon"] = max(peak["anon"], _status_kb()["RssAnon"])

    sampler = threading.Thread(target=sample, name="anon-sampler", daemon=True)
    sampler.start()
    for i in range(commits):
        if lookups:
            store.get([f"d{10_000_000 + i}", "d5"])
        with store.begin(timeout=600) as tx:
            tx.upsert(_records(10_000_000 + i, 1))
    store.merger.wait()
    end = _status_kb()
    done.set()
    sampler.join()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    merges = store.merger.merges
    store.close()
    peak_anon = max(peak["anon"], end["RssAnon"])
    return {"commits": commits, "peak_anon_mb": round((peak_anon - baseline["RssAnon"]) / 1024, 1),
            "peak_rss_mb": round((end["VmHWM"] - baseline["VmRSS"]) / 1024, 1),
            "anon_at_end_mb": round((end["RssAnon"] - baseline["RssAnon"]) / 1024, 1),
            "segment_files_read": len(read), "segment_bytes_read": sum(read), "merges": merges,
            "merger_threads_started": started.count("kb-segment-merge"),
            "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 2)}


def _link_copy(source: Path, target: Path) -> None:
    """A copy whose segment files are hard links (immutable once written: a merge writes new ones), so the copies
    share their pages in the page cache instead of evicting another process's (the machine is shared)."""
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("segments"))
    shutil.copytree(source / "store" / "segments", target / "store" / "segments", copy_function=os.link)


def _child(tree: Path, merging: bool, *args: str) -> dict[str, Any]:
    """This script in a fresh process that imports kb from ``tree`` (its ``stores`` and ``benchmarks``)."""
    env = {**os.environ, "PYTHONPATH": str(tree), "KB_FAISS_MERGE": "1" if merging else "0", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), *args], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=7200, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{tree}: {done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vectors", type=int, default=200_000)
    parser.add_argument("--commits", type=int, default=30)
    parser.add_argument("--old-tree", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=None, help="a folder for the knowledge banks (default: a temp)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "merge_memory.json")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kb-merge-memory-", dir=args.work))
    try:
        base = work / "base"
        print(f"writing {args.vectors:,} vectors as many segments (merging off)", flush=True)
        layout = _child(ROOT, False, "build", str(base), str(args.vectors))
        results: dict[str, Any] = {"layout": layout, "cpu_flags": cpu_flags(), "load_average": os.getloadavg()}
        for phase, lookups in (("commits", "0"), ("lookup_and_commit", "1")):
            results[phase] = {}
            for name, tree in (("old", args.old_tree.resolve()), ("new", ROOT)):  # one at a time: memory apart
                copy = work / name
                _link_copy(base, copy)
                print(f"{phase}, {name}: {args.commits} one-document commits in a write-only process", flush=True)
                results[phase][name] = _child(tree, True, "write", str(copy), str(args.commits), lookups)
                shutil.rmtree(copy)
        print(f"\n{layout['vectors']:,} vectors in {layout['segments']} segments (flat, {DIM} dimensions), "
              f"{args.commits} one-document commits; CPU flags: {' '.join(results['cpu_flags'])}")
        for phase, title in (("commits", "commits alone"),
                             ("lookup_and_commit", "each commit after a look-up by id (as kb ingest, folder sync)")):
            old, new = results[phase]["old"], results[phase]["new"]
            print(f"\n{title}\n{'':28}{'old':>14}{'new':>14}{'old/new':>10}")
            for key in ("peak_anon_mb", "peak_rss_mb", "anon_at_end_mb", "segment_files_read",
                        "segment_bytes_read", "merges", "merger_threads_started", "cpu_seconds"):
                ratio = f"{old[key] / new[key]:.1f}" if new[key] else "-"
                print(f"{key:28}{old[key]:>14,}{new[key]:>14,}{ratio:>10}")
        write_results(args.out, results)
        print(f"\nwritten to {args.out}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "build":
        print(json.dumps(build(Path(sys.argv[2]), int(sys.argv[3]))))
    elif len(sys.argv) > 1 and sys.argv[1] == "write":
        print(json.dumps(write_only(Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1")))
    else:
        main()

"""Issue 34, the keyword half: what a small commit costs the BM25 index, old code beside new, in one run.

    python benchmarks/keyword_commits.py --chunks 1000000 --old-tree /tmp/kb-old [--commits 1000] [--out FILE]

``--old-tree``: a checkout of the code to compare with (``git archive <commit> | tar -x -C /tmp/kb-old``). A keyword
index of ``--chunks`` chunks of real text is written once by the old code (batches of 20,000, one transaction
each, as a bulk ingestion writes them), then copied: each code opens its own copy (the new code reading what the
old one wrote) and makes ``--commits`` commits of one document each, every one a SQLite transaction of its own
with the store's durability (WAL, ``synchronous=FULL``; SQLite's own checkpoints, in this process).

The text: SciFact's 5,183 abstracts (``/work/shared/datasets/scifact/corpus.jsonl``, read in place), cut into
sentences; a chunk is 2-5 consecutive sentences of a random abstract (~60-150 words). SciFact alone has ~40k
distinct terms, where a real million chunks has hundreds of thousands: so ~4% of the words of 7+ letters get one
of 676 two-letter endings, chosen at random (``_perturb``), which grows the vocabulary with a long tail of rare
terms the way more text does. The commits' documents are drawn the same way with another seed.

Figures, per code: keyword commit time p50/p99 (analysis, write and commit), bytes written per commit
(``/proc/self/io`` write_bytes: WAL, checkpoints), write amplification (bytes written over the bytes of text
added), the bucket rows a query term reads, and keyword query latency p50/p99 before and after the commits over
SciFact's real queries: uncached (no postings cache: what the first query after any commit pays; the OS page
cache is warm, as it is on a serving machine) and cached (the same queries again within one generation), each
measured in the commits' process and again in ``--query-rounds`` rounds where the two codes take turns (the
median of the rounds: other work on a shared machine comes and goes).
Prints a table with ratios, the CPU's vector flags and the load average; writes JSON (default
docs/benchmarks/keyword_commits.json).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.results import write_results
from benchmarks.suite import cpu_flags
from stores.keyword import KeywordIndex

ROOT = Path(__file__).resolve().parents[1]
SCIFACT = Path(os.environ.get("KB_SCIFACT", "/work/shared/datasets/scifact"))
_BUILD_BATCH = 20_000
_QUERIES = 300
_LETTERS = np.array(list("abcdefghijklmnopqrstuvwxyz"))


def _written() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    return 0


def _sentences() -> list[list[str]]:
    """Each abstract's sentences (title first)."""
    out = []
    with open(SCIFACT / "corpus.jsonl", encoding="utf-8") as lines:
        for line in lines:
            row = json.loads(line)
            parts = [row["title"], *re.split(r"(?<=[.!?])\s+", row["text"])]
            out.append([p for p in parts if p.strip()])
    return out


def _perturb(text: str, rng: np.random.Generator) -> str:
    """~4% of the long words get a random two-letter ending: new rare terms, as a larger corpus would have."""
    words = text.split(" ")
    long_words = [i for i, w in enumerate(words) if len(w) >= 7 and w.isalpha()]
    if long_words:
        chosen = np.flatnonzero(rng.random(len(long_words)) < 0.04)
        for at in chosen.tolist():
            words[long_words[at]] += "".join(rng.choice(_LETTERS, 2))
    return " ".join(words)


def chunks(start: int, n: int, seed: int, sentences: list[list[str]]) -> list[str]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        abstract = sentences[int(rng.integers(len(sentences)))]
        count = int(rng.integers(2, 6))
        first = int(rng.integers(max(1, len(abstract) - count + 1)))
        out.append(_perturb(" ".join(abstract[first : first + count]), rng))
    return out


def _queries() -> list[str]:
    with open(SCIFACT / "queries-train.jsonl", encoding="utf-8") as lines:
        return [json.loads(line)["text"] for line in lines][:_QUERIES]


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")  # the store's durability
    return conn


def _stats(ms: list[float]) -> dict[str, float]:
    values = np.array(ms)
    return {"p50_ms": round(float(np.percentile(values, 50)), 3), "p99_ms": round(float(np.percentile(values, 99)), 3),
            "max_ms": round(float(values.max()), 1), "n": len(ms)}


# --- worker commands (run with PYTHONPATH set to the tree measured) -----------------------------------------------


def build(path: Path, n: int) -> dict[str, Any]:
    sentences = _sentences()
    conn = _connect(path)
    index = KeywordIndex()
    conn.execute("BEGIN IMMEDIATE")
    index.create(conn)
    conn.execute("COMMIT")
    started = time.perf_counter()
    for start in range(0, n, _BUILD_BATCH):
        texts = chunks(start, min(_BUILD_BATCH, n - start), start + 1, sentences)
        conn.execute("BEGIN IMMEDIATE")
        index.write(conn, [index.analyse(list(range(start + 1, start + 1 + len(texts))), texts)])
        conn.execute("COMMIT")
        print(f"  built {start + len(texts):,} chunks", file=sys.stderr, flush=True)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return {"seconds": round(time.perf_counter() - started, 1),
            "terms": conn.execute("SELECT value FROM kw_stats WHERE key = 'next_term'").fetchone()[0] - 1,
            "postings": conn.execute("SELECT value FROM kw_stats WHERE key = 'postings'").fetchone()[0]}


def rows_read(path: Path) -> dict[str, Any]:
    """Postings rows a query term reads, over the queries' known terms (``KeywordIndex.rows_read``, new code: run
    on either code's index, it only reads), and the most rows any bucket has."""
    conn = _connect(path)
    index = KeywordIndex()
    counts = [c for query in _queries() for c in index.rows_read(conn, query)]
    values = np.asarray(counts or [0])
    most = conn.execute("SELECT COUNT(*) AS n FROM kw_buckets GROUP BY bucket ORDER BY n DESC LIMIT 1").fetchone()
    return {"mean": round(float(values.mean()), 2), "p99": int(np.percentile(values, 99)), "max": int(values.max()),
            "max_any_bucket": int(most[0]) if most else 0,
            "rows": conn.execute("SELECT COUNT(*) FROM kw_buckets").fetchone()[0]}


def _query_latency(conn: sqlite3.Connection, index: KeywordIndex, queries: list[str]) -> dict[str, Any]:
    uncached, cached = [], []
    answers = []
    for query in queries:
        started = time.perf_counter()
        answers.append(index.search(conn, query, 10))
        uncached.append((time.perf_counter() - started) * 1000)
    generation = ("bench", time.time())
    for query in queries:  # fill the cache, then time the same queries again
        index.search(conn, query, 10, cache_key=generation)
    for query in queries:
        started = time.perf_counter()
        index.search(conn, query, 10, cache_key=generation)
        cached.append((time.perf_counter() - started) * 1000)
    return {"uncached": _stats(uncached), "cached": _stats(cached),
            "answers": [[[doc, round(score, 9)] for doc, score in a] for a in answers[:50]]}


def queries(path: Path) -> dict[str, Any]:
    """Query latency alone on an index as it is (no open, nothing written): one round of the interleaved
    comparison."""
    out = _query_latency(_connect(path), KeywordIndex(), _queries())
    del out["answers"]
    return out


def measure(path: Path, n: int, commits: int) -> dict[str, Any]:
    sentences = _sentences()
    queries = _queries()
    conn = _connect(path)
    index = KeywordIndex()
    conn.execute("BEGIN IMMEDIATE")
    index.create(conn)  # the new code on the old code's index: its open (a migration, if any) in one transaction
    conn.execute("COMMIT")
    before = _query_latency(conn, index, queries)
    texts = chunks(n, commits, 7_000_001, sentences)
    seconds, written = [], []
    started_all, written_all = time.perf_counter(), _written()
    for i, text in enumerate(texts):
        mark, started = _written(), time.perf_counter()
        analysed = index.analyse([n + 1 + i], [text])
        conn.execute("BEGIN IMMEDIATE")
        index.write(conn, [analysed])
        conn.execute("COMMIT")
        seconds.append((time.perf_counter() - started) * 1000)
        written.append(_written() - mark)
        if (i + 1) % 100 == 0:
            print(f"  {i + 1} commits, {sum(written) / 2**20:.0f} MB written", file=sys.stderr, flush=True)
    total_seconds, total_written = time.perf_counter() - started_all, _written() - written_all
    text_bytes = sum(len(t.encode()) for t in texts)
    after = _query_latency(conn, index, queries)
    return {"commits": commits, "commit": _stats(seconds), "seconds": round(total_seconds, 2),
            "bytes_written": total_written, "bytes_per_commit": {
                "mean": int(np.mean(written)), "p50": int(np.percentile(written, 50)),
                "p99": int(np.percentile(written, 99)), "max": int(max(written))},
            "text_bytes": text_bytes, "write_amplification": round(total_written / text_bytes, 1),
            "queries_before": before, "queries_after": after,
            "file_bytes": path.stat().st_size}


# --- the driver ----------------------------------------------------------------------------------------------------


def _run(tree: Path, command: str, *args: Any) -> dict[str, Any]:
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), command, *map(str, args)],
                          stdout=subprocess.PIPE, text=True, timeout=4 * 3600,
                          env={**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1"})
    if done.returncode != 0:
        raise RuntimeError(f"{command} in {tree} failed (exit {done.returncode})")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _ratio(old: float, new: float) -> str:
    return f"{old / new:.2f}x" if new else "-"


def run(n: int, commits: int, old_tree: Path, work: Path, query_rounds: int) -> dict[str, Any]:
    results: dict[str, Any] = {"chunks": n, "commits": commits, "cpu_flags": cpu_flags(), "cpus": os.cpu_count(),
                               "load_average_at_start": os.getloadavg()}
    base, built = work / f"base-{n}.sqlite", work / f"base-{n}.json"
    if built.exists():  # a base a run before built (--work kept): the commits start from the same index
        results["build"] = json.loads(built.read_text())
    else:
        print(f"writing {n:,} chunks with the old code ...", flush=True)
        results["build"] = _run(old_tree, "build", base, n)
        built.write_text(json.dumps(results["build"]))
    print(f"built: {results['build']}", flush=True)
    results["rows_read_before"] = _run(ROOT, "rows", base)
    trees = {"old": old_tree, "new": ROOT}
    for name, tree in trees.items():
        copy = work / f"{name}.sqlite"
        shutil.copy(base, copy)
        results[name] = _run(tree, "measure", copy, n, commits)
        results[name]["rows_read_after"] = _run(ROOT, "rows", copy)
        print(f"{name}: {results[name]['commit']}, {results[name]['bytes_written']:,} bytes", flush=True)
    # query latency again, the two codes taking turns (other work on the machine comes and goes): the base index
    # for both (before), then each code on its own index after the commits; the median of the rounds' figures
    rounds: dict[str, list[dict[str, Any]]] = {f"{name}_{phase}": [] for name in trees for phase in ("before", "after")}
    for _ in range(query_rounds):
        for name, tree in trees.items():
            rounds[f"{name}_before"].append(_run(tree, "queries", base))
            rounds[f"{name}_after"].append(_run(tree, "queries", work / f"{name}.sqlite"))
    results["query_rounds"] = {key: {kind: {stat: float(np.median([r[kind][stat] for r in runs]))
                                            for stat in ("p50_ms", "p99_ms")} for kind in ("uncached", "cached")}
                               for key, runs in rounds.items() if runs}
    for name in trees:
        (work / f"{name}.sqlite").unlink()
    results["same_answers_before"] = results["old"]["queries_before"]["answers"] == \
        results["new"]["queries_before"]["answers"]
    results["same_answers_after"] = results["old"]["queries_after"]["answers"] == \
        results["new"]["queries_after"]["answers"]
    results["load_average_at_end"] = os.getloadavg()
    return results


def report(r: dict[str, Any]) -> None:
    old, new = r["old"], r["new"]
    print(f"\n{r['chunks']:,} chunks ({r['build']['terms']:,} terms, {r['build']['postings']:,} postings), "
          f"{r['commits']} one-document commits; {r['cpus']} CPUs, flags {' '.join(r['cpu_flags'])}; load average "
          f"{r['load_average_at_start'][0]:.1f} at start, {r['load_average_at_end'][0]:.1f} at end")
    print(f"{'':34}{'old':>16}{'new':>16}{'old/new':>10}")

    def line(label: str, o: float, w: float, unit: str) -> None:
        print(f"{label:34}{o:>14,.2f}{unit:>2}{w:>14,.2f}{unit:>2}{_ratio(o, w):>10}")

    line("commit p50", old["commit"]["p50_ms"], new["commit"]["p50_ms"], "ms")
    line("commit p99", old["commit"]["p99_ms"], new["commit"]["p99_ms"], "ms")
    line("commit max", old["commit"]["max_ms"], new["commit"]["max_ms"], "ms")
    line("bytes written per commit (mean)", old["bytes_per_commit"]["mean"] / 1024,
         new["bytes_per_commit"]["mean"] / 1024, "KB")
    line("bytes written per commit (p99)", old["bytes_per_commit"]["p99"] / 1024,
         new["bytes_per_commit"]["p99"] / 1024, "KB")
    line("write amplification", old["write_amplification"], new["write_amplification"], "x")
    for phase in ("before", "after"):
        for kind in ("uncached", "cached"):
            o, w = old[f"queries_{phase}"][kind], new[f"queries_{phase}"][kind]
            line(f"query {kind} p50 ({phase})", o["p50_ms"], w["p50_ms"], "ms")
            line(f"query {kind} p99 ({phase})", o["p99_ms"], w["p99_ms"], "ms")
    before = r["rows_read_before"]
    print(f"rows a query term reads before: mean {before['mean']}, max {before['max']} (most in a bucket "
          f"{before['max_any_bucket']})")
    for name in ("old", "new"):
        after = r[name]["rows_read_after"]
        print(f"rows a query term reads after, {name}: mean {after['mean']}, p99 {after['p99']}, max {after['max']} "
              f"(most in a bucket {after['max_any_bucket']}, {after['rows']:,} rows in all)")
    for phase in ("before", "after"):
        for kind in ("uncached", "cached"):
            o, w = r["query_rounds"].get(f"old_{phase}"), r["query_rounds"].get(f"new_{phase}")
            if o and w:
                line(f"query {kind} p50 ({phase}, rounds)", o[kind]["p50_ms"], w[kind]["p50_ms"], "ms")
                line(f"query {kind} p99 ({phase}, rounds)", o[kind]["p99_ms"], w[kind]["p99_ms"], "ms")
    print(f"same top-10 answers (50 queries) before: {r['same_answers_before']}, after: {r['same_answers_after']}")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "build":
        print(json.dumps(build(Path(args[1]), int(args[2]))), flush=True)
        return 0
    if args and args[0] == "queries":
        print(json.dumps(queries(Path(args[1]))), flush=True)
        return 0
    if args and args[0] == "rows":
        print(json.dumps(rows_read(Path(args[1]))), flush=True)
        return 0
    if args and args[0] == "measure":
        print(json.dumps(measure(Path(args[1]), int(args[2]), int(args[3]))), flush=True)
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=1_000_000)
    parser.add_argument("--commits", type=int, default=1000)
    parser.add_argument("--query-rounds", type=int, default=3, help="interleaved query rounds per code and state")
    parser.add_argument("--old-tree", type=Path, required=True, help="a checkout of the code to compare with")
    parser.add_argument("--work", type=Path,
                        help="a folder kept for the next run, which reuses its base index (default: temporary)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "keyword_commits.json")
    parsed = parser.parse_args(args)
    if parsed.work:  # kept: its base index is reused by the next run
        parsed.work.mkdir(parents=True, exist_ok=True)
        results = run(parsed.chunks, parsed.commits, parsed.old_tree.resolve(), parsed.work, parsed.query_rounds)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            results = run(parsed.chunks, parsed.commits, parsed.old_tree.resolve(), Path(tmp), parsed.query_rounds)
    report(results)
    write_results(parsed.out, results)
    print(f"\nwritten to {parsed.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

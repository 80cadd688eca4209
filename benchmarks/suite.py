"""``kb bench``: kb against its peers, same vectors, texts and queries, in one run; JSON report and PNG charts.

    kb bench                                   # 10k and 100k chunks, every peer, REST, end to end
    kb bench --sizes 10000,100000,1000000      # adds 1M (about an hour more on 2 cores)
    kb bench --sizes 10000 --skip rest,e2e     # quick look

Per corpus size, every peer ingests in a process of its own (chunks/s, disk, peak RSS), then a second
process opens it cold and times its searches with recall@10 (``peer_run``). Then, up to ``--rest-max``
chunks, a ``kb serve`` (the HNSW knowledge bank) and a ``chroma run`` (HNSW too) answer the same query vectors
from 1, 4 and 16 clients, and their recall@10 over REST is measured.
End to end with the real model on SciFact abstracts (run first): kb's ingestion beside the bare model's
own encoding of the same texts, and a repeated query text served from the query cache.
Targets from the issue are checked on ratios measured in this run and printed as PASS/MISS.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from benchmarks import rest_peers
from benchmarks.corpus import exact_neighbours, load
from benchmarks.e2e import bench_end_to_end
from benchmarks.markdown import write_report
from benchmarks.targets import print_summary

PEERS = ["faiss-flat", "kb-flat", "kb-flat-vectors", "langchain-faiss", "langchain-chroma", "faiss-hnsw", "kb-hnsw"]
# Not in the side-by-side search comparison: it searches exactly as kb-flat does.
NOT_COMPARED = {"kb-flat-vectors"}
# Served over REST beside the Chroma server: both approximate (HNSW), both with their recall measured.
REST_PEER = "kb-hnsw"
# The ingestion ratios are checked on rounds run back to back: LangChain's FAISS, then kb with and without its
# keyword index, and kb written as LangChain users write it (lists of floats, kb's modules loaded in the write),
# in a rotating order. One run of each, minutes apart, measured this machine's drift as much as the code (the
# same kb-flat load took 2.4 s to 4.1 s within ten minutes).
INGEST_ROUND_PEERS = ["langchain-faiss", "kb-flat", "kb-flat-vectors", "kb-flat-lists"]
INGEST_ROUNDS = 5
# Peers measured in the ingestion rounds only, whenever kb-flat is benchmarked (they search as kb-flat does).
INGEST_ONLY = {"kb-flat-lists": "kb-flat"}


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cpus": os.cpu_count(), "cpu": cpu, "cpu_flags": cpu_flags(), "memory_gib": round(memory, 1),
            "platform": platform.platform(), "python": platform.python_version()}


SIMD_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "amx_tile")


def cpu_flags() -> list[str]:
    """The vector instruction sets of this CPU that faiss, numpy and numba may use (their speed depends on them)."""
    try:
        flags = next(line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("flags"))
    except (OSError, StopIteration):
        return []
    return [flag for flag in SIMD_FLAGS if flag in flags]


def run_peer(phase: str, peer: str, size: int, folder: Path, work: Path) -> dict[str, Any]:
    out = work / f"{peer}-{size}-{phase}.json"
    command = [sys.executable, "-m", "benchmarks.peer_run", phase, peer, str(size), str(folder), str(out)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{peer} {phase} at {size:,} chunks failed:\n{result.stderr[-3000:]}")
    return json.loads(out.read_text())


def bench_size(size: int, peers: list[str], work: Path, report: dict[str, Any]) -> None:
    corpus = load(size)
    exact_neighbours(corpus)  # computed once here, read by every peer's process
    results = report["sizes"].setdefault(str(size), {})
    for peer in tqdm(peers, desc=f"{size:,} chunks", unit="peer"):
        folder = work / f"{peer}-{size}"
        shutil.rmtree(folder, ignore_errors=True)
        started = time.monotonic()
        ingest = run_peer("ingest", peer, size, folder, work)
        serve = run_peer("serve", peer, size, folder, work)
        results[peer] = {"ingest": ingest, "serve": serve}
        tqdm.write(f"  {peer:<17} ingest {ingest['chunks_per_second']:>9,.0f} chunks/s | similarity p50 "
                   f"{serve['similarity']['p50_ms']:6.2f} ms recall@10 {serve['similarity']['recall_at_10']:.3f} "
                   f"| {time.monotonic() - started:5.0f}s")
    ingest_rounds(size, round_peers(peers), work, report)
    # The peers side by side in one process, query by query: the ratios the targets are checked on.
    out = work / f"compare-{size}.json"
    compared = [p for p in peers if p not in NOT_COMPARED]
    command = [sys.executable, "-m", "benchmarks.peer_run", "compare", ",".join(compared), str(size), str(work),
               str(out)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"side-by-side comparison at {size:,} chunks failed:\n{result.stderr[-3000:]}")
    report["compare"][str(size)] = json.loads(out.read_text())
    tqdm.write("  side by side, one process: " + " | ".join(
        f"{name} p50 {fig['p50_ms']:.3f} ms (recall {fig['recall_at_10']:.3f})"
        for name, fig in report["compare"][str(size)].items()))
    for peer in peers:
        if peer != REST_PEER:  # its folder is kept for the REST comparison
            shutil.rmtree(work / f"{peer}-{size}", ignore_errors=True)


def round_peers(peers: list[str]) -> list[str]:
    """The peers of the ingestion rounds for a run of ``peers``: those of them that take part in rounds, and the
    ingestion-only peers whose search twin is benchmarked."""
    return [p for p in INGEST_ROUND_PEERS if p in peers or INGEST_ONLY.get(p) in peers]


def ingest_rounds(size: int, peers: list[str], work: Path, report: dict[str, Any]) -> None:
    """``INGEST_ROUNDS`` more ingestions of each of ``peers``, back to back, the order rotating every round."""
    if "langchain-faiss" not in peers or len(peers) < 2:
        return
    seconds: dict[str, list[float]] = {peer: [] for peer in peers}
    settle: dict[str, list[float]] = {peer: [] for peer in peers}  # work left running after the clock stopped
    for round_number in range(INGEST_ROUNDS):
        order = peers[round_number % len(peers):] + peers[: round_number % len(peers)]
        for peer in order:
            folder = work / f"round-{peer}-{size}"
            shutil.rmtree(folder, ignore_errors=True)
            result = run_peer("ingest", peer, size, folder, work)
            seconds[peer].append(result["seconds"])
            settle[peer].append(result.get("settle_seconds", 0.0))
            shutil.rmtree(folder, ignore_errors=True)
    report.setdefault("ingest_rounds", {})[str(size)] = seconds
    report.setdefault("ingest_settle", {})[str(size)] = settle
    tqdm.write(f"  ingestion, {INGEST_ROUNDS} rounds back to back: " + " | ".join(
        f"{peer} " + "/".join(f"{s:.2f}" for s in runs) + " s" for peer, runs in seconds.items()))


def bench_rest(size: int, work: Path, clients: list[int], seconds: float, workers: int,
               report: dict[str, Any], logs: Path) -> None:
    """kb's HNSW knowledge bank behind ``kb serve`` against a Chroma server (HNSW too), with recall of both.

    The servers' output is kept in ``logs`` (``kb-serve-<size>.log``, ``chroma-server-<size>.log``)."""
    corpus = load(size)
    exact = exact_neighbours(corpus)
    home = work / f"{REST_PEER}-{size}"
    out: dict[str, Any] = {}
    with rest_peers.kb_server(home, workers, logs / f"kb-serve-{size}.log") as (url, _):
        out["kb"] = [rest_peers.load_test(url, rest_peers.kb_body, corpus.queries, n, seconds) for n in clients]
        out["kb_recall_at_10"] = rest_peers.recall_over_rest(url, rest_peers.kb_body, rest_peers.kb_ids,
                                                             corpus.queries, exact)
    with rest_peers.chroma_server(corpus, work / f"chroma-server-{size}", logs / f"chroma-server-{size}.log") as url:
        out["chroma-server"] = [rest_peers.load_test(url, rest_peers.chroma_body, corpus.queries, n, seconds)
                                for n in clients]
        out["chroma-server_recall_at_10"] = rest_peers.recall_over_rest(url, rest_peers.chroma_body,
                                                                        rest_peers.chroma_ids, corpus.queries, exact)
    report["rest"][str(size)] = out
    for name in ("kb", "chroma-server"):
        tqdm.write("  " + name.ljust(14) + " | ".join(f"{r['clients']:>2} clients {r['qps']:7.0f} q/s p50 "
                                                        f"{r['p50_ms']:6.2f} ms" for r in out[name])
                   + f" | recall@10 {out[name + '_recall_at_10']:.3f}")


def bench_search_scale(size: int, work: Path, report: dict[str, Any]) -> None:
    """Keyword beside bm25s, hybrid and filtered similarity by selectivity, on the HNSW knowledge bank."""
    out = work / f"search-scale-{size}"
    command = [sys.executable, "-m", "benchmarks.search_scale", "--sizes", str(size), "--out", str(out),
               "--kb-folder", str(work / f"{REST_PEER}-{size}")]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"search at scale ({size:,} chunks) failed:\n{result.stderr[-3000:]}")
    tqdm.write("\n".join("  " + line.strip() for line in result.stdout.splitlines() if "report:" not in line))
    report.setdefault("scale", {})[str(size)] = json.loads((out / "search_scale.json").read_text())["sizes"][str(size)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kb bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000", help="corpus sizes, comma-separated")
    parser.add_argument("--peers", default=",".join(PEERS))
    parser.add_argument("--rest-max", type=int, default=100_000, help="largest size for the REST comparison")
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--kb-workers", type=int, default=os.cpu_count() or 1,
                        help="uvicorn worker processes for kb serve (Chroma's server uses every core too)")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each REST load level")
    parser.add_argument("--e2e-docs", type=int, default=300, help="SciFact abstracts for the end-to-end run")
    parser.add_argument("--skip", default="", help="parts to skip: rest, e2e, scale (keyword/hybrid/filtered)")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    peers = [p for p in args.peers.split(",") if p]
    skip = set(filter(None, args.skip.split(",")))
    report: dict[str, Any] = {"benchmark": "kb bench", "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                              "machine": machine(), "sizes": {}, "compare": {}, "rest": {}, "e2e": {}}
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="kb-bench-"))
    try:
        if "e2e" not in skip:  # first: minutes, so that a report cut short at a big size still has it

            report["e2e"] = bench_end_to_end(args.e2e_docs, work / "e2e")
        for size in sizes:
            bench_size(size, peers, work, report)
            if "rest" not in skip and size <= args.rest_max and REST_PEER in peers:
                bench_rest(size, work, [int(c) for c in args.clients.split(",")], args.seconds, args.kb_workers,
                           report, args.out)
            if "scale" not in skip and size >= 100_000 and REST_PEER in peers:
                bench_search_scale(size, work, report)
            shutil.rmtree(work / f"{REST_PEER}-{size}", ignore_errors=True)
            write_report(report, args.out)  # so far: a failure at a bigger size keeps what was measured
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    charts = write_report(report, args.out)
    print_summary(report)
    print(f"report: {args.out / 'bench.json'} and {args.out / 'bench.md'}; charts: "
          f"{', '.join(str(c) for c in charts)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Given vectors written the way LangChain users write them, on real text: kb against LangChain's FAISS.

    python -m benchmarks.langchain_ingest --chunks 100000 --rounds 3 --out bench-results/langchain_ingest.json
    git archive <commit> | tar -x -C /tmp/kb-before    # then, to measure that commit's kb in the same rounds:
    python -m benchmarks.langchain_ingest --baseline /tmp/kb-before

Texts: chunks of 60 words of the Debian documentation under /usr/share/doc (plain and gzipped files, read in
place, in path order). Vectors: SciFact's all-MiniLM-L6-v2 document vectors (``../shared/datasets/scifact``),
repeated in order: given vectors, as an embedding API returns them, Python lists of floats. Metadata: the file
and the chunk's number. No ids (LangChain users seldom pass them: both sides make UUIDs).

Every peer writes the same chunks in batches of 10,000 through LangChain's API, durably for kb:

- ``kb``: ``as_langchain_vectorstore().add_embeddings`` in one writer, with kb's BM25 index (the default);
- ``kb-vectors``: the same, vector-only (``keyword.index`` false), like for like with LangChain's FAISS;
- ``langchain-faiss``: ``FAISS.from_embeddings`` then ``add_embeddings``, and ``save_local``;
- ``kb-baseline`` (with ``--baseline DIR``): ``kb`` as the source tree in DIR has it (another commit), run the
  same way in the same rounds, for before/after figures measured side by side.

After a kb write (off the clock), each kb run measures keyword search on what it wrote: ``QUERIES`` queries of two
to three words taken from the chunks (names, options, paths: what a reader of these documents would type), through
``core.search(search_type="keyword", k=10)``, three rounds; the p50 of all, and of the first round (each query's
first time: nothing cached). And the bytes of the keyword index's tables (``kw_*``, SQLite's ``dbstat``).

Each run is a process of its own, as a user's script is: it imports kb or LangChain, builds the lists (off the
clock), then writes; kb's modules that load on a first write (the keyword kernels: numba) load on the clock. The
runs of a round go back to back, the order rotating; ratios are taken round by round and their median reported.
Unlike ``kb bench``'s synthetic corpus (13.5k distinct words in 100k chunks), real text keeps bringing new words
(~170k distinct tokens in these 100k chunks): the BM25 index's work grows with them.
"""

from __future__ import annotations

import argparse
import gzip
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

from benchmarks.results import write_results

DOCS = Path("/usr/share/doc")
# beside the repository (``../shared``), as the dataset's README asks; KB_SCIFACT moves it
SCIFACT = Path(os.environ.get("KB_SCIFACT") or Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
               / "scifact")
WORDS = 60
BATCH = 10_000
PEERS = ["kb", "kb-vectors", "langchain-faiss"]
BASELINE = "kb-baseline"
QUERIES = 200


def debian_chunks(count: int, words: int = WORDS) -> tuple[list[str], list[str]]:
    """``count`` chunks of ``words`` words of the Debian documentation, and the file each comes from."""
    chunks: list[str] = []
    sources: list[str] = []
    for path in sorted(DOCS.rglob("*")):
        if not path.is_file() or path.is_symlink():
            continue
        try:
            raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
            tokens = raw.decode("utf-8").split()
        except (OSError, UnicodeDecodeError, EOFError, gzip.BadGzipFile):
            continue  # binary or not UTF-8
        for start in range(0, len(tokens) - words // 2, words):
            chunks.append(" ".join(tokens[start : start + words]))
            sources.append(str(path.relative_to(DOCS)))
            if len(chunks) == count:
                return chunks, sources
    raise SystemExit(f"{DOCS} holds only {len(chunks)} chunks of {words} words")


def keyword_queries(texts: list[str], count: int = QUERIES) -> list[str]:
    """``count`` queries of 2-3 consecutive words of chunks spread over the corpus (fixed: the same every run)."""
    out = []
    for i in range(count):
        words = texts[(i * 7919) % len(texts)].split()
        start = (i * 13) % max(1, len(words) - 3)
        out.append(" ".join(words[start : start + 2 + i % 2]))
    return out


def keyword_figures(core: Any, texts: list[str]) -> dict[str, float]:
    """Keyword search p50 over three rounds and in the first (ms), and the keyword tables' bytes."""
    queries = keyword_queries(texts)
    rounds: list[list[float]] = []
    for _ in range(3):
        times = []
        for query in queries:
            started = time.perf_counter()
            core.search(query=query, k=10, search_type="keyword")
            times.append((time.perf_counter() - started) * 1000)
        rounds.append(times)
    every = sorted(t for times in rounds for t in times)
    (database,) = Path(core.folder).rglob("store.sqlite")
    import sqlite3

    conn = sqlite3.connect(database)
    try:
        size = conn.execute("SELECT COALESCE(SUM(pgsize), 0) FROM dbstat WHERE name LIKE 'kw%'").fetchone()[0]
    finally:
        conn.close()
    return {"keyword_p50_ms": every[len(every) // 2], "keyword_first_p50_ms": sorted(rounds[0])[len(queries) // 2],
            "keyword_bytes": int(size)}


def run_one(peer: str, count: int, folder: Path) -> dict[str, Any]:
    """One peer's write of the corpus, in this process (``--run``): seconds on the clock (and, for kb with its
    keyword index, keyword search figures measured after, off the clock)."""
    if peer == "langchain-faiss":
        from langchain_community.vectorstores import FAISS

        from benchmarks.peers import PrecomputedEmbeddings
    else:
        import kb
    texts, sources = debian_chunks(count)
    reference = np.load(SCIFACT / "corpus-all-MiniLM-L6-v2.npy", allow_pickle=False)
    vectors = [reference[np.arange(s, min(count, s + BATCH)) % len(reference)].tolist()
               for s in range(0, count, BATCH)]
    metadatas = [{"source": source, "chunk": i} for i, source in enumerate(sources)]
    started = time.perf_counter()
    if peer == "langchain-faiss":
        store = None
        for number, start in enumerate(range(0, count, BATCH)):
            pairs = list(zip(texts[start : start + BATCH], vectors[number], strict=True))
            batch_metadatas = metadatas[start : start + BATCH]
            if store is None:
                store = FAISS.from_embeddings(pairs, PrecomputedEmbeddings(), metadatas=batch_metadatas)
            else:
                store.add_embeddings(pairs, metadatas=batch_metadatas)
        assert store is not None
        store.save_local(str(folder))
    else:
        client = kb.api_client(home=folder)
        core = client.get_default_project().create_knowledge_bank(
            "bench", settings={"keyword": {"index": peer != "kb-vectors"}}).as_core_knowledge_bank()
        with core.get_writer() as writer:
            vectorstore = writer.as_langchain_vectorstore()
            for number, start in enumerate(range(0, count, BATCH)):
                vectorstore.add_embeddings(zip(texts[start : start + BATCH], vectors[number], strict=True),
                                           metadatas[start : start + BATCH])
        seconds = time.perf_counter() - started
        assert core.count() == count
        figures = keyword_figures(core, texts) if peer != "kb-vectors" else {}
        client.close()
        return {"seconds": seconds, **figures}
    return {"seconds": time.perf_counter() - started}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench-results/langchain_ingest.json"))
    parser.add_argument("--baseline", type=Path, default=None,
                        help="a kb source tree (another commit) measured as peer kb-baseline in the same rounds")
    parser.add_argument("--run", nargs=2, metavar=("PEER", "FOLDER"), help=argparse.SUPPRESS)  # one run, in a child
    args = parser.parse_args(argv)
    if args.run:
        print(json.dumps(run_one(args.run[0], args.chunks, Path(args.run[1]))))
        return 0
    if not (SCIFACT / "corpus-all-MiniLM-L6-v2.npy").exists():
        print(f"skipped: no SciFact vectors at {SCIFACT}")
        return 0
    from benchmarks.suite import machine

    peers = PEERS + ([BASELINE] if args.baseline else [])
    seconds: dict[str, list[float]] = {peer: [] for peer in peers}
    search: dict[str, list[dict[str, float]]] = {peer: [] for peer in peers if peer in ("kb", BASELINE)}
    with tempfile.TemporaryDirectory(prefix="kb-langchain-ingest-") as work:
        for round_number in range(args.rounds):
            shift = round_number % len(peers)
            for peer in peers[shift:] + peers[:shift]:
                folder = Path(work) / peer
                shutil.rmtree(folder, ignore_errors=True)
                command = [sys.executable, "-W", "ignore", "-m", "benchmarks.langchain_ingest", "--chunks",
                           str(args.chunks), "--run", "kb" if peer == BASELINE else peer, str(folder)]
                environment, cwd = None, None
                if peer == BASELINE:
                    # this script, run on the baseline tree's kb: that tree is the working directory and the path
                    environment, cwd = {**os.environ, "PYTHONPATH": str(args.baseline.resolve())}, args.baseline
                    command[3:5] = ["-c", "import runpy, sys; sys.argv[0] = 'langchain_ingest'; "
                                    f"runpy.run_path({str(Path(__file__).resolve())!r}, run_name='__main__')"]
                result = subprocess.run(command, capture_output=True, text=True, env=environment, cwd=cwd)
                if result.returncode != 0:
                    raise RuntimeError(f"{peer} failed:\n{result.stderr[-3000:]}")
                figures = json.loads(result.stdout.strip().splitlines()[-1])
                seconds[peer].append(figures["seconds"])
                if peer in search:
                    search[peer].append({k: v for k, v in figures.items() if k != "seconds"})
                shutil.rmtree(folder, ignore_errors=True)
                extra = "" if peer not in search or not search[peer][-1] else \
                    (f"; keyword p50 {search[peer][-1]['keyword_p50_ms']:.2f} ms (first round "
                     f"{search[peer][-1]['keyword_first_p50_ms']:.2f} ms), keyword tables "
                     f"{search[peer][-1]['keyword_bytes'] / 2**20:.1f} MiB")
                print(f"round {round_number + 1}: {peer} {seconds[peer][-1]:.2f} s "
                      f"({args.chunks / seconds[peer][-1]:,.0f} chunks/s){extra}", flush=True)
    report: dict[str, Any] = {"benchmark": "langchain_ingest", "chunks": args.chunks, "words_per_chunk": WORDS,
                              "batch": BATCH, "machine": machine(), "seconds": seconds, "ratios": {},
                              "keyword": search}
    for peer in [p for p in ("kb", "kb-vectors", BASELINE) if p in peers]:
        ratios = sorted(lc / mine for lc, mine in zip(seconds["langchain-faiss"], seconds[peer], strict=True))
        report["ratios"][f"{peer} over langchain-faiss"] = {"median": ratios[len(ratios) // 2], "rounds": ratios}
    write_results(args.out, report)
    print(f"machine: {report['machine']}")
    for name, figures in report["ratios"].items():
        print(f"{name}: chunks/s ratio median {figures['median']:.2f}x (rounds "
              + ", ".join(f"{r:.2f}x" for r in figures["rounds"]) + ")")
    for peer, runs in search.items():
        if runs and runs[0]:
            medians = {key: sorted(run[key] for run in runs)[len(runs) // 2] for key in runs[0]}
            print(f"{peer}: keyword search p50 {medians['keyword_p50_ms']:.2f} ms, first round "
                  f"{medians['keyword_first_p50_ms']:.2f} ms; keyword tables {medians['keyword_bytes'] / 2**20:.1f} MiB"
                  " (medians of the runs)")
    print(f"report: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The local model's speed: kb's ONNX path (fp32 and int8) beside sentence-transformers, threads, query
latency, serve start.

    python -m benchmarks.embedding [--docs 192 --round-docs 16] [--out bench-results/embedding.json]

- Documents per second on SciFact abstracts (``title + " " + text``, as in the reference vectors), kb's
  onnxruntime path in fp32 (``local:all-MiniLM-L6-v2``) and int8 (``local:all-MiniLM-L6-v2-int8``) and
  sentence-transformers (when the torch extra is installed) taking turns on the same texts in alternating
  rounds in one process (this machine's speed drifts within a minute, so only ratios measured side by side
  mean anything); the cosine of every vector to the SciFact reference. The CPU's flags that decide the int8
  kernels (avx512_vnni, avx_vnni, avx2) are printed and recorded.
- Achieved GFLOP/s: the encoder's multiply-adds on the real (unpadded) tokens divided by the time, beside the
  CPU's fp32 peak (cores x clock x FLOP per cycle, printed with how it was found).
- onnxruntime intra-op threads 1 .. cores, alternating; what tokenising costs next to inference.
- Query latency for one short text (p50 of 50 after warm-up), every path. ``--query-only --query-paths
  13,32,64`` compares, for lone texts of about those token counts, the pooled session with kb's default
  path (a one-thread session for a short lone text, ``kb.onnx_sessions``), in CPU and wall time.
- ``kb serve`` start until ``/readyz`` answers 200: with the ONNX graph not yet built, then cached.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.results import write_results
from kb import local_minilm

# ../shared beside the checkout, as the tests find it
SCIFACT = Path(os.environ.get("KB_SCIFACT") or Path(__file__).resolve().parents[2] / "shared" / "datasets" / "scifact")
QUERY = "Does aspirin reduce the risk of heart attacks?"


def scifact(count: int) -> tuple[list[str], np.ndarray]:
    texts = []
    with (SCIFACT / "corpus.jsonl").open(encoding="utf-8") as handle:
        for line in handle:
            doc = json.loads(line)
            texts.append(doc["title"] + " " + doc["text"])
            if len(texts) == count:
                break
    reference = np.load(SCIFACT / "corpus-all-MiniLM-L6-v2.npy", mmap_mode="r")[:count]
    return texts, np.asarray(reference)


def encoder_flops(token_counts: np.ndarray, config: dict[str, Any]) -> float:
    """Multiply-adds x 2 of the encoder on these sequences: the dense layers plus the attention products."""
    h, i, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    n = token_counts.astype(np.float64)
    dense = 2 * (4 * h * h + 2 * h * i) * n  # Q, K, V, output projection; the two feed-forward matrices
    attention = 2 * 2 * h * n * n  # Q.K^T and probabilities.V, over every head
    return float(layers * (dense + attention).sum())


def cpu_peak() -> dict[str, Any]:
    """fp32 peak of the cores this process may use: cores x clock x FLOP per cycle per core."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    field = lambda name: next((ln.split(":", 1)[1].strip() for ln in info.splitlines()  # noqa: E731
                               if ln.startswith(name)), "")
    flags = set(field("flags").split())
    mhz = float(field("cpu MHz") or 0)
    cores = len(os.sched_getaffinity(0))
    vendor, family = field("vendor_id"), field("cpu family")
    if "avx512f" in flags and vendor == "AuthenticAMD" and family == "25":
        per_cycle, why = 32, "Zen 4: two 256-bit FMA pipes (AVX-512 runs as two halves): 2 x 8 lanes x 2"
    elif "avx512f" in flags:
        per_cycle, why = 64, "two 512-bit FMA units: 2 x 16 lanes x 2"
    elif "fma" in flags:
        per_cycle, why = 32, "two 256-bit FMA units: 2 x 8 lanes x 2"
    else:
        per_cycle, why = 8, "SSE: 4 lanes x (add + multiply)"
    return {"cores": cores, "mhz": mhz, "flop_per_cycle": per_cycle, "why": why,
            "gflops": cores * mhz / 1000 * per_cycle, "model": field("model name"),
            "int8_flags": [f for f in INT8_FLAGS if f in flags]}


# what onnxruntime's int8 kernels use, best first: VNNI dot products (512- or 256-bit), else AVX2 / AVX-512BW
INT8_FLAGS = ("avx512_vnni", "avx_vnni", "avx512bw", "avx2")


def _clock(run: Any) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def compare(texts: list[str], rounds: int, reference: np.ndarray, runtime: Any, int8: Any) -> dict[str, Any]:
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        SentenceTransformer = None
    st = (SentenceTransformer(str(local_minilm.model_dir()), device="cpu", local_files_only=True)
          if SentenceTransformer else None)
    warm = texts[:8]
    runtime.embed(warm)
    int8.embed(warm)
    if st is not None:
        st.encode(warm, batch_size=local_minilm.DEFAULT_BATCH_SIZE)
    per_round = len(texts) // rounds
    rows: list[dict[str, float]] = []
    vectors: dict[str, list[np.ndarray]] = {"kb_onnx": [], "kb_int8": []}
    for r in range(rounds):
        part = texts[r * per_round : (r + 1) * per_round]

        def run_kb(model: Any, name: str, p: list[str] = part) -> Any:
            return lambda: vectors[name].append(model.embed(p))

        def run_st(p: list[str] = part) -> None:
            st.encode(p, batch_size=local_minilm.DEFAULT_BATCH_SIZE, normalize_embeddings=True)

        order = [("kb_onnx", run_kb(runtime, "kb_onnx")), ("kb_int8", run_kb(int8, "kb_int8"))]
        if st is not None:
            order.append(("sentence_transformers", run_st))
        if r % 2:
            order.reverse()
        row = {name: _clock(run) for name, run in order}  # seconds
        if st is not None:
            row["ratio"] = row["sentence_transformers"] / row["kb_onnx"]  # kb's speed over theirs
            row["int8_ratio"] = row["sentence_transformers"] / row["kb_int8"]
        row["int8_over_fp32"] = row["kb_onnx"] / row["kb_int8"]
        rows.append(row)
        print(f"  round {r + 1}: " + ", ".join(f"{k} {len(part) / row[k]:.2f}" for k, _ in order)
              + "; " + ", ".join(f"{k} {row[k]:.2f}" for k in ("ratio", "int8_ratio", "int8_over_fp32") if k in row),
              flush=True)
    documents = per_round * rounds
    result: dict[str, Any] = {"documents": documents, "rounds": rows, "torch_threads": None}
    for name in ("kb_onnx", "kb_int8"):
        ours = np.vstack(vectors[name])
        cosines = (ours * reference[: len(ours)]).sum(axis=1)
        result[f"{name}_docs_per_s"] = documents / sum(r[name] for r in rows)
        prefix = "" if name == "kb_onnx" else "int8_"
        result[f"{prefix}min_cosine_to_reference"] = float(cosines.min())
        result[f"{prefix}mean_cosine_to_reference"] = float(cosines.mean())
    result["int8_over_fp32_median"] = float(np.median([r["int8_over_fp32"] for r in rows]))
    result["int8_over_fp32_total"] = result["kb_int8_docs_per_s"] / result["kb_onnx_docs_per_s"]
    if st is not None:
        import torch

        result["sentence_transformers_docs_per_s"] = documents / sum(r["sentence_transformers"] for r in rows)
        result["median_ratio"] = float(np.median([r["ratio"] for r in rows]))
        result["total_ratio"] = result["kb_onnx_docs_per_s"] / result["sentence_transformers_docs_per_s"]
        result["int8_median_ratio"] = float(np.median([r["int8_ratio"] for r in rows]))
        result["int8_total_ratio"] = result["kb_int8_docs_per_s"] / result["sentence_transformers_docs_per_s"]
        result["torch_threads"] = torch.get_num_threads()
        result["st_query_ms"] = _p50_ms(lambda: st.encode([QUERY], normalize_embeddings=True))
    return result


def _p50_ms(run: Any, times: int = 50) -> float:
    for _ in range(5):
        run()
    return float(np.percentile([_clock(run) for _ in range(times)], 50) * 1000)


def query_texts(lengths: tuple[int, ...]) -> dict[int, str]:
    """A text of about each token count: the longest start of a SciFact abstract within it (13: ``QUERY``)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(local_minilm.model_dir() / "tokenizer.json"))
    tokenizer.no_padding()
    count = lambda text: len(tokenizer.encode(text).ids)  # noqa: E731
    words = " ".join(scifact(40)[0]).split()
    texts = {}
    for length in lengths:
        if length == count(QUERY):
            texts[length] = QUERY
            continue
        cut = next(k for k in range(length, 0, -1) if count(" ".join(words[:k])) <= length)
        texts[count(" ".join(words[:cut]))] = " ".join(words[:cut])
    return texts


def query_path(rounds: int, spins: list[int], per_round: int = 40, threads: tuple[int, ...] = (),
               lengths: tuple[int, ...] = ()) -> dict[str, Any]:
    """One short query, fp32 and int8, on the pooled session with its threads never spinning and spinning
    ``spins`` us, and (not spinning) with each intra-op thread count in ``threads`` beside the default; with
    ``lengths``, lone texts of about those token counts on the pooled session beside kb's default path (the
    one-thread query session up to ``kb.onnx_sessions.QUERY_MAX_TOKENS``), alternating. Wall p50 and minimum,
    and CPU ms per query from the process's CPU time over queries paced 5 ms apart (so a pool spinning after
    a run is charged for it): on a shared machine the CPU figure moves less than the wall one. Also the parts:
    tokenising alone, and the onnxruntime run alone."""
    path, cache = local_minilm.model_dir(), local_minilm.model_cache_dir()
    kind = lambda int8: "int8" if int8 else "fp32"  # noqa: E731
    # the spin and thread rows measure the pooled session, as before the one-thread query session
    runtimes = {f"{kind(int8)} spin {spin} us": local_minilm.OnnxMiniLM(
        path, cache, int8=int8, spin_us=spin, query_max_tokens=0) for int8 in (True, False) for spin in [0, *spins]}
    runtimes.update({f"{kind(int8)} {count} thread{'s' * (count > 1)}": local_minilm.OnnxMiniLM(
        path, cache, int8=int8, spin_us=0, threads=count, query_max_tokens=0)
        for int8 in (True, False) for count in threads})
    cases = {name: (runtime, QUERY) for name, runtime in runtimes.items()}
    for int8 in (True, False) if lengths else ():
        default = local_minilm.OnnxMiniLM(path, cache, int8=int8, spin_us=0)
        for tokens, text in query_texts(lengths).items():
            cases[f"{kind(int8)} {tokens} tokens, pooled"] = (runtimes[f"{kind(int8)} spin 0 us"], text)
            session = "one-thread query session" if default.sessions.uses_query_session(1, tokens) else "pooled"
            cases[f"{kind(int8)} {tokens} tokens, kb default ({session})"] = (default, text)
    walls: dict[str, list[float]] = {name: [] for name in cases}
    cpus: dict[str, list[float]] = {name: [] for name in cases}
    for runtime, text in cases.values():
        for _ in range(10):
            runtime.embed([text])
    for r in range(rounds):
        for name in list(cases) if r % 2 == 0 else list(cases)[::-1]:
            (runtime, text), cpu = cases[name], 0.0
            for _ in range(per_round):
                started_cpu = time.process_time()
                walls[name].append(_clock(lambda rt=runtime, t=text: rt.embed([t])) * 1000)
                time.sleep(0.005)
                cpu += time.process_time() - started_cpu
            cpus[name].append(cpu / per_round * 1000)
    first = next(iter(runtimes.values()))
    feed = first.feed_one(QUERY)
    result: dict[str, Any] = {
        name: {"wall_p50_ms": float(np.percentile(walls[name], 50)), "wall_min_ms": float(min(walls[name])),
               "wall_p10_ms": float(np.percentile(walls[name], 10)), "cpu_ms_per_query": float(np.median(cpus[name])),
               "threads": runtime.threads, "graph": runtime.graph_path.name,
               "tokens": len(runtime.tokenizer.encode(text).ids)} for name, (runtime, text) in cases.items()}
    result["parts_int8_spin_0"] = {
        "tokenize_ms": _p50_ms(lambda: first.tokenizer.encode(QUERY)),
        "session_run_ms": _p50_ms(lambda: first.session.run(None, feed)),
        "embed_ms": _p50_ms(lambda: first.embed([QUERY]))}
    return result


def threads(texts: list[str], counts: list[int]) -> dict[str, float]:
    runtimes = {n: local_minilm.OnnxMiniLM(local_minilm.model_dir(), local_minilm.model_cache_dir(), threads=n)
                for n in counts}
    for runtime in runtimes.values():
        runtime.embed(texts[:4])
    seconds: dict[int, list[float]] = {n: [] for n in counts}
    for r in range(2):
        for n in counts if r % 2 == 0 else counts[::-1]:
            seconds[n].append(_clock(lambda rt=runtimes[n]: rt.embed(texts)))
    return {str(n): len(texts) / float(np.median(s)) for n, s in seconds.items()}


def serve_ready(cache: Path) -> float:
    """Seconds from starting ``kb serve`` until /readyz answers 200 (the local model loaded and warm)."""
    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "KB_HOME": home, "KB_AUTH": "off", "KB_MODEL_CACHE": str(cache)}
        started = time.perf_counter()
        server = subprocess.Popen([sys.executable, "-m", "api.cli", "serve", "--port", str(port),
                                   "--log-level", "warning"], env=env, stderr=subprocess.DEVNULL)
        try:
            while time.perf_counter() - started < 120:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200:
                        return time.perf_counter() - started
                except httpx.TransportError:
                    pass
                time.sleep(0.02)
            raise RuntimeError("kb serve was not ready within 120 s")
        finally:
            server.terminate()
            server.wait(30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=192, help="SciFact abstracts in the comparison")
    parser.add_argument("--round-docs", type=int, default=16,
                        help="abstracts per round: short rounds, because this machine's speed drifts within seconds")
    parser.add_argument("--thread-docs", type=int, default=64, help="abstracts per thread-count run")
    parser.add_argument("--out", type=Path, default=Path("bench-results/embedding.json"))
    parser.add_argument("--query-only", action="store_true",
                        help="only the query path: fp32 and int8, pool threads spinning or not, alternating")
    parser.add_argument("--query-rounds", type=int, default=10)
    parser.add_argument("--spin-us", default="50", help="spin durations (us) to try beside 0, comma-separated")
    parser.add_argument("--query-threads", default="",
                        help="with --query-only: intra-op thread counts to try beside the default, comma-separated")
    parser.add_argument("--query-paths", default="",
                        help="with --query-only: token counts (about) of lone texts to run on the pooled session "
                             "beside kb's default query path, comma-separated (for example 13,32,64)")
    parser.add_argument("--compare-only", action="store_true",
                        help="only the side-by-side comparison and the query latency (no threads, no kb serve)")
    args = parser.parse_args(argv)
    if not (SCIFACT / "corpus.jsonl").is_file():
        print(f"SciFact is not at {SCIFACT}", file=sys.stderr)
        return 2
    if args.query_only:
        return query_main(args)
    texts, reference = scifact(args.docs)
    path = local_minilm.model_dir()
    config = json.loads((path / "config.json").read_text())
    runtime = local_minilm.load()
    int8 = local_minilm.load(int8=True)
    peak = cpu_peak()
    print(f"CPU: {peak['model']}, {peak['cores']} cores at {peak['mhz']:.0f} MHz; fp32 peak "
          f"{peak['gflops']:.0f} GFLOP/s = cores x GHz x {peak['flop_per_cycle']} ({peak['why']}); int8 flags: "
          f"{' '.join(peak['int8_flags']) or 'none'}; load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")

    tokenized = runtime.tokenizer.encode_batch(texts)
    tokens = np.array([len(e.ids) for e in tokenized])
    tokenize_s = _clock(lambda: runtime.tokenizer.encode_batch(texts))
    result: dict[str, Any] = {"machine": {"python": platform.python_version(), "platform": platform.platform(),
                                          "cpu": peak, "load_average": os.getloadavg()},
                              "onnx_threads": runtime.threads,
                              "batch_size": runtime.batch_size, "mean_tokens": float(tokens.mean())}
    rounds = max(1, args.docs // args.round_docs)
    print(f"comparison on {args.docs} abstracts (mean {tokens.mean():.0f} tokens), {rounds} alternating "
          "rounds, docs/s:", flush=True)
    result["comparison"] = compare(texts, rounds, reference, runtime, int8)
    comparison = result["comparison"]
    flops_per_doc = encoder_flops(tokens, config) / len(texts)
    achieved = flops_per_doc * comparison["kb_onnx_docs_per_s"] / 1e9
    result["gflops"] = {"per_document": flops_per_doc / 1e9, "kb_onnx": achieved,
                        "peak": peak["gflops"], "fraction_of_peak": achieved / peak["gflops"]}
    if "sentence_transformers_docs_per_s" in comparison:
        result["gflops"]["sentence_transformers"] = flops_per_doc * comparison["sentence_transformers_docs_per_s"] / 1e9
    result["tokenize_share"] = tokenize_s / (len(texts) / comparison["kb_onnx_docs_per_s"])
    result["query_ms"] = _p50_ms(lambda: runtime.embed([QUERY]))
    result["int8_query_ms"] = _p50_ms(lambda: int8.embed([QUERY]))
    if not args.compare_only:
        counts = sorted({1, runtime.threads})
        print(f"onnxruntime threads {counts} on {args.thread_docs} abstracts ...", flush=True)
        result["threads_docs_per_s"] = threads(texts[: args.thread_docs], counts)
        with tempfile.TemporaryDirectory() as cache:
            cold = serve_ready(Path(cache))  # builds the graph into the empty cache
            result["serve_ready_s"] = {"graph_not_built": cold, "graph_cached": serve_ready(Path(cache))}

    print(f"kb onnx fp32: {comparison['kb_onnx_docs_per_s']:.2f} docs/s, min cosine to the SciFact reference "
          f"{comparison['min_cosine_to_reference']:.6f}")
    print(f"kb onnx int8: {comparison['kb_int8_docs_per_s']:.2f} docs/s, cosine to the SciFact reference min "
          f"{comparison['int8_min_cosine_to_reference']:.6f} mean {comparison['int8_mean_cosine_to_reference']:.6f};"
          f" int8 over fp32: median of rounds {comparison['int8_over_fp32_median']:.2f}x (totals "
          f"{comparison['int8_over_fp32_total']:.2f}x)")
    if "median_ratio" in comparison:
        print(f"sentence-transformers: {comparison['sentence_transformers_docs_per_s']:.2f} docs/s (torch "
              f"{comparison['torch_threads']} threads); over it, median ratio of rounds: fp32 "
              f"{comparison['median_ratio']:.2f}x, int8 {comparison['int8_median_ratio']:.2f}x (ratio of the totals "
              f"{comparison['total_ratio']:.2f}x, {comparison['int8_total_ratio']:.2f}x)")
        print(f"query, one short text: kb fp32 {result['query_ms']:.2f} ms, int8 {result['int8_query_ms']:.2f} ms, "
              f"sentence-transformers {comparison['st_query_ms']:.2f} ms (p50)")
    else:
        print(f"query, one short text: kb fp32 {result['query_ms']:.2f} ms, int8 {result['int8_query_ms']:.2f} ms "
              "(p50); no torch extra: kb alone")
    g = result["gflops"]
    print(f"GFLOP/s: kb {g['kb_onnx']:.1f} ({g['fraction_of_peak']:.0%} of the {g['peak']:.0f} peak)"
          + (f", sentence-transformers {g['sentence_transformers']:.1f}" if "sentence_transformers" in g else "")
          + f"; {g['per_document']:.2f} GFLOP per abstract")
    print(f"tokenising is {result['tokenize_share']:.1%} of the inference time")
    if not args.compare_only:
        print("onnxruntime threads, docs/s: " + ", ".join(f"{k}: {v:.2f}"
                                                          for k, v in result["threads_docs_per_s"].items()))
        print(f"kb serve ready: {result['serve_ready_s']['graph_not_built']:.2f} s building the graph, "
              f"{result['serve_ready_s']['graph_cached']:.2f} s with it cached")
    write_results(args.out, result)
    print(f"wrote {args.out}")
    return 0


def query_main(args: argparse.Namespace) -> int:
    peak = cpu_peak()
    spins = [int(x) for x in args.spin_us.split(",") if x.strip()]
    print(f"CPU: {peak['model']}, {peak['cores']} cores; int8 flags: {' '.join(peak['int8_flags']) or 'none'}; "
          f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
    print(f"query {QUERY!r}, {args.query_rounds} alternating rounds of 40", flush=True)
    result: dict[str, Any] = {"machine": {"cpu": peak, "load_average_start": os.getloadavg()},
                              "query": query_path(args.query_rounds, spins, threads=tuple(
                                  int(x) for x in args.query_threads.split(",") if x.strip()), lengths=tuple(
                                  int(x) for x in args.query_paths.split(",") if x.strip()))}
    result["machine"]["load_average_end"] = os.getloadavg()
    for name, figures in result["query"].items():
        if name.startswith("parts"):
            print(f"{name}: " + ", ".join(f"{k} {v:.3f}" for k, v in figures.items()))
        else:
            print(f"{name}: wall p50 {figures['wall_p50_ms']:.2f} ms, p10 {figures['wall_p10_ms']:.2f} ms, min "
                  f"{figures['wall_min_ms']:.2f} ms; CPU "
                  f"{figures['cpu_ms_per_query']:.2f} ms per query")
    print(f"load average at the end {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    write_results(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

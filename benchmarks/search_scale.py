"""Search beyond dense similarity at scale: keyword (beside bm25s), hybrid, and filtered similarity by selectivity.

    python -m benchmarks.search_scale --sizes 100000,1000000 --out bench-results/search-scale

Per size, one HNSW knowledge bank (kb bench's settings) is ingested once into ``--work`` and reused by later
runs; bm25s (MIT, numba backend when available) indexes the same texts with the same k1, b and idf (its
"lucene" method is kb's formula), English stop words and the Snowball stemmer. Then, in one process:

- **keyword**: kb's ``core.search(search_type="keyword")`` (analysis, BM25, records, results) and bm25s'
  tokenise + retrieve (document indices only), timed query by query in alternation (``paired``), with the
  top-10 overlap between the two (their tokenisers differ a little, so it is not 1.0);
- **hybrid**: ``core.search(search_type="hybrid")`` with the query vector given;
- **filtered similarity**: the LangChain vector store's ``similarity_search_with_score_by_vector(filter=...)``
  for filters from ~0.1% to ~90% of the chunks, recall@10 against exact filtered search (numpy over the
  matching rows).

Figures: p50/p99 and first-round p50 (each query's first time) in ms, JSON in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

import kb
from benchmarks.corpus import Corpus, default_cache, load
from benchmarks.peer_run import paired, timed
from benchmarks.peers import HNSW, KBPeer

# Filters over the corpus metadata (year 1995-2025, category c0-c11, page 1-20, reviewed 50%), by selectivity.
FILTERS: dict[str, dict[str, Any]] = {
    "~0.2%": {"$and": [{"year": 2001}, {"page": 3}]},
    "~1.6%": {"$and": [{"year": 2001}, {"reviewed": True}]},
    "~8%": {"category": "c3"},
    "~50%": {"reviewed": True},
    "~92%": {"category": {"$nin": ["c0"]}},
}


def _mask(corpus: Corpus, flt: dict[str, Any]) -> np.ndarray:
    """The rows ``flt`` selects, computed with numpy from the corpus table (the reference, not kb's code)."""
    table = corpus.table

    def column(name: str) -> np.ndarray:
        return table.column(name).to_numpy(zero_copy_only=False)

    if "$and" in flt:
        out = np.ones(corpus.size, dtype=bool)
        for clause in flt["$and"]:
            out &= _mask(corpus, clause)
        return out
    (key, condition), = flt.items()
    if isinstance(condition, dict) and "$nin" in condition:
        return ~np.isin(column(key), condition["$nin"])
    return column(key) == condition


def _exact_filtered(corpus: Corpus, mask: np.ndarray, k: int = 10) -> list[set[str]]:
    """Exact filtered top-k of every query: all queries against blocks of the matching rows."""
    rows = np.flatnonzero(mask)
    queries = corpus.queries
    best = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_rows = np.zeros((len(queries), k), dtype=np.int64)
    for start in range(0, rows.size, 100_000):
        part = rows[start:start + 100_000]
        scores = queries @ np.asarray(corpus.vectors[part]).T
        merged = np.concatenate([best, scores], axis=1)
        merged_rows = np.concatenate([best_rows, np.broadcast_to(part, scores.shape)], axis=1)
        order = np.argsort(-merged, axis=1, kind="stable")[:, :k]
        best, best_rows = np.take_along_axis(merged, order, 1), np.take_along_axis(merged_rows, order, 1)
    return [{f"chunk-{i}" for i in found[np.isfinite(score)].tolist()} for found, score in zip(best_rows, best,
                                                                                               strict=True)]


def _ids(result: Any) -> set[str]:
    return {doc.id for doc, _ in result}


def _kb_folder(corpus: Corpus, work: Path) -> tuple[Path, float | None]:
    folder = work / f"kb-hnsw-{corpus.size}"
    done = folder / "ingested.json"
    if done.exists():
        _current_ef_search(folder)
        return folder, None
    import shutil

    shutil.rmtree(folder, ignore_errors=True)
    started = time.perf_counter()
    KBPeer("HNSW").ingest(corpus, folder)
    seconds = time.perf_counter() - started
    done.write_text(json.dumps({"seconds": seconds}))
    return folder, seconds


def _current_ef_search(folder: Path) -> None:
    """A knowledge bank kept from an earlier run searches with today's ef_search (it may change when filled)."""

    client = kb.api_client(home=folder)
    handle = client.get_default_project().list_knowledge_banks(as_type="objects")[0]
    settings = handle.get_settings()
    store = settings.get_store_settings()
    if store.get("index", {}).get("ef_search") != HNSW["ef_search"]:
        settings.set_store_settings({**store, "index": {**store["index"], "ef_search": HNSW["ef_search"]}})
        settings.save()
    client.close()


def _bm25s(corpus: Corpus) -> tuple[Any, Any, float]:
    import bm25s
    import Stemmer

    stemmer = Stemmer.Stemmer("english")
    started = time.perf_counter()
    tokens = bm25s.tokenize(corpus.texts, stopwords="en", stemmer=stemmer, show_progress=False)
    retriever = bm25s.BM25(k1=0.9, b=0.4, method="lucene")
    retriever.index(tokens, show_progress=False)
    return retriever, stemmer, time.perf_counter() - started


def bench_size(size: int, work: Path, folder: Path | None = None) -> dict[str, Any]:
    """Every workload at one size; ``folder`` is an HNSW knowledge bank of this corpus already ingested."""
    import bm25s

    corpus = load(size)
    ingest_seconds = None
    if folder is None:
        folder, ingest_seconds = _kb_folder(corpus, work)
    peer = KBPeer("HNSW")
    peer.open(folder)
    texts, vectors = corpus.query_texts, corpus.queries
    out: dict[str, Any] = {"size": size, "kb_ingest_seconds": ingest_seconds}
    retriever, stemmer, out["bm25s_index_seconds"] = _bm25s(corpus)

    def bm25s_search(i: int) -> np.ndarray:
        query = bm25s.tokenize([texts[i]], stopwords="en", stemmer=stemmer, show_progress=False)
        docs, _ = retriever.retrieve(query, k=10, show_progress=False, n_threads=1)
        return docs[0]

    (kb_keyword, kb_results), (bm25s_figures, bm25s_results) = paired(
        lambda i: peer.keyword_search(texts[i], 10), bm25s_search, len(texts))
    overlap = [len({r.id for r in kb} & {f"chunk-{int(j)}" for j in bm}) / 10
               for kb, bm in zip(kb_results, bm25s_results, strict=True)]
    out["keyword"] = {"kb": kb_keyword, "bm25s": bm25s_figures, "top10_overlap": float(np.mean(overlap)),
                      "kb_over_bm25s_p50": kb_keyword["p50_ms"] / bm25s_figures["p50_ms"]}
    print(f"{size:>9,} keyword  kb p50 {kb_keyword['p50_ms']:7.2f} ms (first {kb_keyword['first_round_p50_ms']:.2f})"
          f" | bm25s p50 {bm25s_figures['p50_ms']:7.2f} ms | ratio {out['keyword']['kb_over_bm25s_p50']:.2f}"
          f" | overlap {out['keyword']['top10_overlap']:.2f}", flush=True)
    out["hybrid"], _ = timed(lambda i: peer.hybrid_search(texts[i], vectors[i], 10), len(texts))
    print(f"{size:>9,} hybrid   kb p50 {out['hybrid']['p50_ms']:7.2f} ms (first "
          f"{out['hybrid']['first_round_p50_ms']:.2f})", flush=True)
    out["filtered"] = {}
    for label, flt in FILTERS.items():
        mask = _mask(corpus, flt)
        exact = _exact_filtered(corpus, mask)
        figures, results = timed(
            lambda i, f=flt: peer.store.similarity_search_with_score_by_vector(vectors[i], k=10, filter=f),
            len(vectors))
        recall = float(np.mean([len(_ids(r) & e) / max(1, min(10, len(e))) for r, e in
                                zip(results, exact, strict=True)]))
        out["filtered"][label] = {**figures, "selectivity": float(mask.mean()), "recall_at_10": recall,
                                  "filter": flt}
        print(f"{size:>9,} filtered {label:>6} ({mask.mean():.2%}) p50 {figures['p50_ms']:7.2f} ms "
              f"p99 {figures['p99_ms']:7.2f} ms recall@10 {recall:.3f}", flush=True)
    peer.client.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.search_scale", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000", help="comma-separated corpus sizes")
    parser.add_argument("--work", type=Path, default=default_cache() / "search-scale",
                        help="where the knowledge banks are kept between runs")
    parser.add_argument("--out", type=Path, default=Path("bench-results/search-scale"))
    parser.add_argument("--kb-folder", type=Path, default=None,
                        help="an HNSW knowledge bank of the corpus already ingested (one size only; kb bench)")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "sizes": {}}
    for size in (int(s) for s in args.sizes.split(",")):
        report["sizes"][str(size)] = bench_size(size, args.work, args.kb_folder)
        (args.out / "search_scale.json").write_text(json.dumps(report, indent=2))
    print(f"report: {args.out / 'search_scale.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""SciFact (BEIR, train split) retrieval benchmark for kb's search types.

    python -m benchmarks.scifact [--home DIR] [--out bench-results/scifact.json] [--folds 5]

Builds a FAISS knowledge bank from ``../shared/datasets/scifact`` using the
precomputed all-MiniLM-L6-v2 document vectors (``title + " " + text``),
embeds the 809 queries once with the real model (cached in the KB_HOME
embedding cache, so reruns are fast), and evaluates every search type with
ranx. ``--sweep`` also evaluates fusion settings and reports, for the
chosen default, the held-out score of k-fold cross-validation over queries
(the setting is picked on the training folds only), so the default is not
tuned to these queries.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import kb
from benchmarks.results import write_results
from kb.evaluation import evaluate, format_table, load_qrels, load_queries
from kb.fusion import DEFAULT_FUSION, NORMALISATIONS, fuse, fusion_settings
from kb_base.search import SearchRequest

DATASET = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "scifact"


def build(home: Path, dataset: Path) -> Any:
    from tqdm import tqdm

    client = kb.api_client(home=home)
    project = client.get_default_project()
    existing = {i.name: i for i in project.list_knowledge_banks()}
    if "scifact" in existing:
        core = existing["scifact"].to_knowledge_bank().as_core_knowledge_bank()
        if core.count() > 0:
            return client, core
    core = (existing["scifact"].to_knowledge_bank() if "scifact" in existing else
            project.create_knowledge_bank("scifact")).as_core_knowledge_bank()
    docs = [json.loads(line) for line in (dataset / "corpus.jsonl").read_text().splitlines() if line.strip()]
    vectors = np.load(dataset / "corpus-all-MiniLM-L6-v2.npy")
    assert len(docs) == vectors.shape[0]
    started = time.perf_counter()
    with core.get_writer() as writer:
        for start in tqdm(range(0, len(docs), 1000), desc="indexing SciFact", unit="k docs"):
            part = docs[start : start + 1000]
            core.write_texts([d["title"] + " " + d["text"] for d in part], [{"title": d["title"]} for d in part],
                             [str(d["_id"]) for d in part], vectors=vectors[start : start + 1000],
                             tx=writer.transaction)
    print(f"indexed {len(docs)} documents in {time.perf_counter() - started:.1f}s", file=sys.stderr)
    return client, core


def cross_validated(per_query: dict[str, dict[str, float]], folds: int, seed: int = 0) -> dict[str, Any]:
    """Pick the best setting on k-1 folds, score it on the held-out fold; average the held-out scores."""
    query_ids = sorted(next(iter(per_query.values())))
    random.Random(seed).shuffle(query_ids)
    held_out, picks = [], []
    for fold in range(folds):
        test = set(query_ids[fold::folds])
        train = [q for q in query_ids if q not in test]
        best = max(per_query, key=lambda s: np.mean([per_query[s][q] for q in train]))
        picks.append(best)
        held_out.extend(per_query[best][q] for q in test)
    return {"held_out_ndcg@10": round(float(np.mean(held_out)), 4), "picked_per_fold": picks}


def candidate_lists(core: Any, queries: dict[str, str], depth: int) -> dict[str, tuple[list[tuple[str, float]],
                                                                                  list[tuple[str, float]]]]:
    """Each query's dense and keyword candidates, (id, score) best first: what hybrid search fuses."""
    from tqdm import tqdm

    out = {}
    for qid, text in tqdm(queries.items(), desc="candidate lists", unit="q"):
        dense = core.search(SearchRequest(query=text, k=depth, search_type="similarity"))
        keyword = core.search(SearchRequest(query=text, k=depth, search_type="keyword"))
        out[qid] = ([(h.id, h.score) for h in dense], [(h.id, h.score) for h in keyword])
    return out


def per_query_ndcg(lists: dict[str, tuple[list[tuple[str, float]], list[tuple[str, float]]]],
                   qrels: dict[str, dict[str, int]], options: dict[str, Any]) -> dict[str, float]:
    """nDCG@10 per query of the candidate lists fused with ``options`` (as ``kb.fusion`` fuses a search)."""
    from ranx import Qrels, Run
    from ranx import evaluate as ranx_evaluate

    settings = fusion_settings(options)
    run = {}
    for qid, (dense, keyword) in lists.items():
        fused = fuse(dense, keyword, settings)[:10]
        run[qid] = {doc_id: float(len(fused) - r) for r, (doc_id, _) in enumerate(fused)} or {"__none__": 0.0}
    ranx_run = Run(run)
    ranx_evaluate(Qrels({q: qrels[q] for q in lists}), ranx_run, "ndcg@10")
    return {q: float(s) for q, s in ranx_run.scores["ndcg@10"].items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="SciFact retrieval benchmark")
    parser.add_argument("--dataset", type=Path, default=Path(os.environ.get("KB_SCIFACT", DATASET)))
    parser.add_argument("--home", type=Path, help="KB_HOME to build in (reused if it has the KB); default: a temp dir")
    parser.add_argument("--out", type=Path, default=Path("bench-results/scifact.json"))
    parser.add_argument("--types", default="similarity,keyword,hybrid,mmr")
    parser.add_argument("--sweep", action="store_true", help="also sweep fusion settings with cross-validation")
    parser.add_argument("--folds", type=int, default=5)
    args = parser.parse_args(argv)
    if not (args.dataset / "corpus.jsonl").exists():
        print(f"SciFact not found at {args.dataset}: nothing to benchmark (set KB_SCIFACT)", file=sys.stderr)
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        home = args.home or Path(tmp) / "home"
        client, core = build(home, args.dataset)
        queries = load_queries(args.dataset / "queries-train.jsonl")
        qrels = load_qrels(args.dataset / "qrels-train.tsv")
        queries = {q: t for q, t in queries.items() if q in qrels}
        started = time.perf_counter()
        embedder = client.get_llm_handle(core.embedding_llm_id).embedder
        embedder.embed_documents(list(queries.values()))  # one batched pass, then cache hits
        print(f"embedded {len(queries)} queries in {time.perf_counter() - started:.1f}s", file=sys.stderr)
        types = [t for t in args.types.split(",") if t]
        results = evaluate(core.search, queries, qrels, types)
        print(format_table(results))
        report: dict[str, Any] = {"dataset": "scifact-train", "queries": len(queries), "results": results,
                                  "fusion_default": core.search_context().fusion or "kb.fusion.DEFAULT_FUSION",
                                  "machine": {"cpus": os.cpu_count(), "platform": platform.platform()}}
        if args.sweep:
            report["sweep"] = sweep(core, queries, qrels, args.folds)
        write_results(args.out, report)
        print(f"report: {args.out}")
        client.close()
    return 0


WEIGHTS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def sweep(core: Any, queries: dict[str, str], qrels: dict[str, dict[str, int]], folds: int) -> dict[str, Any]:
    """Every fusion setting on the same candidate lists (fetched once), then k-fold cross-validation.

    The candidates are each query's dense and keyword top ``candidates`` (kb's default, 100): exactly the
    lists a hybrid search fuses, so a setting's figure here is what ``core.search`` gives with it."""
    settings: dict[str, dict[str, Any]] = {"rrf-60": {"method": "rrf"}}
    for normalisation in NORMALISATIONS:
        for weight in WEIGHTS:
            settings[f"{normalisation}-{weight}"] = {"method": "linear", "weight": weight,
                                                     "normalisation": normalisation}
    lists = candidate_lists(core, queries, int(DEFAULT_FUSION["candidates"]))
    per_query = {name: per_query_ndcg(lists, qrels, options) for name, options in settings.items()}
    means = {name: round(float(np.mean(list(v.values()))), 4) for name, v in per_query.items()}
    for name, mean in means.items():
        print(f"  hybrid {name:<12} nDCG@10 {mean:.4f}")
    report: dict[str, Any] = {"means": means}
    for family, names in {"all": list(settings), "bounded": [n for n in settings if n.startswith("bounded-")]
                          }.items():
        cv = cross_validated({n: per_query[n] for n in names}, folds)
        print(f"  {folds}-fold cross-validated hybrid nDCG@10, settings chosen on training folds among {family}: "
              f"{cv['held_out_ndcg@10']:.4f}; picks {cv['picked_per_fold']}")
        report[f"cross_validation_{family}"] = cv
    return report


if __name__ == "__main__":
    raise SystemExit(main())

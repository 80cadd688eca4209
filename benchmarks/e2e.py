"""End to end with the real model: kb's ingestion of SciFact abstracts beside the bare model's encoding of them.

The bare figure is ``SentenceTransformer.encode`` on the same texts with kb's batch size (64), the model
already loaded and warm. kb's figure is a writer block (texts new to the embedding cache, so every
one goes through the model) that adds the texts with metadata and commits durably. They alternate in
rounds; the reported ratio is the median of the rounds' ratios.
Then a query text is searched once (the model embeds it) and again (served from the query cache).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

import kb
from benchmarks.scifact import DATASET
from kb.embeddings import LocalMiniLMModel


def scifact_texts(count: int) -> tuple[list[str], list[dict[str, Any]], list[str]]:
    docs = []
    with (DATASET / "corpus.jsonl").open() as handle:
        for line in handle:
            if line.strip():
                docs.append(json.loads(line))
            if len(docs) == count + 32:
                break
    texts = [d["title"] + " " + d["text"] for d in docs]
    return texts, [{"title": d["title"]} for d in docs], [str(d["_id"]) for d in docs]


def bench_end_to_end(count: int, folder: Path, rounds: int = 5) -> dict[str, Any]:
    per_round = max(1, count // rounds)
    texts, metadatas, ids = scifact_texts(per_round * rounds)
    warm = texts[per_round * rounds:]
    model = LocalMiniLMModel()
    model.embed(warm)  # load and warm the model outside every clock
    client = kb.api_client(home=folder)
    core = client.get_default_project().create_knowledge_bank("e2e").as_core_knowledge_bank()

    def clock(run: Any) -> float:
        started = time.perf_counter()
        run()
        return time.perf_counter() - started

    def ingest(part: slice) -> None:
        with core.get_writer() as writer:
            writer.as_langchain_vectorstore().add_texts(texts[part], metadatas[part], ids=ids[part])

    # This machine's speed drifts by 2x within a minute, so kb and the bare model alternate on the same
    # texts (bare, kb, bare) and each round compares kb with the mean of the bare runs around it.
    rows = []
    for r in range(rounds):
        part = slice(r * per_round, (r + 1) * per_round)
        before = clock(lambda p=part: model.embed(texts[p]))
        kb_seconds = clock(lambda p=part: ingest(p))
        after = clock(lambda p=part: model.embed(texts[p]))
        rows.append({"bare_before": before, "kb": kb_seconds, "bare_after": after,
                     "ratio": kb_seconds / ((before + after) / 2)})
    assert core.count() == per_round * rounds
    question = "Does the diffusion tensor imaging show white matter development in newborns?"
    first = clock(lambda: core.search(query=question, k=10))
    repeated = [clock(lambda: core.search(query=question, k=10)) for _ in range(20)]
    embedder = client.get_llm_handle(core.embedding_llm_id).embedder
    client.close()
    bare_total = sum((r["bare_before"] + r["bare_after"]) / 2 for r in rows)
    return {
        "documents": per_round * rounds,
        "rounds": rows,
        "bare_model_seconds": bare_total,
        "kb_ingest_seconds": sum(r["kb"] for r in rows),
        "kb_over_bare": float(np.median([r["ratio"] for r in rows])),
        "query_first_ms": first * 1000,
        "query_repeated_p50_ms": float(np.percentile(np.asarray(repeated) * 1000, 50)),
        "query_cache_hits": embedder.hits,
    }

"""End to end with the real model: kb's ingestion of SciFact abstracts beside the bare model's encoding of them.

The bare figure is ``SentenceTransformer.encode`` on the same texts with kb's batch size (64), the model
already loaded and warm; it is timed before and after kb's run and the faster of the two is kept, so
noise can only count against kb. kb's figure is a writer block in a fresh KB (empty embedding cache:
every text goes through the model) that adds the texts with metadata and commits durably.
Then a query text is searched once (the model embeds it) and again (served from the query cache).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from kb.benchmarks.scifact import DATASET


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


def bench_end_to_end(count: int, folder: Path) -> dict[str, Any]:
    import kb
    from kb.embeddings import LocalSentenceTransformerModel

    texts, metadatas, ids = scifact_texts(count)
    warm, texts, metadatas, ids = texts[count:], texts[:count], metadatas[:count], ids[:count]
    model = LocalSentenceTransformerModel()
    model.embed(warm)  # load and warm the model outside every clock

    def bare() -> float:
        started = time.perf_counter()
        model.embed(texts)
        return time.perf_counter() - started

    before = bare()
    client = kb.api_client(home=folder)
    core = client.get_default_project().create_knowledge_bank("e2e").as_core_knowledge_bank()
    started = time.perf_counter()
    with core.get_writer() as writer:
        writer.as_langchain_vectorstore().add_texts(texts, metadatas, ids=ids)
    kb_seconds = time.perf_counter() - started
    after = bare()
    assert core.count() == count
    question = "Does the diffusion tensor imaging show white matter development in newborns?"
    started = time.perf_counter()
    core.search(query=question, k=10)
    first = time.perf_counter() - started
    repeated = []
    for _ in range(20):
        started = time.perf_counter()
        core.search(query=question, k=10)
        repeated.append(time.perf_counter() - started)
    embedder = client.get_llm_handle(core.embedding_llm_id).embedder
    client.close()
    bare_seconds = min(before, after)
    return {
        "documents": count,
        "bare_model_seconds": bare_seconds,
        "bare_model_seconds_runs": [before, after],
        "kb_ingest_seconds": kb_seconds,
        "kb_over_bare": kb_seconds / bare_seconds,
        "query_first_ms": first * 1000,
        "query_repeated_p50_ms": float(np.percentile(np.asarray(repeated) * 1000, 50)),
        "query_cache_hits": embedder.hits,
    }

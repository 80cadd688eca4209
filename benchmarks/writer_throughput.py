"""Writer throughput with embeddings served from the cache.

    python -m benchmarks.writer_throughput --chunks 10000 --out bench-results/writer.json

Fills the embedding cache of a fresh KB_HOME with vectors for N synthetic
chunks (so the local model is never called), then times one writer block
that adds all N documents and commits (durably: fsync + SQLite FULL). Beside
it, in the same run, LangChain FAISS's ``add_embeddings`` + ``save_local`` on
the same vectors, as the peer a user would otherwise pick.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from langchain_core.documents import Document

import kb
from benchmarks.results import write_results
from kb.embeddings import LOCAL_MINILM_ID

WORDS = ("cell protein gene study patients effect risk model data analysis clinical treatment response "
         "level expression increase reduced associated significant human mice tumor growth signal").split()


def synthetic_chunks(n: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    texts = [f"chunk {i}: " + " ".join(rng.choice(WORDS, size=int(rng.integers(40, 120)))) for i in range(n)]
    vectors = rng.normal(size=(n, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return texts, vectors


def bench_kb(texts: list[str], vectors: np.ndarray, home: Path) -> dict[str, float]:
    client = kb.api_client(home=home)
    client.embedding_cache.put_many(LOCAL_MINILM_ID, texts, vectors)
    core = client.get_default_project().create_knowledge_bank("bench").as_core_knowledge_bank()
    docs = [Document(page_content=t, metadata={"n": i, "source": f"doc{i // 10}"}) for i, t in enumerate(texts)]
    ids = [f"c{i}" for i in range(len(texts))]
    embedder = client.get_llm_handle(LOCAL_MINILM_ID).embedder
    started = time.perf_counter()
    with core.get_writer() as writer:
        writer.as_langchain_vectorstore().add_documents(docs, ids=ids)
    elapsed = time.perf_counter() - started
    assert embedder.misses == 0, "the model was called: the cache did not serve every chunk"
    assert core.count() == len(texts)
    client.close()
    return {"seconds": elapsed, "chunks_per_second": len(texts) / elapsed}


def bench_langchain_faiss(texts: list[str], vectors: np.ndarray, folder: Path) -> dict[str, float]:
    from langchain_community.vectorstores import FAISS
    from langchain_core.embeddings import FakeEmbeddings

    started = time.perf_counter()
    store = FAISS.from_embeddings(list(zip(texts, vectors.tolist(), strict=True)), FakeEmbeddings(size=384),
                                  metadatas=[{"n": i, "source": f"doc{i // 10}"} for i in range(len(texts))],
                                  ids=[f"c{i}" for i in range(len(texts))])
    store.save_local(str(folder))
    elapsed = time.perf_counter() - started
    return {"seconds": elapsed, "chunks_per_second": len(texts) / elapsed}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=10_000)
    parser.add_argument("--out", type=Path, default=Path("bench-results/writer_throughput.json"))
    args = parser.parse_args(argv)
    texts, vectors = synthetic_chunks(args.chunks)
    with tempfile.TemporaryDirectory() as tmp:
        kb_figures = bench_kb(texts, vectors, Path(tmp) / "home")
        peer = bench_langchain_faiss(texts, vectors, Path(tmp) / "lc")
    report = {
        "benchmark": "writer_throughput_cached_embeddings",
        "chunks": args.chunks,
        "machine": {"cpus": __import__("os").cpu_count(), "platform": platform.platform()},
        "kb_writer": kb_figures,
        "langchain_faiss_from_embeddings_save_local": peer,
        "ratio_kb_over_langchain": kb_figures["chunks_per_second"] / peer["chunks_per_second"],
    }
    write_results(args.out, report)
    print(f"kb writer, cached embeddings: {kb_figures['chunks_per_second']:,.0f} chunks/s "
          f"({args.chunks} chunks in {kb_figures['seconds']:.2f}s, durable commit)")
    print(f"LangChain FAISS from_embeddings + save_local: {peer['chunks_per_second']:,.0f} chunks/s")
    print(f"ratio kb / LangChain FAISS: {report['ratio_kb_over_langchain']:.2f}x   report: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

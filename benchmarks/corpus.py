"""Synthetic benchmark corpora that look like embedded text chunks, made once per size and cached on disk.

Vectors: real sentence embeddings are not uniform on the sphere; they sit near
a low-dimensional structure and cluster by topic (which is what lets HNSW and
IVF reach high recall). So each vector is a topic centre plus noise in a
48-dimensional latent space, mapped into 384 dimensions by a fixed random
matrix, plus a little isotropic noise, then L2-normalised. Queries are new
draws from the same mixture, never stored vectors.

Texts: words from a 30k-word pseudo vocabulary with Zipf frequencies, a
third of them from the chunk's topic vocabulary; lengths log-normal around
90 words (about 750 characters, a common RAG chunk size). Metadata: source
document, page, year, category (12 values) and a flag.

Files (``<cache>/corpus-<n>/``): ``vectors.npy`` (float32, no pickle),
``chunks.parquet`` (id, text, source, page, year, category, reviewed),
``queries.npy`` and ``queries.parquet`` (query texts).
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

DIM = 384
LATENT = 48
TOPICS = 256
VOCABULARY = 30_000
CATEGORIES = [f"c{i}" for i in range(12)]
SEED = 20261124


def default_cache() -> Path:
    return Path(os.environ.get("KB_BENCH_CACHE", Path.home() / ".cache" / "kb" / "bench"))


@dataclass
class Corpus:
    size: int
    folder: Path
    vectors: np.ndarray  # (n, 384) float32, unit length, memory-mapped
    table: pa.Table
    queries: np.ndarray  # (q, 384)
    query_texts: list[str]

    # Decoded from Arrow once and kept: what peers are given as Python lists is the harness's work, done before
    # any clock starts (``peer_run.ingest``), not part of a peer's ingestion.
    @functools.cached_property
    def ids(self) -> list[str]:
        return self.table.column("id").to_pylist()

    @functools.cached_property
    def texts(self) -> list[str]:
        return self.table.column("text").to_pylist()

    @functools.cached_property
    def _metadatas(self) -> list[dict[str, Any]]:
        columns = ["source", "page", "year", "category", "reviewed"]
        return self.table.select(columns).to_pylist()

    def metadatas(self) -> list[dict[str, Any]]:
        return self._metadatas


def _words(rng: np.random.Generator) -> np.ndarray:
    syllables = np.array(["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "zen", "pra", "gel", "dor", "fin", "hu",
                          "qua", "bri", "sto", "mar", "plo", "ish"])
    parts = rng.integers(0, syllables.size, size=(VOCABULARY, 4))
    lengths = rng.integers(1, 5, size=VOCABULARY)
    words = ["".join(syllables[row[:n]]) + str(i % 7 if i % 13 == 0 else "") for i, (row, n)
             in enumerate(zip(parts, lengths, strict=True))]
    return np.array(words)


def _generators(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(TOPICS, LATENT)).astype(np.float32)
    projection = (rng.normal(size=(LATENT, DIM)) / np.sqrt(LATENT)).astype(np.float32)
    words = _words(rng)
    topic_words = rng.integers(0, VOCABULARY, size=(TOPICS, 200))
    return centres, projection, words, topic_words


def _vectors(rng: np.random.Generator, topics: np.ndarray, centres: np.ndarray, projection: np.ndarray) -> np.ndarray:
    latent = centres[topics] + rng.normal(scale=0.7, size=(topics.size, LATENT)).astype(np.float32)
    out = latent @ projection + rng.normal(scale=0.05, size=(topics.size, DIM)).astype(np.float32)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out.astype(np.float32)


def _zipf_ids(rng: np.random.Generator, n: int) -> np.ndarray:
    ranks = rng.zipf(1.15, size=n)
    return (ranks - 1) % VOCABULARY


def _text(rng: np.random.Generator, topic: int, length: int, words: np.ndarray, topic_words: np.ndarray) -> str:
    ids = _zipf_ids(rng, length)
    own = rng.random(length) < 0.33
    ids[own] = topic_words[topic, rng.integers(0, topic_words.shape[1], size=int(own.sum()))]
    return " ".join(words[ids].tolist())


def build(size: int, folder: Path, queries: int = 200, seed: int = SEED) -> None:
    centres, projection, words, topic_words = _generators(seed)
    rng = np.random.default_rng(seed + size)
    folder.mkdir(parents=True, exist_ok=True)
    topics = rng.integers(0, TOPICS, size=size)
    vectors = np.lib.format.open_memmap(folder / "vectors.npy.part", mode="w+", dtype=np.float32, shape=(size, DIM))
    texts: list[str] = []
    lengths = np.clip(rng.lognormal(np.log(90), 0.35, size=size), 20, 400).astype(np.int64)
    step = 50_000
    with tqdm(total=size, desc=f"corpus {size:,}", unit="chunk", leave=False) as bar:
        for start in range(0, size, step):
            end = min(size, start + step)
            vectors[start:end] = _vectors(rng, topics[start:end], centres, projection)
            texts += [_text(rng, int(t), int(n), words, topic_words)
                      for t, n in zip(topics[start:end], lengths[start:end], strict=True)]
            bar.update(end - start)
    vectors.flush()
    del vectors
    table = pa.table({
        "id": [f"chunk-{i}" for i in range(size)],
        "text": texts,
        "source": [f"doc-{i // 20}.pdf" for i in range(size)],
        "page": (np.arange(size) % 20 + 1).tolist(),
        "year": rng.integers(1995, 2026, size=size).tolist(),
        "category": [CATEGORIES[c] for c in rng.integers(0, len(CATEGORIES), size=size)],
        "reviewed": (rng.random(size) < 0.5).tolist(),
    })
    pq.write_table(table, folder / "chunks.parquet")
    query_topics = rng.integers(0, TOPICS, size=queries)
    np.save(folder / "queries.npy", _vectors(rng, query_topics, centres, projection), allow_pickle=False)
    query_texts = [_text(rng, int(t), int(rng.integers(3, 8)), words, topic_words) for t in query_topics]
    pq.write_table(pa.table({"text": query_texts}), folder / "queries.parquet")
    os.replace(folder / "vectors.npy.part", folder / "vectors.npy")
    (folder / "corpus.json").write_text(json.dumps({"size": size, "seed": seed, "queries": queries}))


def load(size: int, cache: Path | None = None) -> Corpus:
    """The corpus of ``size`` chunks, built on first use (1M chunks: about two minutes, 2 GB)."""
    folder = (cache or default_cache()) / f"corpus-{size}"
    if not (folder / "corpus.json").exists():
        build(size, folder)
    return Corpus(
        size=size,
        folder=folder,
        vectors=np.load(folder / "vectors.npy", mmap_mode="r", allow_pickle=False),
        table=pq.read_table(folder / "chunks.parquet"),
        queries=np.load(folder / "queries.npy", allow_pickle=False),
        query_texts=pq.read_table(folder / "queries.parquet").column("text").to_pylist(),
    )


def exact_neighbours(corpus: Corpus, k: int = 10) -> np.ndarray:
    """Row numbers of the exact top-k for every query (the recall reference), cached next to the corpus."""
    path = corpus.folder / f"exact-top{k}.npy"
    if path.exists():
        return np.load(path, allow_pickle=False)
    best = np.zeros((len(corpus.queries), k), dtype=np.int64)
    best_scores = np.full((len(corpus.queries), k), -np.inf, dtype=np.float32)
    for start in range(0, corpus.size, 200_000):
        block = np.asarray(corpus.vectors[start : start + 200_000])
        scores = corpus.queries @ block.T
        top = np.argpartition(-scores, min(k, scores.shape[1] - 1), axis=1)[:, :k]
        merged_ids = np.concatenate([best, top + start], axis=1)
        merged_scores = np.concatenate([best_scores, np.take_along_axis(scores, top, axis=1)], axis=1)
        order = np.argsort(-merged_scores, axis=1, kind="stable")[:, :k]
        best = np.take_along_axis(merged_ids, order, axis=1)
        best_scores = np.take_along_axis(merged_scores, order, axis=1)
    np.save(path, best, allow_pickle=False)
    return best

"""Batch ingestion throughput with cached embeddings: rows and chunks per second from a Parquet file.

    python -m benchmarks.ingest --rows 10000 --out bench-results/ingest.json [--trace-memory]

Writes a Parquet file of N synthetic rows (300 to 3,000 characters of text,
three metadata columns; written in row groups of 10,000, so building it stays
small), fills the embedding cache of a fresh KB_HOME with vectors for every
chunk the splitter will make (so all-MiniLM-L6-v2 is never called: the figure
is kb's own path: read, split, validate, hash, look up stored chunks, cache
lookup, durable FAISS commit), then times:

1. the first ingestion into an empty knowledge bank (with a metadata schema);
2. a re-run of the same file, where every chunk is found unchanged and skipped.

``--trace-memory`` also reports the peak of Python allocations during the
first ingestion (tracemalloc: slower, so timed figures come from the
untraced runs); comparing two ``--rows`` values shows memory bounded by the
batch, not the file.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import tempfile
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from langchain_text_splitters import RecursiveCharacterTextSplitter

import kb
from benchmarks.results import write_results
from benchmarks.writer_throughput import WORDS
from kb.embeddings import LOCAL_MINILM_ID
from writers.ingest import IngestOptions, ingest

SCHEMA = {"lang": "string", "year": "int", "group": "int", "source": "string", "start_index": "int"}


def write_rows(path: Path, rows: int, seed: int = 0, group_rows: int = 10_000) -> None:
    rng = np.random.default_rng(seed)
    schema = pa.schema([("id", pa.string()), ("text", pa.string()), ("lang", pa.string()), ("year", pa.int64()),
                        ("group", pa.int64())])
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, rows, group_rows):
            ids = range(start, min(rows, start + group_rows))
            texts = []
            for i in ids:
                words = rng.choice(WORDS, size=int(rng.integers(40, 400)))
                sentences = [" ".join(words[j:j + 12]) + "." for j in range(0, len(words), 12)]
                texts.append(f"Row {i}. " + " ".join(sentences))
            writer.write_table(pa.table({"id": [f"r{i}" for i in ids], "text": texts,
                                         "lang": ["en" if i % 3 else "fr" for i in ids],
                                         "year": [1990 + i % 35 for i in ids], "group": [i % 50 for i in ids]},
                                        schema=schema))


def warm_cache(client: Any, model_id: str, path: Path, chunk_size: int, chunk_overlap: int) -> int:
    """Put a (random, unit) vector for every chunk text of the file into the embedding cache."""
    splitter = RecursiveCharacterTextSplitter(chunk_size=chunk_size, chunk_overlap=chunk_overlap)
    rng = np.random.default_rng(1)
    chunks = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=5000, columns=["text"]):
        texts = [c for t in batch.column("text").to_pylist() for c in splitter.split_text(t)]
        vectors = rng.normal(size=(len(texts), 384)).astype(np.float32)
        client.embedding_cache.put_many(model_id, texts, vectors / np.linalg.norm(vectors, axis=1, keepdims=True))
        chunks += len(texts)
    return chunks


def run(rows: int, chunk_size: int, chunk_overlap: int, commit_every: int, trace_memory: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rows.parquet"
        write_rows(path, rows)
        client = kb.api_client(home=Path(tmp) / "home")
        expected_chunks = warm_cache(client, LOCAL_MINILM_ID, path, chunk_size, chunk_overlap)
        options = IngestOptions(id_column="id", chunk_size=chunk_size, chunk_overlap=chunk_overlap,
                                commit_every=commit_every)
        project = client.get_default_project()
        core = project.create_knowledge_bank("ingest", settings={"metadata_schema": SCHEMA}).as_core_knowledge_bank()
        first = ingest(core, path, options, progress=False)
        assert first.texts_embedded == 0, "the model was called: the cache did not serve every chunk"
        assert core.count() == first.chunks_written == expected_chunks and first.rows_written == rows
        rerun = ingest(core, path, options, progress=False)
        assert rerun.chunks_written == 0 and rerun.chunks_skipped == expected_chunks
        figures: dict[str, Any] = {
            "rows": rows, "chunks": expected_chunks, "commits": first.commits,
            "first_ingestion": {"seconds": round(first.seconds, 2), "rows_per_second": round(first.rate(rows), 1),
                                "chunks_per_second": round(first.rate(first.chunks_written), 1)},
            "unchanged_rerun": {"seconds": round(rerun.seconds, 2), "rows_per_second": round(rerun.rate(rows), 1)},
        }
        if trace_memory:
            traced = project.create_knowledge_bank("traced", settings={"metadata_schema": SCHEMA}) \
                .as_core_knowledge_bank()
            tracemalloc.start()
            ingest(traced, path, options, progress=False)
            figures["python_peak_mib_during_ingestion"] = round(tracemalloc.get_traced_memory()[1] / 2**20, 1)
            tracemalloc.stop()
        client.close()
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--chunk-size", type=int, default=1000)
    parser.add_argument("--chunk-overlap", type=int, default=200)
    parser.add_argument("--commit-every", type=int, default=5000)
    parser.add_argument("--trace-memory", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("bench-results/ingest.json"))
    args = parser.parse_args(argv)
    figures = run(args.rows, args.chunk_size, args.chunk_overlap, args.commit_every, args.trace_memory)
    report = {"benchmark": "batch_ingestion_cached_embeddings", "format": "parquet", "model": "all-MiniLM-L6-v2 "
              "(384 dimensions, served from the embedding cache)", "store": "FAISS FLAT",
              "chunk_size": args.chunk_size, "chunk_overlap": args.chunk_overlap, "commit_every": args.commit_every,
              **figures, "max_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform()}}
    write_results(args.out, report)
    first, rerun = report["first_ingestion"], report["unchanged_rerun"]
    print(f"ingestion, cached embeddings: {first['rows_per_second']:,.0f} rows/s, {first['chunks_per_second']:,.0f} "
          f"chunks/s ({report['rows']} rows -> {report['chunks']} chunks in {first['seconds']:.2f}s, "
          f"{report['commits']} durable commits)")
    print(f"unchanged re-run: {rerun['rows_per_second']:,.0f} rows/s (every chunk skipped, nothing embedded)")
    if "python_peak_mib_during_ingestion" in report:
        print(f"peak Python allocations during ingestion: {report['python_peak_mib_during_ingestion']} MiB")
    print(f"report: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

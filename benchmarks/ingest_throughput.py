"""Ingestion throughput with cached embeddings: rows and chunks per second from a Parquet file.

    python -m benchmarks.ingest_throughput --rows 10000 --out bench-results/ingest.json

The embedding cache is filled beforehand with vectors for every chunk, so the
figure measures kb's own path (read, chunk, validate, cache lookup, commit).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import kb
from benchmarks.results import write_results
from benchmarks.writer_throughput import synthetic_chunks
from kb.embeddings import LOCAL_MINILM_ID
from writers.ingest import IngestOptions, ingest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--out", type=Path, default=Path("bench-results/ingest_throughput.json"))
    args = parser.parse_args(argv)

    texts, vectors = synthetic_chunks(args.rows)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rows.parquet"
        pq.write_table(pa.Table.from_pylist([{"id": f"r{i}", "text": t, "group": i % 10}
                                             for i, t in enumerate(texts)]), path)
        client = kb.api_client(home=Path(tmp) / "home")
        client.embedding_cache.put_many(LOCAL_MINILM_ID, texts, vectors)
        core = client.get_default_project().create_knowledge_bank("ingest").as_core_knowledge_bank()
        started = time.perf_counter()
        report = ingest(core, path, IngestOptions(id_column="id", chunk_size=0), progress=False)
        elapsed = time.perf_counter() - started
        assert report.texts_embedded == 0 and core.count() == args.rows
        rerun_started = time.perf_counter()
        ingest(core, path, IngestOptions(id_column="id", chunk_size=0), progress=False)
        rerun = time.perf_counter() - rerun_started
    figures = {"rows": args.rows, "rows_per_second": round(args.rows / elapsed, 1), "seconds": round(elapsed, 2),
               "unchanged_rerun_rows_per_second": round(args.rows / rerun, 1), "cpus": os.cpu_count(),
               "vector_dim": int(np.asarray(vectors).shape[1])}
    write_results(args.out, figures)
    print(f"ingestion, cached embeddings: {figures['rows_per_second']:,.0f} rows/s ({args.rows} rows, one chunk each); "
          f"unchanged re-run: {figures['unchanged_rerun_rows_per_second']:,.0f} rows/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

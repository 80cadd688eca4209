"""Batch ingestion of JSONL, CSV, Parquet and Arrow IPC files into a knowledge bank.

Files are read through pyarrow as a stream of record batches, so memory is
bounded by the batch size, not the file size. Each row's text is chunked
with langchain-text-splitters; chunks carry ``source`` and ``start_index``
metadata (when the KB's schema allows them) plus two reserved keys:
``KB_ROW_ID`` (the row a chunk came from) and ``KB_CONTENT_HASH``.

Idempotence: chunk ids are stable (``<row id>#<chunk>`` from the id column,
or derived from the source name and the row's content). Before embedding,
the chunks already stored with the same id and content hash are skipped, so
a re-run after a crash embeds and writes only what is missing and never
duplicates. Progress is committed every ``commit_every`` chunks, each commit
atomic. Bad rows are rejected with their row number and the reason.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
from langchain_text_splitters import RecursiveCharacterTextSplitter
from tqdm import tqdm

from kb.errors import InvalidInputError, KBError, SchemaError
from stores.base import Record
from writers.schema import validate_metadata

FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet",
           ".arrow": "arrow", ".feather": "arrow", ".ipc": "arrow"}
ROW_KEY, HASH_KEY = "KB_ROW_ID", "KB_CONTENT_HASH"
_CRASH_AFTER = "KB_INGEST_CRASH_AFTER_COMMITS"  # test-only fault injection: die after N commits


@dataclass
class IngestOptions:
    text_column: str = "text"
    id_column: str | None = None
    metadata_columns: list[str] | None = None  # None: every column but text and id
    source: str | None = None  # defaults to the file name
    format: str | None = None  # defaults to the file extension
    chunk_size: int = 1000  # 0 disables chunking
    chunk_overlap: int = 200
    batch_rows: int = 1000
    commit_every: int = 5000  # chunks per atomic commit
    max_rejected: int | None = None

    def validate(self) -> None:
        if self.chunk_size < 0 or self.chunk_overlap < 0 or (self.chunk_size and self.chunk_overlap >= self.chunk_size):
            raise InvalidInputError("chunk_size must be ≥ 0 and chunk_overlap smaller than chunk_size")
        if self.batch_rows < 1 or self.commit_every < 1:
            raise InvalidInputError("batch_rows and commit_every must be positive")


@dataclass
class IngestReport:
    rows_read: int = 0
    rows_written: int = 0
    rows_skipped: int = 0  # every chunk already stored unchanged
    rows_rejected: int = 0
    chunks_written: int = 0
    chunks_skipped: int = 0
    texts_embedded: int = 0
    commits: int = 0
    seconds: float = 0.0
    rejected: list[dict[str, Any]] = field(default_factory=list)  # the first 1000: row number and reason

    def summary(self) -> str:
        return (f"{self.rows_read} rows read: {self.rows_written} written, {self.rows_skipped} skipped (unchanged), "
                f"{self.rows_rejected} rejected; {self.chunks_written} chunks written, {self.chunks_skipped} "
                f"unchanged; {self.texts_embedded} texts embedded; {self.commits} commits in {self.seconds:.1f}s")

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def detect_format(path: Path, explicit: str | None) -> str:
    fmt = explicit or FORMATS.get(path.suffix.lower())
    if fmt not in set(FORMATS.values()):
        raise InvalidInputError(f"cannot tell the format of {path.name!r}: use --format jsonl, csv, parquet or arrow")
    return fmt


def iter_row_batches(path: Path, fmt: str, batch_rows: int) -> Iterator[list[dict[str, Any] | InvalidInputError]]:
    """Lists of at most ``batch_rows`` rows, read as a stream; an unparsable row is an error in its place."""
    import pyarrow.csv as pcsv
    import pyarrow.ipc as ipc
    import pyarrow.parquet as pq

    if not path.is_file():
        raise InvalidInputError(f"input file {str(path)!r} does not exist")
    if fmt == "jsonl":
        # Line by line rather than pyarrow.json: one malformed or oddly typed line must reject that row,
        # not the whole file (pyarrow infers one type per column for the file).
        with open(path, encoding="utf-8", errors="replace") as handle:
            batch: list[dict[str, Any] | InvalidInputError] = []
            for line in handle:
                if not line.strip():
                    continue
                try:
                    value = json.loads(line)
                    batch.append(value if isinstance(value, dict) else
                                 InvalidInputError(f"line is a JSON {type(value).__name__}, not an object"))
                except ValueError as exc:
                    batch.append(InvalidInputError(f"not valid JSON: {exc}"))
                if len(batch) >= batch_rows:
                    yield batch
                    batch = []
            if batch:
                yield batch
        return
    try:
        if fmt == "parquet":
            reader: Any = pq.ParquetFile(path).iter_batches(batch_size=batch_rows)
        elif fmt == "csv":
            reader = pcsv.open_csv(path, read_options=pcsv.ReadOptions(block_size=1 << 20))
        else:
            try:
                file_reader = ipc.open_file(pa.memory_map(str(path)))
                reader = (file_reader.get_batch(i) for i in range(file_reader.num_record_batches))
            except pa.ArrowInvalid:
                reader = ipc.open_stream(pa.memory_map(str(path)))
        for record_batch in reader:
            for start in range(0, record_batch.num_rows, batch_rows):
                yield record_batch.slice(start, batch_rows).to_pylist()
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as exc:
        raise InvalidInputError(f"cannot read {path.name} as {fmt}: {exc}") from exc


def _hash(*parts: str) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode("utf-8", "surrogatepass"))
        digest.update(b"\x00")
    return digest.hexdigest()


class _Ingestion:
    def __init__(self, core: Any, path: Path, options: IngestOptions, progress: bool) -> None:
        self.core, self.path, self.options = core, path, options
        self.source = options.source or path.name
        self.schema = core.schema
        self.splitter = (RecursiveCharacterTextSplitter(chunk_size=options.chunk_size,
                                                        chunk_overlap=options.chunk_overlap, add_start_index=True)
                         if options.chunk_size else None)
        self.with_position = not self.schema or {"source", "start_index"} <= set(self.schema)
        self.report = IngestReport()
        self.pending: list[tuple[int, Record]] = []  # (row number, record without vector)
        self.bar = tqdm(desc=f"ingest {path.name}", unit=" rows", disable=not progress)
        self.crash_after = int(os.environ.get(_CRASH_AFTER, "0") or 0)

    def reject(self, row_number: int, reason: str) -> None:
        self.report.rows_rejected += 1
        if len(self.report.rejected) < 1000:
            self.report.rejected.append({"row": row_number, "reason": reason})
        limit = self.options.max_rejected
        if limit is not None and self.report.rows_rejected > limit:
            raise InvalidInputError(f"more than {limit} rows rejected; last: row {row_number}: {reason}")

    def chunks_of(self, row_number: int, row: dict[str, Any]) -> list[Record]:
        options = self.options
        text = row.get(options.text_column)
        if not isinstance(text, str) or not text.strip():
            raise InvalidInputError(f"column {options.text_column!r} is missing or empty")
        skip = {options.text_column, options.id_column}
        columns = options.metadata_columns if options.metadata_columns is not None else \
            [c for c in row if c not in skip]
        metadata = {c: row.get(c) for c in columns if row.get(c) is not None}
        metadata = validate_metadata(self.schema, metadata, f"row {row_number}")
        row_id = str(row[options.id_column]) if options.id_column and row.get(options.id_column) is not None \
            else _hash(self.source, text)[:24]
        pieces = ([(d.page_content, d.metadata["start_index"]) for d in self.splitter.create_documents([text])]
                  if self.splitter else [(text, 0)])
        records = []
        for index, (chunk, start) in enumerate(pieces):
            meta = dict(metadata)
            if self.with_position:
                meta.update({"source": self.source, "start_index": int(start)})
            meta[ROW_KEY] = row_id
            meta[HASH_KEY] = _hash(chunk, json.dumps(meta, sort_keys=True, default=str))
            records.append(Record(f"{row_id}#{index}", chunk, meta))
        return records

    def run(self) -> IngestReport:
        started = time.perf_counter()
        fmt = detect_format(self.path, self.options.format)
        row_number = 0
        for batch in iter_row_batches(self.path, fmt, self.options.batch_rows):
            for row in batch:
                row_number += 1
                self.report.rows_read += 1
                try:
                    if isinstance(row, InvalidInputError):
                        raise row
                    self.pending.extend((row_number, r) for r in self.chunks_of(row_number, row))
                except (InvalidInputError, SchemaError) as exc:
                    self.reject(row_number, str(exc))
            if len(self.pending) >= self.options.commit_every:
                self.flush()
            self.bar.update(len(batch))
            elapsed = max(time.perf_counter() - started, 1e-9)
            self.bar.set_postfix(chunks_s=f"{self.report.chunks_written / elapsed:.0f}",
                                 embeds_s=f"{self.report.texts_embedded / elapsed:.0f}")
        self.flush()
        self.bar.close()
        self.report.seconds = time.perf_counter() - started
        return self.report

    def flush(self) -> None:
        if not self.pending:
            return
        pending, self.pending = self.pending, []
        existing = {r.id: r.metadata.get(HASH_KEY) for r in self.core.driver.get([r.id for _, r in pending])}
        fresh = [(n, r) for n, r in pending if existing.get(r.id) != r.metadata[HASH_KEY]]
        self.report.chunks_skipped += len(pending) - len(fresh)
        rows_fresh = {n for n, _ in fresh}
        rows_all = {n for n, _ in pending}
        self.report.rows_skipped += len(rows_all - rows_fresh)
        self.report.rows_written += len(rows_fresh)
        if not fresh:
            return
        embedder = self.core._embedder()
        misses = embedder.misses
        vectors = embedder.embed_documents([r.text for _, r in fresh])
        self.report.texts_embedded += embedder.misses - misses
        for (_, record), vector in zip(fresh, vectors, strict=True):
            record.vector = vector
        changed_rows = sorted({r.metadata[ROW_KEY] for _, r in fresh if r.id in existing})
        with self.core.driver.begin() as tx:
            if changed_rows:  # a changed row may now have fewer chunks: drop all of its old ones first
                tx.delete_where(_row_filter(changed_rows))
            tx.upsert([r for _, r in fresh])
        self.report.chunks_written += len(fresh)
        self.report.commits += 1
        if self.crash_after and self.report.commits >= self.crash_after:
            os._exit(137)  # simulated crash (tests only): no cleanup, like SIGKILL


def _row_filter(row_ids: list[str]) -> Any:
    from kb.filters import parse_filter

    return parse_filter({ROW_KEY: {"$in": row_ids}})


def ingest(core: Any, path: str | Path, options: IngestOptions | None = None, progress: bool = True) -> IngestReport:
    """Ingest one file into the knowledge bank behind ``core`` (a CoreKnowledgeBank)."""
    options = options or IngestOptions()
    options.validate()
    return _Ingestion(core, Path(path), options, progress).run()


def main(argv: list[str] | None = None) -> int:
    """``kb ingest``: exit 0 when every row was written or skipped, 1 when some were rejected, 2 on errors."""
    parser = argparse.ArgumentParser(prog="kb ingest", description="Ingest JSONL, CSV, Parquet or Arrow files.")
    parser.add_argument("file", type=Path)
    parser.add_argument("--kb", required=True, help="knowledge bank id")
    parser.add_argument("--project", default="DEFAULT")
    parser.add_argument("--home", type=Path, help="KB_HOME (default: $KB_HOME)")
    parser.add_argument("--format", choices=sorted(set(FORMATS.values())))
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--id-column")
    parser.add_argument("--metadata-columns", help="comma-separated; default: every other column")
    parser.add_argument("--source", help="source name recorded in chunk metadata (default: the file name)")
    parser.add_argument("--chunk-size", type=int, default=1000)
    parser.add_argument("--chunk-overlap", type=int, default=200)
    parser.add_argument("--commit-every", type=int, default=5000, help="chunks per atomic commit")
    parser.add_argument("--max-rejected", type=int)
    parser.add_argument("--report", type=Path, help="write the report as JSON here")
    args = parser.parse_args(argv)
    import kb

    options = IngestOptions(
        text_column=args.text_column, id_column=args.id_column, source=args.source, format=args.format,
        metadata_columns=[c for c in args.metadata_columns.split(",") if c] if args.metadata_columns else None,
        chunk_size=args.chunk_size, chunk_overlap=args.chunk_overlap, commit_every=args.commit_every,
        max_rejected=args.max_rejected)
    try:
        core = kb.api_client(home=args.home).get_project(args.project).get_knowledge_bank(args.kb) \
            .as_core_knowledge_bank()
        report = ingest(core, args.file, options, progress=True)
    except KBError as exc:
        print(f"kb ingest: {exc}", file=sys.stderr)
        return 2
    for item in report.rejected[:20]:
        print(f"rejected row {item['row']}: {item['reason']}", file=sys.stderr)
    print(report.summary())
    if args.report:
        args.report.write_text(json.dumps(report.to_dict(), indent=2))
    return 1 if report.rows_rejected else 0

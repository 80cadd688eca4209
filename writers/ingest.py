"""Batch ingestion of JSONL, CSV, Parquet and Arrow IPC files into a knowledge bank.

``ingest(core, path, options) -> IngestReport`` is the library entry point
(the REST endpoint calls it); ``main(argv) -> int`` is ``kb ingest``.

Files are read as a stream of row batches (``writers.sources``), so memory is
bounded by ``batch_rows`` rows plus ``commit_every`` pending chunks, whatever
the file size. Each row's text is split with langchain-text-splitters; every
chunk records its ``source`` and ``start_index`` (under the reserved keys
``KB_SOURCE`` / ``KB_START_INDEX`` when the KB's schema does not declare them)
and three reserved keys: ``KB_ROW_ID`` (its row), ``KB_CHUNKS`` (how many
chunks the row has) and ``KB_CONTENT_HASH`` (text + metadata).

Idempotence: chunk ids are stable, ``<row id>#<n>``, where the row id is the
id column's value or a hash of the source name and the row's text. Before
embedding, chunks already stored with the same id and content hash are
skipped (neither embedded nor written); a row that now has fewer chunks loses
its extra old ones in the same commit. Work is committed every
``commit_every`` chunks, each commit atomic and holding whole rows, so a
crash loses at most the open batch and a re-run finishes the job without
duplicates or re-embedding. Bad rows are rejected with their row number and
the reason; the job stops only past ``max_rejected`` rejected rows.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
from tqdm import tqdm

from kb_base.errors import InvalidInputError, SchemaError
from kb_base.input_checks import check_id, check_text
from stores.base import Record
from writers.chunking import CHUNKS_KEY, HASH_KEY, ROW_KEY, make_splitter, split_chunks
from writers.schema import RESERVED_PREFIX, validate_metadata
from writers.sources import FORMAT_NAMES, BadRow, RowSource, detect_format, plain_value
from writers.target import KnowledgeBankTarget

if TYPE_CHECKING:  # the engines build on this module
    from writers.engines import Engine

log = logging.getLogger(__name__)

MAX_ID_LENGTH = 480  # the stores take ids up to 512 characters; "#<n>" is appended
MAX_LISTED_REJECTIONS = 1000


class TooManyRejectedError(InvalidInputError):
    """More rows were rejected than ``max_rejected`` allows; ``report`` holds what was done before stopping."""

    code = "too_many_rejected"

    def __init__(self, message: str, report: IngestReport) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class IngestOptions:
    text_column: str = "text"
    id_column: str | None = None  # None: ids derived from the source name and the text
    metadata_columns: list[str] | None = None  # None: every other column (with a schema: the schema's)
    source: str | None = None  # recorded in chunk metadata and part of derived ids; default: the file name
    format: str | None = None  # jsonl, csv, parquet or arrow; default: from the file extension
    chunk_size: int = 1000  # characters; 0 keeps each row's text whole
    chunk_overlap: int = 200
    batch_rows: int = 1000  # rows read at a time
    commit_every: int = 5000  # pending chunks that trigger an atomic commit
    max_rejected: int | None = None  # stop (TooManyRejectedError) past this many rejected rows

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> IngestOptions:
        """Options from a JSON object or query parameters; unknown names are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InvalidInputError(f"unknown ingestion options: {', '.join(unknown)}; "
                                    f"known: {', '.join(sorted(known))}")
        options = cls(**dict(values))
        options.validate()
        return options

    def validate(self) -> None:
        def integer(name: str, minimum: int) -> None:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise InvalidInputError(f"ingestion option {name} must be an integer ≥ {minimum}, got {value!r}")

        for name, minimum in (("chunk_size", 0), ("chunk_overlap", 0), ("batch_rows", 1), ("commit_every", 1)):
            integer(name, minimum)
        if self.max_rejected is not None:
            integer("max_rejected", 0)
        if self.chunk_size and self.chunk_overlap >= self.chunk_size:
            raise InvalidInputError(f"chunk_overlap ({self.chunk_overlap}) must be smaller than chunk_size "
                                    f"({self.chunk_size})")
        if not isinstance(self.text_column, str) or not self.text_column:
            raise InvalidInputError("text_column must be a column name")
        if self.format is not None and self.format not in FORMAT_NAMES:
            raise InvalidInputError(f"unknown format {self.format!r}; formats: {', '.join(FORMAT_NAMES)}")
        if self.metadata_columns is not None and (isinstance(self.metadata_columns, str) or not all(
                isinstance(c, str) and c for c in self.metadata_columns)):
            raise InvalidInputError("metadata_columns must be a list of column names")


@dataclass
class IngestReport:
    rows_read: int = 0
    rows_written: int = 0  # at least one chunk written (or an old chunk removed)
    rows_skipped: int = 0  # every chunk already stored unchanged, or the row repeats a later one
    rows_rejected: int = 0
    rows_duplicate: int = 0  # of rows_skipped: replaced by a later row with the same id in the same commit
    chunks_written: int = 0
    chunks_skipped: int = 0
    chunks_removed: int = 0  # old chunks of rows that now have fewer
    texts_embedded: int = 0  # texts the embedding model computed (cache misses)
    embedding_cache_hits: int = 0
    commits: int = 0
    seconds: float = 0.0
    columns: dict[str, Any] = field(default_factory=dict)
    rejected: list[dict[str, Any]] = field(default_factory=list)  # the first 1000: row number and reason

    @property
    def exit_status(self) -> int:
        return 1 if self.rows_rejected else 0

    def rate(self, count: int) -> float:
        return count / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        return (f"{self.rows_read} rows: {self.rows_written} written, {self.rows_skipped} skipped (unchanged), "
                f"{self.rows_rejected} rejected; {self.chunks_written} chunks written, {self.chunks_skipped} "
                f"unchanged, {self.chunks_removed} removed; {self.texts_embedded} texts embedded, "
                f"{self.embedding_cache_hits} from the cache; {self.commits} commits in {self.seconds:.1f}s "
                f"({self.rate(self.rows_read):,.0f} rows/s, {self.rate(self.chunks_written):,.0f} chunks/s)")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "exit_status": self.exit_status,
                "rows_per_second": round(self.rate(self.rows_read), 1),
                "chunks_per_second": round(self.rate(self.chunks_written), 1)}


def _digest(*parts: str) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode("utf-8", "surrogatepass"))
        digest.update(b"\x00")
    return digest.hexdigest()[:32]


class _Ingestion:
    def __init__(self, core: KnowledgeBankTarget, path: Path, options: IngestOptions, progress: bool,
                 on_commit: Callable[[IngestReport], None] | None) -> None:
        self.core, self.options, self.on_commit = core, options, on_commit
        core.refresh()
        self.schema = core.schema
        self.source = options.source or path.name
        self.rows = RowSource(path, detect_format(path, options.format), options.batch_rows, self.schema)
        self.splitter = make_splitter(options.chunk_size, options.chunk_overlap)
        # plain keys when the schema allows them (or there is none), else reserved keys, valid under any schema
        self.source_key = "source" if not self.schema or self.schema.get("source") == "string" else "KB_SOURCE"
        self.start_key = "start_index" if not self.schema or self.schema.get("start_index") == "int" \
            else "KB_START_INDEX"
        self.metadata_columns = self._resolve_columns()
        self.report = IngestReport(columns={"text": options.text_column, "id": options.id_column,
                                            "metadata": self.metadata_columns})
        self.pending: dict[str, tuple[int | None, list[Record]]] = {}  # row id -> (row number, chunks)
        self.pending_chunks = 0
        self.bar = tqdm(desc=f"ingest {path.name}", unit=" rows", total=self.rows.total_rows,
                        disable=not progress, dynamic_ncols=True)

    def _resolve_columns(self) -> list[str] | None:
        """Check the column options against the file (when its columns are known up front)."""
        options, columns = self.options, self.rows.columns
        if options.metadata_columns is not None and self.schema:
            # kb's own KB_ keys (e.g. retrieval-content images) are valid under any schema, as in the writer
            outside = [c for c in options.metadata_columns
                       if c not in self.schema and not c.startswith(RESERVED_PREFIX)]
            if outside:
                raise SchemaError(f"metadata columns {outside} are not in the knowledge bank's metadata schema "
                                  f"(declared keys: {', '.join(sorted(self.schema))})")
        if columns is None:  # JSONL: checked row by row
            return options.metadata_columns
        named = [options.text_column, *([options.id_column] if options.id_column else []),
                 *(options.metadata_columns or [])]
        missing = [c for c in named if c not in columns]
        if missing:
            raise InvalidInputError(f"{self.rows.path.name} has no column {', '.join(map(repr, missing))}; "
                                    f"its columns: {', '.join(columns)}")
        text_type = self.rows.types.get(options.text_column)
        if text_type is not None and self.rows.format != "csv" and not (
                pa.types.is_string(text_type) or pa.types.is_large_string(text_type)
                or pa.types.is_string_view(text_type)):
            raise InvalidInputError(f"text column {options.text_column!r} holds {text_type}, not text")
        if options.metadata_columns is not None:
            return list(options.metadata_columns)
        others = [c for c in columns if c not in (options.text_column, options.id_column)]
        return [c for c in others if c in self.schema] if self.schema else others

    # --- rows to chunks -----------------------------------------------------------------------

    def reject(self, number: int | None, reason: str) -> None:
        report = self.report
        report.rows_rejected += 1
        if len(report.rejected) < MAX_LISTED_REJECTIONS:
            report.rejected.append({"row": number, "reason": reason})
        limit = self.options.max_rejected
        if limit is not None and report.rows_rejected > limit:
            where = f"row {number}" if number is not None else "a row"
            raise TooManyRejectedError(f"stopped: more than {limit} rows rejected (last: {where}: {reason}); "
                                       f"the rows before the last commit are stored", report)

    def chunks_of(self, number: int | None, row: dict[str, Any]) -> tuple[str, list[Record]]:
        options, label = self.options, f"row {number}"
        text = row.get(options.text_column)
        if text is None or (isinstance(text, str) and not text.strip()):
            raise InvalidInputError(f"{label}: text column {options.text_column!r} is missing or empty")
        if not isinstance(text, str):
            raise InvalidInputError(f"{label}: text column {options.text_column!r} holds a "
                                    f"{type(text).__name__}, not text")
        check_text(text, f"{label}: text column {options.text_column!r}")
        if options.id_column:
            given = row.get(options.id_column)
            if given is None or str(given) == "":
                raise InvalidInputError(f"{label}: id column {options.id_column!r} is missing or empty")
            row_id = str(given)
            if len(row_id) > MAX_ID_LENGTH:
                raise InvalidInputError(f"{label}: id {row_id[:40]!r}... is longer than {MAX_ID_LENGTH} characters")
            check_id(row_id, f"{label}: id column {options.id_column!r}")
        else:
            row_id = _digest(self.source, text)
        if self.metadata_columns is not None:
            wanted = self.metadata_columns
        else:  # JSONL without a column list: every other key (with a schema: the schema's keys)
            wanted = [k for k in row if k not in (options.text_column, options.id_column)
                      and (not self.schema or k in self.schema)]
        metadata = {c: plain_value(row.get(c)) for c in wanted}
        metadata = validate_metadata(self.schema, {c: v for c, v in metadata.items() if v is not None}, label)
        metadata.setdefault(self.source_key, self.source)  # a row's own source column wins
        pieces = split_chunks(text, self.splitter, self.options.chunk_size)
        records = []
        for index, (chunk, start) in enumerate(pieces):
            meta = {**metadata, self.start_key: start, ROW_KEY: row_id, CHUNKS_KEY: len(pieces)}
            try:
                canonical = json.dumps(meta, sort_keys=True, allow_nan=False, ensure_ascii=False)
            except (TypeError, ValueError) as exc:
                raise InvalidInputError(f"{label}: metadata cannot be stored as JSON: {exc}") from exc
            meta[HASH_KEY] = _digest(chunk, canonical)
            records.append(Record(f"{row_id}#{index}", chunk, meta))
        return row_id, records

    def add(self, number: int | None, row: dict[str, Any] | BadRow) -> None:
        self.report.rows_read += 1
        try:
            if isinstance(row, BadRow):
                raise InvalidInputError(row.reason if number is None else f"row {number}: {row.reason}")
            row_id, records = self.chunks_of(number, row)
        except InvalidInputError as exc:  # SchemaError included
            self.reject(number, str(exc))
            return
        previous = self.pending.pop(row_id, None)
        if previous is not None:  # the same id twice in one commit: the later row wins
            self.pending_chunks -= len(previous[1])
            self.report.rows_skipped += 1
            self.report.rows_duplicate += 1
        self.pending[row_id] = (number, records)
        self.pending_chunks += len(records)

    # --- the job ------------------------------------------------------------------------------

    def run(self) -> IngestReport:
        started = time.perf_counter()
        options = self.options
        columns = None
        if self.metadata_columns is not None:
            columns = list(dict.fromkeys([options.text_column, *([options.id_column] if options.id_column else []),
                                          *self.metadata_columns]))
        text_columns = [c for c in (options.text_column, options.id_column) if c]
        try:
            for batch in self.rows.batches(columns, text_columns):
                for number, row in batch:
                    self.add(number, row)
                if self.pending_chunks >= options.commit_every:
                    self.flush()
                self.bar.update(len(batch))
                elapsed = max(time.perf_counter() - started, 1e-9)
                self.bar.set_postfix(chunks_s=f"{self.report.chunks_written / elapsed:.0f}",
                                     embeds_s=f"{self.report.texts_embedded / elapsed:.0f}",
                                     rejected=self.report.rows_rejected, refresh=False)
            self.flush()
        finally:
            self.bar.close()
            self.report.seconds = time.perf_counter() - started
        return self.report

    def flush(self) -> None:
        if not self.pending:
            return
        pending, self.pending, self.pending_chunks = self.pending, {}, 0
        driver = self.core.driver
        stored = {r.id: r.metadata for r in driver.get([r.id for _, records in pending.values() for r in records])}
        fresh: list[Record] = []
        stale: list[str] = []
        for row_id, (_, records) in pending.items():
            changed = [r for r in records if (stored.get(r.id) or {}).get(HASH_KEY) != r.metadata[HASH_KEY]]
            old_count = (stored.get(f"{row_id}#0") or {}).get(CHUNKS_KEY)
            extra = ([f"{row_id}#{i}" for i in range(len(records), old_count)]
                     if isinstance(old_count, int) and old_count > len(records) else [])
            fresh.extend(changed)
            stale.extend(extra)
            self.report.chunks_skipped += len(records) - len(changed)
            if changed or extra:
                self.report.rows_written += 1
            else:
                self.report.rows_skipped += 1
        if not fresh and not stale:
            return
        if fresh:
            self._embed(fresh)
        with driver.begin() as tx:
            removed = tx.delete(stale) if stale else 0
            tx.upsert(fresh)
        self.report.chunks_written += len(fresh)
        self.report.chunks_removed += removed
        self.report.commits += 1
        log.info("ingest into %s: commit %d (%d chunks written, %d removed)", self.core.id, self.report.commits,
                 len(fresh), removed)
        if self.on_commit is not None:
            self.on_commit(self.report)

    def _embed(self, fresh: list[Record]) -> None:
        """Give the chunks to write their vectors (an engine that embeds elsewhere overrides this)."""
        embedder = self.core.embedder()
        hits, misses = embedder.hits, embedder.misses
        vectors = embedder.embed_documents([r.text for r in fresh])
        self.report.texts_embedded += embedder.misses - misses
        self.report.embedding_cache_hits += embedder.hits - hits
        for record, vector in zip(fresh, vectors, strict=True):
            record.vector = vector


def ingest(core: KnowledgeBankTarget, path: str | Path, options: IngestOptions | None = None, progress: bool = True,
           on_commit: Callable[[IngestReport], None] | None = None, engine: Engine | None = None) -> IngestReport:
    """Ingest one file into the knowledge bank behind ``core``; see the module docstring.

    Raises ``InvalidInputError`` (bad options, unreadable file, unknown column),
    ``SchemaError`` (metadata columns outside the schema) or
    ``TooManyRejectedError`` before writing anything wrong; ``on_commit`` is
    called with the report after each commit. ``engine`` embeds elsewhere (``writers.engines``: a Ray
    cluster); reading, checks and commits stay here.
    """
    options = options or IngestOptions()
    options.validate()
    if engine is not None:
        return engine.run_ingest(core, Path(path), options, progress, on_commit)
    return _Ingestion(core, Path(path), options, progress, on_commit).run()

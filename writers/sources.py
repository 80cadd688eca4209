"""Streaming row sources for batch ingestion: JSONL, CSV, Parquet and Arrow IPC.

Every source yields lists of at most ``batch_rows`` rows, each a pair
``(row number, row dict or BadRow)``, so memory is bounded by the batch size
and never by the file size:

- Parquet: ``ParquetFile.iter_batches`` (row group by row group, only the
  needed columns);
- Arrow IPC: the file format through a memory map (``ipc.open_file``), or the
  stream format (``ipc.open_stream``);
- CSV: pyarrow's streaming reader (``pyarrow.csv.open_csv``, 1 MiB blocks).
  Every column is read as bytes and converted per value: to the type the
  knowledge bank's schema declares for that column, else to the type pyarrow
  inferred from the first block. So one bad value rejects one row instead of
  stopping the stream, and a row with the wrong number of fields is rejected
  (quoted; pyarrow cannot number it, see ``BadRow``) instead of failing the file;
- JSONL: line by line with ``json.loads`` (pyarrow's JSON reader infers one type
  per column and stops at the first malformed line, which would fail the whole
  job for one bad row). The row number of a JSONL row is its line number.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa

from kb_base.errors import InvalidInputError

FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet",
           ".arrow": "arrow", ".feather": "arrow", ".ipc": "arrow", ".arrows": "arrow"}
FORMAT_NAMES = ("arrow", "csv", "jsonl", "parquet")
_CSV_BLOCK = 1 << 20
_INT = re.compile(r"\s*[+-]?\d+\s*")


@dataclass(frozen=True)
class BadRow:
    """A row that could not be read, and why (its number travels beside it; None when unknown)."""

    reason: str


Row = tuple[int | None, "dict[str, Any] | BadRow"]


def detect_format(path: Path, explicit: str | None) -> str:
    fmt = explicit or FORMATS.get(path.suffix.lower())
    if fmt not in FORMAT_NAMES:
        known = ", ".join(sorted(FORMATS))
        raise InvalidInputError(f"cannot tell the format of {path.name!r} (known extensions: {known}): "
                                f"pass a format: {', '.join(FORMAT_NAMES)}")
    return fmt


def plain_value(value: Any) -> Any:
    """Arrow/JSON values as metadata values: NaN is missing, decimals are floats."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, Decimal):
        return float(value)
    return value


class RowSource:
    """One input file. ``columns``/``types`` are known before reading (None for JSONL)."""

    def __init__(self, path: Path, fmt: str, batch_rows: int, schema: Mapping[str, str]) -> None:
        import pyarrow.csv as pcsv
        import pyarrow.ipc as ipc
        import pyarrow.parquet as pq

        if not path.is_file():
            raise InvalidInputError(f"input file {str(path)!r} does not exist or is not a file")
        self.path, self.format, self.batch_rows, self.schema = path, fmt, batch_rows, dict(schema)
        self.columns: list[str] | None = None
        self.types: dict[str, pa.DataType] = {}
        self.total_rows: int | None = None
        try:
            if fmt == "parquet":
                self._parquet = pq.ParquetFile(path)
                arrow_schema = self._parquet.schema_arrow
                self.total_rows = self._parquet.metadata.num_rows
            elif fmt == "arrow":
                try:
                    self._ipc_file: Any = ipc.open_file(pa.memory_map(str(path)))
                    self.total_rows = sum(self._ipc_file.get_batch(i).num_rows
                                          for i in range(self._ipc_file.num_record_batches))
                except pa.ArrowInvalid:  # not the file format: the stream format
                    self._ipc_file = ipc.open_stream(pa.memory_map(str(path)))
                arrow_schema = self._ipc_file.schema
            elif fmt == "csv":  # the first block only, for the column names and pyarrow's type inference
                arrow_schema = pcsv.open_csv(path, read_options=pcsv.ReadOptions(block_size=_CSV_BLOCK),
                                             parse_options=self._csv_parse_options(lambda _: None)).schema
            else:
                return
            self.columns = list(arrow_schema.names)  # column names are decoded here: may be invalid UTF-8
            self.types = {f.name: f.type for f in arrow_schema}
        except (pa.ArrowInvalid, pa.ArrowTypeError, OSError, UnicodeDecodeError) as exc:
            raise InvalidInputError(f"cannot read {path.name} as {fmt}: {exc}") from exc

    @staticmethod
    def _csv_parse_options(on_bad: Callable[[Any], None]) -> Any:
        import pyarrow.csv as pcsv

        def handler(row: Any) -> str:
            on_bad(row)
            return "skip"

        return pcsv.ParseOptions(newlines_in_values=True, invalid_row_handler=handler)

    def batches(self, columns: Sequence[str] | None, text_columns: Sequence[str] = ()) -> Iterator[list[Row]]:
        """Batches of rows; ``columns`` restricts what is read; CSV ``text_columns`` are never converted."""
        try:
            if self.format == "jsonl":
                yield from self._jsonl()
            elif self.format == "csv":
                yield from self._csv(list(columns or self.columns or []), set(text_columns))
            else:
                yield from self._arrow(list(columns or self.columns or []))
        except (pa.ArrowInvalid, pa.ArrowTypeError, OSError, UnicodeDecodeError) as exc:
            raise InvalidInputError(f"cannot read {self.path.name} as {self.format}: {exc}") from exc

    def _jsonl(self) -> Iterator[list[Row]]:
        batch: list[Row] = []
        with open(self.path, "rb") as handle:
            for number, line in enumerate(handle, start=1):
                if number == 1:
                    line = line.removeprefix(b"\xef\xbb\xbf")
                if not line.strip():
                    continue
                try:
                    value = json.loads(line)
                except UnicodeDecodeError as exc:
                    batch.append((number, BadRow(f"line is not UTF-8: {exc}")))
                except ValueError as exc:
                    batch.append((number, BadRow(f"line is not valid JSON: {exc}")))
                else:
                    batch.append((number, value if isinstance(value, dict) else
                                   BadRow(f"line is a JSON {type(value).__name__}, not an object")))
                if len(batch) >= self.batch_rows:
                    yield batch
                    batch = []
        if batch:
            yield batch

    def _arrow(self, columns: list[str]) -> Iterator[list[Row]]:
        if self.format == "parquet":
            record_batches: Iterator[pa.RecordBatch] = self._parquet.iter_batches(batch_size=self.batch_rows,
                                                                                    columns=columns)
        elif isinstance(self._ipc_file, pa.ipc.RecordBatchFileReader):
            record_batches = (self._ipc_file.get_batch(i).select(columns)
                              for i in range(self._ipc_file.num_record_batches))
        else:
            record_batches = (b.select(columns) for b in self._ipc_file)
        number = 0
        for record_batch in record_batches:
            for start in range(0, record_batch.num_rows, self.batch_rows):
                rows = record_batch.slice(start, self.batch_rows).to_pylist()
                yield [(number + i, row) for i, row in enumerate(rows, start=1)]
                number += len(rows)

    def _csv(self, columns: list[str], text_columns: set[str]) -> Iterator[list[Row]]:
        import pyarrow.csv as pcsv

        malformed: list[BadRow] = []

        def on_bad(row: Any) -> None:
            malformed.append(BadRow(f"malformed CSV row ({row.actual_columns} fields, expected "
                                    f"{row.expected_columns}), not numbered: {row.text[:120]!r}"))

        converters = {c: _as_text if c in text_columns else self._csv_converter(c) for c in columns}
        reader = pcsv.open_csv(
            self.path, read_options=pcsv.ReadOptions(block_size=_CSV_BLOCK, use_threads=False),
            parse_options=self._csv_parse_options(on_bad),
            convert_options=pcsv.ConvertOptions(include_columns=columns, null_values=[""], strings_can_be_null=True,
                                                column_types={c: pa.binary() for c in self.columns or []}))
        number = 0
        for record_batch in reader:
            rows: list[Row] = []
            for raw in record_batch.to_pylist():
                number += 1
                try:
                    rows.append((number, {k: None if v is None else converters[k](v.decode("utf-8"))
                                          for k, v in raw.items()}))
                except UnicodeDecodeError as exc:
                    rows.append((number, BadRow(f"row is not UTF-8: {exc}")))
            rows.extend((None, bad) for bad in malformed)
            malformed.clear()
            for start in range(0, len(rows), self.batch_rows):
                yield rows[start:start + self.batch_rows]

    def _csv_converter(self, column: str) -> Callable[[str], Any]:
        """Text to the schema's type for ``column``, else to pyarrow's inferred type; unparsable text stays text."""
        kind = self.schema.get(column)
        if kind is None:
            inferred = self.types.get(column)
            kind = ("bool" if inferred is not None and pa.types.is_boolean(inferred) else
                    "int" if inferred is not None and pa.types.is_integer(inferred) else
                    "float" if inferred is not None and pa.types.is_floating(inferred) else "string")
        return _CONVERTERS.get(kind, _as_text)


def _as_text(text: str) -> Any:
    return text


def _as_int(text: str) -> Any:
    return int(text) if _INT.fullmatch(text) else text


def _as_float(text: str) -> Any:
    try:
        value = float(text)
    except ValueError:
        return text
    return None if math.isnan(value) else value


def _as_bool(text: str) -> Any:
    return {"true": True, "false": False, "1": True, "0": False}.get(text.strip().lower(), text)


_CONVERTERS: dict[str, Callable[[str], Any]] = {"int": _as_int, "float": _as_float, "bool": _as_bool}

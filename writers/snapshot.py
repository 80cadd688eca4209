"""Portable snapshots of a knowledge bank: ``kb export`` and ``kb import``.

A snapshot is one Parquet file: columns ``id``, ``text``, ``metadata`` (JSON) and ``vector``
(fixed-size list of float32), written and read in record batches (bounded memory). The file's
key-value metadata holds the format version, the embedding model id, the dimension, the row count
and the knowledge bank's settings (connection names kept, no secrets: connections live in the
catalog, not in settings). Import restores into any store type without re-embedding, in one
writer transaction: a failed import deletes the half-created knowledge bank again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from kb_base.errors import InvalidInputError, KBError
from kb_base.input_checks import check_metadata, check_text, check_write_ids
from stores.base import Record
from writers.target import KnowledgeBankTarget

FORMAT = "kb-snapshot/1"
_BATCH = 2000


@dataclass
class SnapshotReport:
    rows: int
    dimension: int | None
    path: str
    seconds: float = 0.0


def _schema(dimension: int) -> pa.Schema:
    return pa.schema([("id", pa.string()), ("text", pa.string()), ("metadata", pa.string()),
                      ("vector", pa.list_(pa.float32(), dimension))])


def export_knowledge_bank(core: KnowledgeBankTarget, path: str | Path, progress: bool = True) -> SnapshotReport:
    """Write every record of ``core`` to a Parquet snapshot."""
    import time

    started = time.perf_counter()
    path = Path(path)
    driver = core.driver
    dimension = driver.dimension or 0
    settings = {k: v for k, v in core.settings.items()}
    meta = {b"kb.format": FORMAT.encode(), b"kb.embedding_llm_id": core.embedding_llm_id.encode(),
            b"kb.dimension": str(dimension).encode(), b"kb.name": core.name.encode(),
            b"kb.settings": json.dumps(settings).encode()}
    rows = 0
    tmp = path.with_name(path.name + ".partial")
    schema = _schema(dimension).with_metadata(meta)
    with pq.ParquetWriter(tmp, schema) as writer, tqdm(desc=f"export {core.name}", unit=" rows",
                                                       disable=not progress) as bar:
        for batch in driver.iter_records(batch_size=_BATCH, with_vectors=True):
            vectors = np.stack([np.asarray(r.vector, dtype=np.float32) for r in batch]).reshape(-1)
            table = pa.Table.from_arrays([
                pa.array([r.id for r in batch]), pa.array([r.text for r in batch]),
                pa.array([json.dumps(r.metadata) for r in batch]),
                pa.FixedSizeListArray.from_arrays(pa.array(vectors, pa.float32()), dimension)], schema=schema)
            writer.write_table(table)
            rows += len(batch)
            bar.update(len(batch))
    writer_meta = pq.read_metadata(tmp)
    if writer_meta.num_rows != rows:
        raise KBError(f"export wrote {writer_meta.num_rows} rows, expected {rows}")
    tmp.replace(path)  # the snapshot appears whole or not at all
    return SnapshotReport(rows, dimension or None, str(path), time.perf_counter() - started)


def read_snapshot_metadata(path: str | Path) -> dict[str, Any]:
    try:
        meta = pq.read_schema(path).metadata or {}
    except (OSError, pa.ArrowInvalid) as exc:
        raise InvalidInputError(f"{path} is not a readable Parquet snapshot: {exc}") from exc
    if meta.get(b"kb.format") != FORMAT.encode():
        raise InvalidInputError(f"{path} is not a kb snapshot of format {FORMAT} "
                                f"(found {meta.get(b'kb.format', b'none').decode()})")
    return {"embedding_llm_id": meta[b"kb.embedding_llm_id"].decode(), "dimension": int(meta[b"kb.dimension"]),
            "name": meta[b"kb.name"].decode(), "settings": json.loads(meta[b"kb.settings"])}


def import_knowledge_bank(project: Any, path: str | Path, name: str | None = None,
                          vector_store_type: str | None = None, settings: dict[str, Any] | None = None,
                          progress: bool = True) -> Any:
    """Create a knowledge bank from a snapshot (no embedding calls); returns its handle."""
    info = read_snapshot_metadata(path)
    raw = dict(info["settings"])
    raw.update(settings or {})
    store_type = vector_store_type or raw.get("vector_store_type", "FAISS")
    for key in ("embedding_llm_id", "vector_store_type"):
        raw.pop(key, None)
    if store_type != info["settings"].get("vector_store_type"):
        raw.pop("store", None)  # driver settings do not carry over between store types
        if settings is None or "connection" not in settings:
            raw.pop("connection", None)
    handle = project.create_knowledge_bank(name or info["name"], embedding_llm_id=info["embedding_llm_id"],
                                           vector_store_type=store_type, settings=raw)
    try:
        core = handle.as_core_knowledge_bank()
        parquet = pq.ParquetFile(path)
        with core.get_writer() as writer, tqdm(desc=f"import {handle.name}", unit=" rows",
                                               disable=not progress) as bar:
            for batch in parquet.iter_batches(batch_size=_BATCH):
                columns = batch.to_pydict()
                vectors = batch.column("vector").flatten().to_numpy(zero_copy_only=False)
                dim = info["dimension"]
                if vectors.size != dim * batch.num_rows:
                    raise InvalidInputError(f"snapshot vectors do not have the declared dimension {dim}")
                matrix = vectors.reshape(batch.num_rows, dim)
                metadatas = [json.loads(m) for m in columns["metadata"]]
                if core.schema:
                    records = core.prepare_records(columns["text"], metadatas, columns["id"], matrix)
                else:  # a snapshot's metadata is JSON text: "\ud800" escapes and huge integers can hide in it
                    check_write_ids(columns["id"])
                    records = [Record(i, check_text(t, f"document {i!r}: text"),
                                      check_metadata(m, f"document {i!r}"), v)
                               for i, t, m, v in zip(columns["id"], columns["text"], metadatas, matrix, strict=True)]
                writer.transaction.upsert(records)
                bar.update(batch.num_rows)
    except BaseException:
        handle.delete()  # nothing half-imported stays behind
        raise
    return handle

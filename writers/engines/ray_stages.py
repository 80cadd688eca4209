"""What runs on Ray's workers: a folder sync's per-file extraction (CPU tasks) and embedding (an actor pool).

Both stages exchange Arrow tables with fixed schemas (one row per file): Ray Data moves Arrow blocks, so
nothing a worker returns is unpickled by the driver. Extraction is the local sync's own
``_Sync._extract`` (the same reader per format, the same chunk ids, metadata and screenshot names), run on
an object that has no knowledge bank: what it would have written (screenshots, report entries) is
returned instead, and the driver writes it.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from kb_base.errors import MissingExtraError
from kb_base.folders import ManagedFolder
from writers.chunking import HASH_KEY
from writers.document_chunks import embedding_text
from writers.sync import SCREENSHOT_ROOT, SyncOptions, SyncReport, _Sync

INSTALL_HINT = "pip install 'kb[ray]'"

# a file to process, as the driver plans it: its place in the listing, and the chunk hashes already stored
# (stored: JSON {"hashes": {chunk id: content hash}, "texts": [text digests]} of the file's stored chunks)
PLANNED = pa.schema([("index", pa.int64()), ("path", pa.string()), ("new", pa.bool_()), ("stored", pa.string())])
EXTRACTED = pa.schema([
    *PLANNED,
    ("ok", pa.bool_()),
    ("record", pa.string()),  # the FileRecord as JSON ("" when the file failed)
    ("texts", pa.list_(pa.string())),
    ("metadata", pa.list_(pa.string())),  # each chunk's metadata as JSON
    ("report", pa.string()),  # this file's part of the sync report (failure, warnings, pages) as JSON
    ("image_names", pa.list_(pa.string())),
    ("image_data", pa.list_(pa.binary())),
    ("extract_seconds", pa.float64()),
])
EMBEDDED = pa.schema([
    *EXTRACTED,
    ("has_vector", pa.list_(pa.bool_())),  # False: stored unchanged, or its text is: not embedded again
    ("vectors", pa.binary()),  # float32 rows of the chunks with a vector, in order
    ("dimension", pa.int32()),
    ("embedded", pa.int32()),  # texts this file sent to the model (a text repeated in the batch counts once)
    ("embed_seconds", pa.float64()),
])


def text_digest(text: str) -> str:
    """A short digest of a chunk text: what the driver ships to say "this text is stored already"."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:24]


def require_ray() -> Any:
    """The ``ray`` module with Ray Data, or MissingExtraError saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401 - Ray Data is a separate part of the ray package
    except ImportError as exc:
        raise MissingExtraError(f"running on a Ray cluster needs Ray with Ray Data, kb's optional extra: "
                                f"{INSTALL_HINT} (on the driver and on every node; {exc})") from exc
    return ray


@dataclass(frozen=True)
class FolderSpec:
    """A managed folder as a worker opens it: the same root path, on a shared mount."""

    project_key: str
    id: str
    name: str
    root: str

    @classmethod
    def of(cls, folder: ManagedFolder) -> FolderSpec:
        return cls(folder.project_key, folder.id, folder.name, str(folder.root))

    def open(self) -> ManagedFolder:
        return ManagedFolder(self.project_key, self.id, self.name, Path(self.root))


class _CapturedImages:
    """Stands in for the images folder on a worker: the screenshots go back to the driver, which writes them."""

    def __init__(self) -> None:
        self.files: list[tuple[str, bytes]] = []

    def upload_data(self, name: str, data: bytes) -> None:
        self.files.append((name, bytes(data)))


@dataclass(frozen=True)
class _KnowledgeBankName:
    id: str


class WorkerExtraction(_Sync):
    """The local sync's per-file extraction without a knowledge bank (records, store and images stay on the
    driver)."""

    def __init__(self, kb_id: str, folder: ManagedFolder, options: SyncOptions) -> None:  # noqa: D107
        # not _Sync.__init__: that opens the knowledge bank's sync records, which live on the driver only
        self.core = _KnowledgeBankName(kb_id)  # type: ignore[assignment]  # _extract and _fail read its id
        self.folder, self.options = folder, options
        self.on_progress, self.progress = None, False
        self.prefix = f"{SCREENSHOT_ROOT}/{kb_id}"
        self.config = options.digest()
        self.report = SyncReport(folder_id=folder.id)
        self.images = None
        self.renderer = self._page_renderer()  # LibreOffice and Chromium run on the worker, as the file is read

    def file(self, path: str, new: bool) -> dict[str, Any]:
        self.report = SyncReport(folder_id=self.folder.id)
        captured = _CapturedImages()
        self.images = captured if self.options.screenshots else None  # type: ignore[assignment]
        started = time.perf_counter()
        done = self._extract(path, new)
        part = {k: v for k, v in asdict(self.report).items() if k != "folder_id" and v}
        return {"ok": done is not None,
                "record": json.dumps(asdict(done.record)) if done is not None else "",
                "texts": [c.text for c in done.chunks] if done is not None else [],
                "metadata": [json.dumps(c.metadata, ensure_ascii=False) for c in done.chunks] if done else [],
                "report": json.dumps(part, ensure_ascii=False),
                "image_names": [name for name, _ in captured.files],
                "image_data": [data for _, data in captured.files],
                "extract_seconds": time.perf_counter() - started}


def extract_files(batch: pa.Table, kb_id: str, folder: FolderSpec, options: dict[str, Any]) -> pa.Table:
    """Ray Data task: extract and chunk each planned file of ``batch`` (a failure is a row with its reason)."""
    extraction = WorkerExtraction(kb_id, folder.open(), SyncOptions(**options))
    planned = batch.to_pylist()
    try:
        if extraction.renderer is not None:  # this task's Office files go to LibreOffice together
            extraction.renderer.plan([row["path"] for row in planned])
        rows = [{**row, **extraction.file(row["path"], row["new"])} for row in planned]
    finally:
        if extraction.renderer is not None:
            extraction.renderer.close()
    return pa.Table.from_pylist(rows, schema=EXTRACTED)


class EmbedFiles:
    """Ray Data actor: loads the knowledge bank's model once, then embeds the chunks of each batch of files
    that are not stored unchanged already (the driver said which hashes are)."""

    def __init__(self, model_factory: Callable[[], Any], threads: float, embed_context: bool = False) -> None:
        # the local model sizes its thread pool from this; one actor must not take every core of its node
        os.environ.setdefault("KB_ONNX_THREADS", str(max(1, int(threads))))
        self.model = model_factory()
        self.embed_context = embed_context  # the sync's option: chunks embedded under their title and sections

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        wanted: dict[str, int] = {}  # text -> position among the texts sent (a repeated text is sent once)
        owners: list[list[int]] = []  # per row: the position of each chunk's text, -1 when stored unchanged
        embedded = []
        for row in rows:
            stored = json.loads(row["stored"] or "{}")
            hashes, texts = stored.get("hashes", {}), set(stored.get("texts", ()))
            chunk_ids = json.loads(row["record"])["chunk_ids"] if row["ok"] else []
            positions, sent = [], 0
            for chunk_id, stored_text, raw in zip(chunk_ids, row["texts"], row["metadata"], strict=True):
                metadata = json.loads(raw)
                text = embedding_text(stored_text, metadata) if self.embed_context else stored_text
                # stored unchanged, or its text stored in another chunk of the file: the driver has its vector
                if hashes.get(chunk_id) == metadata[HASH_KEY] or text_digest(text) in texts:
                    positions.append(-1)
                    continue
                if text not in wanted:
                    wanted[text] = len(wanted)
                    sent += 1
                positions.append(wanted[text])
            owners.append(positions)
            embedded.append(sent)
        started = time.perf_counter()
        matrix = np.asarray(self.model.embed(list(wanted)), dtype=np.float32) if wanted else np.zeros((0, 0))
        seconds = time.perf_counter() - started
        total = max(1, len(wanted))
        out = []
        for row, positions, sent in zip(rows, owners, embedded, strict=True):
            chosen = [p for p in positions if p >= 0]
            vectors = np.ascontiguousarray(matrix[chosen], dtype=np.float32) if chosen else np.zeros((0, 0))
            out.append({**row, "has_vector": [p >= 0 for p in positions], "vectors": vectors.tobytes(),
                        "dimension": int(vectors.shape[1]) if chosen else 0, "embedded": sent,
                        "embed_seconds": seconds * sent / total})
        return pa.Table.from_pylist(out, schema=EMBEDDED)


class EmbedTexts:
    """Ray actor for row ingestion: the model loaded once, texts in, float32 rows out (as bytes and a shape,
    so that the driver reads numbers, not pickles)."""

    def __init__(self, model_factory: Callable[[], Any], threads: float) -> None:
        os.environ.setdefault("KB_ONNX_THREADS", str(max(1, int(threads))))
        self.model = model_factory()

    def embed(self, texts: list[str]) -> tuple[bytes, int, int]:
        matrix = np.ascontiguousarray(self.model.embed(texts), dtype=np.float32)
        return matrix.tobytes(), int(matrix.shape[0]), int(matrix.shape[1])

"""Keep a knowledge bank equal to a folder of documents: ``sync_folder(core, folder, options) -> SyncReport``.

A file is identified by its path in the folder and compared by the sha256 of
its content (and the extraction settings it was synced with), kept by the
record manager (``writers.sync_records``). Unchanged files cost a hash and
nothing else; added and changed files are extracted (``writers.extract``),
chunked (``writers.document_chunks``), optionally rendered to page PNGs in the
knowledge bank's images folder, embedded and written; removed files lose their
chunks and screenshots. Chunk ids are stable (``doc-<folder+path digest>#<n>``)
and chunks already stored with the same content hash are neither embedded nor
written again.

Work is committed per batch of whole files, one store transaction each, so a
kill leaves whole files; the re-run finishes the job without duplicates or
re-embedding. A file that fails to extract (corrupt, password-protected,
unsupported) is reported as failed with its reason and keeps its previously
committed chunks. A readable file with nothing to index (a redirect page, an
empty HTML shell, an image-only PDF with OCR off) is ``empty``: reported with
its reason, synced with no chunks, and not a failure. A sync holds the knowledge bank's sync
lock from start to end: a second sync gets ``SyncBusyError`` (REST: 409 busy).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

from tqdm import tqdm

from kb_base.errors import (
    EmptyDocumentError,
    ExtractionError,
    InvalidInputError,
    NotFoundError,
    SyncBusyError,
    WriterBusyError,
)
from kb_base.folders import ManagedFolder, ManagedFolderDocumentRef
from stores.base import Record, acquire_writer_lock
from writers.chunking import CHUNKS_KEY, HASH_KEY
from writers.document_chunks import chunk_records, document_id, embedding_text
from writers.extract import extract_document
from writers.extract.ocr import ocr_available
from writers.screenshots import AWAITS_SCREENSHOTS, PageRenderer
from writers.sync_records import FileRecord
from writers.sync_report import SyncOptions, SyncReport
from writers.target import KnowledgeBankTarget

if TYPE_CHECKING:  # the engines build on this module
    from writers.engines import Engine

__all__ = ["SyncOptions", "SyncReport", "acquire_sync_lock", "as_folder", "sync_folder"]

log = logging.getLogger(__name__)

SCREENSHOT_ROOT = "/kb-pages"  # screenshots live under <images folder>/kb-pages/<kb id>/
MAX_LISTED_FAILURES = 1000
AWAITS_OCR = "+awaits-ocr"  # appended to a file's settings digest when pages were left out for want of OCR


@dataclass
class _Done:
    """One extracted file waiting for its batch's commit."""

    path: str
    record: FileRecord
    chunks: list[Record]
    new: bool
    empty: bool = False  # readable, nothing to index: recorded with no chunks, reported as empty


def as_folder(folder: ManagedFolder | str | Path) -> ManagedFolder:
    """A managed folder as it is; a local directory as a folder whose id is ``local:<absolute path>``."""
    if isinstance(folder, ManagedFolder):
        return folder
    root = Path(folder).expanduser().resolve()
    if not root.is_dir():
        raise NotFoundError(f"{folder} is not a directory")
    return ManagedFolder("LOCAL", f"local:{root}", root.name, root)


def _sha256(folder: ManagedFolder, path: str) -> str:
    with folder.get_download_stream(path) as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()


class _Sync:
    def __init__(self, core: KnowledgeBankTarget, folder: ManagedFolder, options: SyncOptions, progress: bool,
                 on_progress: Callable[[SyncReport], None] | None) -> None:
        self.core, self.folder, self.options = core, folder, options
        self.on_progress = on_progress
        self.records = core.sync_records()
        self.images = core.ensure_images_folder() if options.screenshots else self._existing_images_folder()
        self.prefix = f"{SCREENSHOT_ROOT}/{core.id}"
        self.config = options.digest()
        self.report = SyncReport(folder_id=folder.id)
        self.progress = progress
        self.renderer = self._page_renderer()

    def _page_renderer(self) -> PageRenderer | None:
        """Screenshots of DOCX, PPTX and HTML files go through LibreOffice and Chromium (``writers.screenshots``)."""
        if not self.options.screenshots:
            return None
        return PageRenderer(self.options.screenshot_scale, self.options.screenshot_timeout, self._read_ahead,
                            self.folder._resolve)

    def _read_ahead(self, path: str) -> bytes | None:
        """A file's content for a batch converted ahead of its turn; None when its turn would fail (too large,
        unreadable): it is reported then."""
        try:
            if self.folder._resolve(path).stat().st_size > self.options.max_file_bytes:
                return None
            return self.folder.read(path)
        except Exception:  # noqa: BLE001  (its own turn reports the reason)
            return None

    def _existing_images_folder(self) -> ManagedFolder | None:
        try:
            return self.core.images_folder() if self.core.settings.get("images_folder") else None
        except NotFoundError:
            return None

    def run(self) -> SyncReport:
        started = time.perf_counter()
        report = self.report
        try:
            # hidden files and folders (.git, .DS_Store, editors' swap files) are not documents
            paths = [p for p in self.folder.list_paths() if not any(part.startswith(".") for part in p.split("/"))
                     and self.options.selects(p)]
            known = self.records.files(self.folder.id)
            report.files_total = len(paths)
            work: list[tuple[str, bool]] = []
            for path in paths:
                old = known.get(path)
                if old is not None and self._up_to_date(old) and old.sha256 == _sha256(self.folder, path):
                    report.unchanged.append(path)
                else:
                    work.append((path, old is None))
            removed = [known[p] for p in sorted(set(known) - set(paths))]
            report.files_to_process = len(work)
            self._notify()
            self._process(work, known, removed)
            self._sweep_screenshots()
        finally:
            if self.renderer is not None:
                self.renderer.close()
            self.records.close()
            report.seconds = time.perf_counter() - started
        return report

    def _up_to_date(self, old: FileRecord) -> bool:
        """Synced with these settings; a file that had pages left out for want of OCR is done again once an
        OCR engine is installed, one synced without screenshots for want of LibreOffice or Chromium once that is."""
        if old.config == self.config:
            return True
        awaits = old.config[len(self.config):] if old.config.startswith(self.config) else ""
        if awaits not in (AWAITS_OCR, AWAITS_SCREENSHOTS, AWAITS_OCR + AWAITS_SCREENSHOTS):
            return False
        if AWAITS_OCR in awaits and self.options.ocr and ocr_available():
            return False
        return not (AWAITS_SCREENSHOTS in awaits and self.renderer is not None
                    and self.renderer.tool_available(old.kind))

    def _notify(self) -> None:
        if self.on_progress is not None:
            self.on_progress(self.report)

    def _process(self, work: list[tuple[str, bool]], known: dict[str, FileRecord],
                 removed: list[FileRecord]) -> None:
        options = self.options
        batch: list[_Done] = []
        batch_chunks = 0
        bar = tqdm(total=len(work), desc=f"sync {self.folder.name}", unit=" files", disable=not self.progress,
                   dynamic_ncols=True)
        if self.renderer is not None:
            self.renderer.plan([path for path, _ in work])
        try:
            for path, new in work:
                done = self._extract(path, new)
                self.report.files_processed += 1
                bar.update(1)
                if done is None:
                    continue
                batch.append(done)
                batch_chunks += len(done.chunks)
                if len(batch) >= options.batch_files or batch_chunks >= options.batch_chunks:
                    self._commit(batch, known, removed)
                    batch, batch_chunks, removed = [], 0, []
                bar.set_postfix(empty=len(self.report.empty), failed=len(self.report.failed), refresh=False)
            if batch or removed:
                self._commit(batch, known, removed)
        finally:
            bar.close()

    def _fail(self, path: str, reason: str) -> None:
        if len(self.report.failed) < MAX_LISTED_FAILURES:
            self.report.failed.append({"path": path, "reason": reason})
        log.warning("sync of %s: %s failed: %s", self.core.id, path, reason)

    def _empty(self, path: str, new: bool, sha: str, reason: str, awaits_ocr: bool) -> _Done:
        """A file with nothing to index is synced with no chunks (its old ones go) and reported as empty:
        it is not a failure, and an unchanged re-sync skips it (unless an OCR engine would now read it)."""
        if len(self.report.empty) < MAX_LISTED_FAILURES:
            self.report.empty.append({"path": path, "reason": reason})
        log.info("sync of %s: %s has nothing to index: %s", self.core.id, path, reason)
        config = self.config + AWAITS_OCR if awaits_ocr else self.config
        return _Done(path, FileRecord(self.folder.id, path, sha, config, "empty", None, [], []), [], new, empty=True)

    def _extract(self, path: str, new: bool) -> _Done | None:
        """Extract, chunk and render one file; None (and a failure in the report) when it cannot be read."""
        options = self.options
        try:
            size = self.folder._resolve(path).stat().st_size  # resolved: a symlink out of the folder fails here
            if size > options.max_file_bytes:
                raise ExtractionError(f"the file has {size:,} bytes, more than max_file_bytes "
                                      f"({options.max_file_bytes:,})")
            data = self.folder.read(path)
            sha = hashlib.sha256(data).hexdigest()
            document = extract_document(path, data, options.extraction, options.ocr)
            ref = ManagedFolderDocumentRef(path, self.folder.id)
            screenshots: dict[int, str] = {}
            shots = None
            if self.renderer is not None and self.images is not None:
                shots = self.renderer.render(path, data, document)
                base = f"{self.prefix}/{document_id(self.folder.id, path)[4:]}/{sha[:16]}"
                for page, png in shots.pages:
                    name = f"{base}/page-{page:04d}.png"
                    self.images.upload_data(name, png)
                    screenshots[page] = name
                    self.report.screenshots_written += 1
                if shots.note:
                    document.warnings.append(shots.note)
            chunks = chunk_records(document, ref, sha, options.chunk_size, options.chunk_overlap, screenshots,
                                   options.embed_context, shots.locate if shots is not None else None)
        except EmptyDocumentError as exc:
            return self._empty(path, new, sha, str(exc), exc.awaits_ocr)
        except InvalidInputError as exc:  # ExtractionError, PathError: their message is the reason
            self._fail(path, str(exc))
            return None
        except Exception as exc:  # a library's own error on a malformed file must not stop the sync
            self._fail(path, f"{type(exc).__name__}: {exc}")
            return None
        for message in document.warnings:
            self.report.warnings.append({"path": path, "message": message})
        self.report.pages += document.page_count or 0
        config = self.config + (AWAITS_OCR if document.awaits_ocr else "") + \
            (AWAITS_SCREENSHOTS if shots is not None and shots.tool_missing else "")
        record = FileRecord(self.folder.id, path, sha, config, document.kind, document.page_count,
                            [c.id for c in chunks], list(screenshots.values()))
        return _Done(path, record, chunks, new)

    def _commit(self, batch: list[_Done], known: dict[str, FileRecord], removed: list[FileRecord]) -> None:
        driver = self.core.driver
        chunks = [c for done in batch for c in done.chunks]
        stored = {r.id: r.metadata for r in driver.get([c.id for c in chunks])} if chunks else {}
        fresh = [c for c in chunks if (stored.get(c.id) or {}).get(HASH_KEY) != c.metadata[HASH_KEY]]
        self.report.chunks_skipped += len(chunks) - len(fresh)
        stale: list[str] = []
        for done in batch:
            keep = set(done.record.chunk_ids)
            old = known.get(done.path)
            if old is not None:
                stale.extend(i for i in old.chunk_ids if i not in keep)
            # chunks a killed sync committed without its record row: the stored count says how many there are
            stored_count = (stored.get(f"{document_id(self.folder.id, done.path)}#0") or {}).get(CHUNKS_KEY)
            if isinstance(stored_count, int):
                prefix = document_id(self.folder.id, done.path)
                stale.extend(i for i in (f"{prefix}#{n}" for n in range(stored_count)) if i not in keep)
        stale = list(dict.fromkeys(stale))
        for old in removed:
            stale.extend(old.chunk_ids)
        if fresh:
            self._embed(fresh)
        if fresh or stale:
            with driver.begin(timeout=60.0) as tx:
                self.report.chunks_removed += tx.delete(stale) if stale else 0
                tx.upsert(fresh)
        # after the store commit: a kill in between is repaired by the next sync (see writers.sync_records)
        self.records.apply([d.record for d in batch], [(o.folder_id, o.path) for o in removed])
        self.report.commits += 1
        self.report.chunks_written += len(fresh)
        for done in batch:
            if not done.empty:
                (self.report.added if done.new else self.report.updated).append(done.path)
        self.report.removed.extend(o.path for o in removed)
        old_images = [name for d in batch if d.path in known for name in known[d.path].screenshots
                      if name not in set(d.record.screenshots)] + [n for o in removed for n in o.screenshots]
        self._delete_images(old_images)
        log.info("sync of %s: commit %d (%d files, %d chunks written, %d removed)", self.core.id,
                 self.report.commits, len(batch), len(fresh), len(stale))
        self._notify()

    def _embedding_input(self, text: str, metadata: dict) -> str:
        """What the model reads for a chunk: its text, or under its title and section path (``embed_context``)."""
        return embedding_text(text, metadata) if self.options.embed_context else text

    def _embed(self, fresh: list[Record]) -> None:
        """Give the chunks to write their vectors (an engine that embeds elsewhere brings them along)."""
        embedder = self.core.embedder()
        hits, misses = embedder.hits, embedder.misses
        vectors = embedder.embed_documents([self._embedding_input(c.text, c.metadata) for c in fresh])
        self.report.texts_embedded += embedder.misses - misses
        self.report.embedding_cache_hits += embedder.hits - hits
        for chunk, vector in zip(fresh, vectors, strict=True):
            chunk.vector = vector

    def _delete_images(self, names: list[str]) -> None:
        if self.images is None:
            return
        for name in names:
            try:
                self.images.delete_path(name)
                self.report.screenshots_removed += 1
            except NotFoundError:
                pass

    def _sweep_screenshots(self) -> None:
        """Delete screenshots under this knowledge bank's prefix that no synced file points at (left by a kill
        between rendering and committing)."""
        if self.images is None:
            return
        root = self.images.root / self.prefix.lstrip("/")
        if not root.is_dir():
            return
        referenced = self.records.all_screenshots()
        orphans = ["/" + p.relative_to(self.images.root).as_posix() for p in root.rglob("*.png")]
        self._delete_images([name for name in orphans if name not in referenced])
        for directory in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            if not any(directory.iterdir()):
                directory.rmdir()


def acquire_sync_lock(core: KnowledgeBankTarget, timeout: float = 0.0) -> IO[str]:
    """The knowledge bank's sync lock (released when the returned file is closed or the process dies)."""
    core.folder.mkdir(parents=True, exist_ok=True)
    try:
        return acquire_writer_lock(core.folder / "sync.lock", timeout, core.id)
    except WriterBusyError:
        raise SyncBusyError(f"knowledge bank {core.id} is busy: another folder sync is running on it") from None


def sync_folder(core: KnowledgeBankTarget, folder: ManagedFolder | str | Path, options: SyncOptions | None = None,
                progress: bool = False, on_progress: Callable[[SyncReport], None] | None = None,
                held_lock: IO[str] | None = None, engine: Engine | None = None) -> SyncReport:
    """Make the knowledge bank behind ``core`` hold exactly the documents of ``folder``; see the module doc.

    Raises ``SyncBusyError`` when another sync of the same knowledge bank runs,
    ``InvalidInputError`` for bad options, ``EmbeddingError`` when the model
    fails (what was committed before stays); per-file problems are in the report.
    ``held_lock`` is a lock from ``acquire_sync_lock`` the caller already took
    (a REST job answers "busy" before starting); it is released at the end.
    ``engine`` runs the extraction and embedding elsewhere (``writers.engines``: a Ray cluster); the listing,
    the plan and every commit stay here, under the same lock, with the same records and report.
    """
    try:
        options = options or SyncOptions()
        options.validate()
        source = as_folder(folder)
        lock = held_lock or acquire_sync_lock(core, options.lock_timeout)
    except BaseException:
        if held_lock is not None:
            held_lock.close()
        raise
    try:
        if engine is not None:
            return engine.run_sync(core, source, options, progress, on_progress)
        return _Sync(core, source, options, progress, on_progress).run()
    finally:
        lock.close()

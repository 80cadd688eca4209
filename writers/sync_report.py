"""The options and the report of a folder sync (``writers.sync``)."""

from __future__ import annotations

import fnmatch
import hashlib
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from kb_base.errors import InvalidInputError
from writers.extract import EXTRACTION_MODES


@dataclass
class SyncOptions:
    extraction: str = "raw"  # raw or structured
    screenshots: bool = False  # each page of PDFs, images, DOCX, PPTX and HTML as PNG in the images folder
    chunk_size: int = 1000
    chunk_overlap: int = 200
    ocr: bool = True  # read image-only pages and images with tesseract when it is installed
    screenshot_scale: float = 1.0  # 1.0 = 72 dpi
    screenshot_timeout: float = 60.0  # seconds LibreOffice or Chromium may take to print one file to PDF
    batch_files: int = 32  # files per atomic commit ...
    batch_chunks: int = 2000  # ... or fewer when their chunks reach this many
    lock_timeout: float = 0.0  # seconds to wait for another sync of the same knowledge bank
    max_file_bytes: int = 256 * 2**20  # a larger file fails with the reason instead of filling memory
    embed_context: bool = False  # embed each chunk under its document title and section path (text unchanged)
    include: tuple[str, ...] = ()  # glob patterns of the paths to sync ("/runtime-config-*.html"); () all

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> SyncOptions:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InvalidInputError(f"unknown sync options: {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        options = cls(**values)
        options.validate()
        return options

    def validate(self) -> None:
        if self.extraction not in EXTRACTION_MODES:
            raise InvalidInputError(f"unknown extraction mode {self.extraction!r}; modes: "
                                    f"{', '.join(EXTRACTION_MODES)}")
        for name, minimum in (("chunk_size", 0), ("chunk_overlap", 0), ("batch_files", 1), ("batch_chunks", 1),
                              ("max_file_bytes", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise InvalidInputError(f"sync option {name} must be an integer ≥ {minimum}, got {value!r}")
        if self.chunk_size and self.chunk_overlap >= self.chunk_size:
            raise InvalidInputError(f"chunk_overlap ({self.chunk_overlap}) must be smaller than chunk_size "
                                    f"({self.chunk_size})")
        if isinstance(self.include, str) or not all(isinstance(p, str) and p for p in self.include):
            raise InvalidInputError(f"include must be a list of glob patterns, got {self.include!r}")
        self.include = tuple(self.include)
        for name in ("screenshots", "ocr", "embed_context"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidInputError(f"sync option {name} must be true or false")
        if not isinstance(self.screenshot_scale, int | float) or not 0.1 <= self.screenshot_scale <= 8:
            raise InvalidInputError(f"screenshot_scale must be between 0.1 and 8, got {self.screenshot_scale!r}")
        if isinstance(self.screenshot_timeout, bool) or not isinstance(self.screenshot_timeout, int | float) \
                or not 0 < self.screenshot_timeout <= 3600:
            raise InvalidInputError(f"screenshot_timeout must be a number of seconds in (0, 3600], got "
                                    f"{self.screenshot_timeout!r}")
        if not isinstance(self.lock_timeout, int | float) or self.lock_timeout < 0:
            raise InvalidInputError(f"lock_timeout must be a number ≥ 0, got {self.lock_timeout!r}")

    def selects(self, path: str) -> bool:
        """Whether ``path`` (``/dir/file.html``) is one of the files to sync."""
        return not self.include or any(fnmatch.fnmatchcase(path, p) for p in self.include)

    def digest(self) -> str:
        """What a file's chunks depend on besides its content: a change re-extracts every file."""
        parts = (self.extraction, self.screenshots, self.chunk_size, self.chunk_overlap, self.ocr,
                 self.screenshot_scale if self.screenshots else None)
        if self.embed_context:  # appended only when on: the digests of existing syncs stay as they were
            parts += ("embed_context",)
        return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


@dataclass
class SyncReport:
    folder_id: str = ""
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)  # {"path", "reason"}; old chunks are kept
    empty: list[dict[str, str]] = field(default_factory=list)  # {"path", "reason"}: nothing to index, no chunks
    warnings: list[dict[str, str]] = field(default_factory=list)  # {"path", "message"}: e.g. pages left out
    files_total: int = 0
    files_to_process: int = 0  # added or changed: what the progress counts
    files_processed: int = 0
    pages: int = 0
    chunks_written: int = 0
    chunks_skipped: int = 0  # already stored with the same content hash (a resumed sync)
    chunks_removed: int = 0
    texts_embedded: int = 0  # texts the model computed (cache misses)
    embedding_cache_hits: int = 0
    screenshots_written: int = 0
    screenshots_removed: int = 0
    commits: int = 0
    seconds: float = 0.0

    @property
    def exit_status(self) -> int:
        """1 when a file could not be read; a file with nothing to index (``empty``) is not a failure."""
        return 1 if self.failed else 0

    def summary(self) -> str:
        return (f"{self.files_total} files: {len(self.added)} added, {len(self.updated)} updated, "
                f"{len(self.unchanged)} unchanged, {len(self.removed)} removed, {len(self.empty)} empty, "
                f"{len(self.failed)} failed; "
                f"{self.pages} pages, {self.chunks_written} chunks written, {self.chunks_removed} removed, "
                f"{self.texts_embedded} texts embedded, {self.screenshots_written} screenshots; "
                f"{self.commits} commits in {self.seconds:.1f}s")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "exit_status": self.exit_status}

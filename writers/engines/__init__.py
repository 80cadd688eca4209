"""Where a folder sync or a row ingestion does its heavy work: here (``LocalEngine``) or on a Ray cluster.

An engine runs the work a sync or an ingestion plans; the plan (what changed, what to delete), the writer,
every commit and the sync records stay in the calling process, so the knowledge bank ends up the same
whichever engine ran. ``writers.sync.sync_folder(..., engine=)`` and ``writers.ingest.ingest(..., engine=)``
take one; ``None`` is the local engine. The Ray engine is ``writers.engines.ray_engine.RayEngine`` (its
public face, which also knows how to ship the knowledge bank's embedding model, is ``kb.RayEngine``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from kb_base.folders import ManagedFolder
from writers.ingest import IngestOptions, IngestReport, _Ingestion
from writers.sync import SyncOptions, SyncReport, _Sync
from writers.target import KnowledgeBankTarget

__all__ = ["Engine", "LocalEngine"]


class Engine(Protocol):
    name: str

    def run_sync(self, core: KnowledgeBankTarget, folder: ManagedFolder, options: SyncOptions, progress: bool,
                 on_progress: Callable[[SyncReport], None] | None) -> SyncReport:
        """Sync ``folder`` into ``core`` (the caller holds the sync lock and has checked the options)."""

    def run_ingest(self, core: KnowledgeBankTarget, path: Path, options: IngestOptions, progress: bool,
                   on_commit: Callable[[IngestReport], None] | None) -> IngestReport:
        """Ingest the rows of ``path`` into ``core`` (options checked)."""


class LocalEngine:
    """Everything in this process: what ``engine=None`` means."""

    name = "local"

    def run_sync(self, core: KnowledgeBankTarget, folder: ManagedFolder, options: SyncOptions, progress: bool,
                 on_progress: Callable[[SyncReport], None] | None) -> SyncReport:
        return _Sync(core, folder, options, progress, on_progress).run()

    def run_ingest(self, core: KnowledgeBankTarget, path: Path, options: IngestOptions, progress: bool,
                   on_commit: Callable[[IngestReport], None] | None) -> IngestReport:
        return _Ingestion(core, path, options, progress, on_commit).run()

    def __repr__(self) -> str:
        return "LocalEngine()"

"""Folder sync jobs: start a sync of a managed folder into a knowledge bank, poll it, read its report.

A job starts at once on the server that accepted it, which holds the knowledge bank's sync lock; it lives in
the catalog database (``api/jobs.py``), so any server answers a poll, and if the server dies the job is taken
over by another once its heartbeat lapses: the re-run skips what was committed (sync records and content
hashes). Starting a job while another sync of the same knowledge bank runs, in this service, in any process
of this machine (``kb sync``) or on another server, answers 409 with the error code ``busy``.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from api.deps import core_for, get_client, require
from api.fastjson import OrjsonRoute
from api.jobs import JobDeferred, RunningJob
from api.keys import Principal
from api.routers.jobs import runner
from kb.catalog_db.jobs import MAX_KEPT_JOBS, JobRow
from kb.client import EmbeddedClient
from kb.engines import engine_for
from kb_base.errors import NotFoundError, SyncBusyError
from writers.sync import SyncOptions, SyncReport, acquire_sync_lock, sync_folder

router = APIRouter(prefix="/v1/projects/{project_key}/knowledge-banks/{kb_id}/sync-jobs", tags=["folder sync"],
                   route_class=OrjsonRoute)



class SyncJobIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    folder_id: str = Field(min_length=1, description="managed folder id (or '<PROJECT>.<id>') holding the documents")
    extraction: Literal["raw", "structured"] = "raw"
    screenshots: bool = False
    ocr: bool = True
    chunk_size: int = Field(1000, ge=0)
    chunk_overlap: int = Field(200, ge=0)
    batch_files: int = Field(32, ge=1, le=10_000)
    batch_chunks: int = Field(2000, ge=1)
    screenshot_scale: float = Field(1.0, ge=0.1, le=8)
    screenshot_timeout: float = Field(60.0, gt=0, le=3600, description="seconds LibreOffice or Chromium may take to "
                                      "print one DOCX, PPTX or HTML file to PDF for its screenshots")
    max_file_bytes: int = Field(256 * 2**20, ge=1)
    embed_context: bool = Field(False, description="embed each chunk under its document title and section path")
    include: list[str] = Field(default_factory=list, max_length=1000,
                               description="glob patterns of the paths to sync ('/runtime-config-*.html'); "
                                           "empty: every file")


def _progress(report: SyncReport) -> dict[str, Any]:
    return {"files_total": report.files_total, "files_to_process": report.files_to_process,
            "files_processed": report.files_processed, "commits": report.commits, "empty": len(report.empty),
            "failed": len(report.failed)}


def sync_job_dict(row: JobRow) -> dict[str, Any]:
    """A sync job as the REST API shows it (the shape from before jobs moved into the catalog)."""
    options = row.payload["options"]
    started = row.started_at or row.created_at
    return {
        "job_id": row.id, "state": row.state, "project_key": row.project_key, "kb_id": row.kb_id,
        "folder_id": row.payload["folder_id"], "engine": row.payload.get("engine", "local"), "started_at": started,
        "finished_at": row.finished_at,
        "options": {name: options.get(name) for name in _SHOWN_OPTIONS},
        "progress": row.progress,
        "report": row.report if row.state == "succeeded" else None,
        "error": row.error,
        "seconds": round((row.finished_at or time.time()) - started, 3),
        "attempts": row.attempts,
    }


_SHOWN_OPTIONS = ("extraction", "screenshots", "ocr", "chunk_size", "chunk_overlap", "batch_files", "batch_chunks",
                  "screenshot_scale", "screenshot_timeout", "max_file_bytes")


def run_sync_job(client: EmbeddedClient, job: RunningJob, ray_address: str | None = None) -> dict[str, Any]:
    """Run a sync job from its payload: on the server that accepted it (holding the lock it took), or on one
    that took it over (which takes the lock here; held by a local ``kb sync``: the job waits for a later claim)."""
    row, payload = job.row, job.payload
    lock = job.extra.get("lock")
    try:
        core = core_for(client, row.project_key, row.kb_id)
        folder = client.resolve_folder(payload["folder_id"], default_project=row.project_key)
        # the engine is the administrator's (KB_RAY_ADDRESS), never a request's
        engine = engine_for(ray_address) if ray_address else None
    except BaseException:
        if lock is not None:
            lock.close()
        raise
    if lock is None:
        try:
            lock = acquire_sync_lock(core)
        except SyncBusyError as exc:
            raise JobDeferred(str(exc)) from None
    live = SyncReport(folder_id=folder.id)
    job.progress_reader = lambda: _progress(live)

    def attach(report: SyncReport) -> None:
        nonlocal live
        live = report  # the live report: heartbeats save its counters as the sync goes
        job.committed()

    report = sync_folder(core, folder, SyncOptions.from_mapping(payload["options"]), on_progress=attach,
                         held_lock=lock, engine=engine)
    live = report
    return report.to_dict()


@router.post("", status_code=202, summary="Start syncing a managed folder into the knowledge bank (409 busy)")
async def start_sync(project_key: str, kb_id: str, body: SyncJobIn, request: Request,
                     client: EmbeddedClient = Depends(get_client),
                     _: Principal = Depends(require("writer"))) -> dict[str, Any]:
    options = body.model_dump(exclude={"folder_id"})
    SyncOptions.from_mapping(options)  # bad options: 422 before any job exists

    def prepare() -> tuple[Any, Any, Any]:
        core = core_for(client, project_key, kb_id)
        folder = client.resolve_folder(body.folder_id, default_project=project_key)
        return core, folder, acquire_sync_lock(core)  # SyncBusyError: 409 busy, before any job exists

    core, folder, lock = await run_in_threadpool(prepare)
    try:
        ray_address = getattr(request.app.state.settings, "ray_address", None)
        payload = {"folder_id": folder.full_id, "options": options, "engine": "ray" if ray_address else "local"}
        row = await run_in_threadpool(runner(request).start_here, "sync", project_key, kb_id, payload,
                                      _progress(SyncReport(folder_id=folder.full_id)),
                                      {"lock": lock})
    except BaseException:
        lock.close()  # no job will run: the next sync must not wait for this lock's garbage collection
        raise
    return sync_job_dict(row)


@router.get("", summary="The knowledge bank's sync jobs, oldest first")
async def list_sync_jobs(project_key: str, kb_id: str, request: Request,
                         _: Principal = Depends(require("reader"))) -> list[dict[str, Any]]:
    rows = await run_in_threadpool(runner(request).store.list, project_key, "sync", kb_id, False)
    return [sync_job_dict(row) for row in rows]


def _sync_job(row: JobRow | None, job_id: str, project_key: str, kb_id: str) -> JobRow:
    if row is None or (row.kind, row.project_key, row.kb_id) != ("sync", project_key, kb_id):
        raise NotFoundError(f"sync job {job_id!r} of knowledge bank {kb_id} does not exist (finished jobs are "
                            f"kept until {MAX_KEPT_JOBS} newer ones of the project have finished)")
    return row


@router.get("/{job_id}", summary="A sync job: state, progress, and its report once it succeeded")
async def get_sync_job(project_key: str, kb_id: str, job_id: str, request: Request,
                       _: Principal = Depends(require("reader"))) -> dict[str, Any]:
    row = await run_in_threadpool(runner(request).store.get, job_id)
    return sync_job_dict(_sync_job(row, job_id, project_key, kb_id))


@router.post("/{job_id}/cancel", summary="Cancel a sync job: it stops at its next commit (409 if it already ended)")
async def cancel_sync_job(project_key: str, kb_id: str, job_id: str, request: Request,
                          who: Principal = Depends(require("writer"))) -> dict[str, Any]:
    _sync_job(await run_in_threadpool(runner(request).store.get, job_id), job_id, project_key, kb_id)
    row = await run_in_threadpool(runner(request).cancel, job_id, f"key {who.name!r}")
    return sync_job_dict(_sync_job(row, job_id, project_key, kb_id))

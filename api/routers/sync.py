"""Folder sync jobs: start a sync of a managed folder into a knowledge bank, poll it, read its report.

A job runs in a thread of the service; its state lives in memory (a restart
forgets finished jobs; a job killed by a restart leaves whole files, and the
next job finishes the work). Starting a job while another sync of the same
knowledge bank runs, in this service or in any process (``kb sync``), answers
409 with the error code ``busy``.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from api.deps import core_for, get_client, require
from api.fastjson import OrjsonRoute
from api.keys import Principal
from kb.client import EmbeddedClient
from kb.engines import engine_for
from kb_base.errors import KBError, NotFoundError
from writers.sync import SyncOptions, SyncReport, acquire_sync_lock, sync_folder

router = APIRouter(prefix="/v1/projects/{project_key}/knowledge-banks/{kb_id}/sync-jobs", tags=["folder sync"],
                   route_class=OrjsonRoute)

MAX_KEPT_JOBS = 200
_CREATE_LOCK = threading.Lock()  # the first requests of a fresh service may race to create the job registry


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


class SyncJob:
    def __init__(self, project_key: str, kb_id: str, folder_id: str, options: SyncOptions) -> None:
        self.id = uuid.uuid4().hex
        self.project_key, self.kb_id, self.folder_id = project_key, kb_id, folder_id
        self.options = options
        self.state = "running"
        self.started = time.time()
        self.finished: float | None = None
        self.report = SyncReport(folder_id=folder_id)  # replaced by the live report once the sync starts
        self.error: dict[str, str] | None = None
        self.engine = "local"  # "ray" when the service runs its syncs on a Ray cluster (KB_RAY_ADDRESS)

    def to_dict(self) -> dict[str, Any]:
        report = self.report
        done = self.state != "running"
        return {
            "job_id": self.id, "state": self.state, "project_key": self.project_key, "kb_id": self.kb_id,
            "folder_id": self.folder_id, "engine": self.engine, "started_at": self.started,
            "finished_at": self.finished,
            "options": {"extraction": self.options.extraction, "screenshots": self.options.screenshots,
                        "ocr": self.options.ocr, "chunk_size": self.options.chunk_size,
                        "chunk_overlap": self.options.chunk_overlap, "batch_files": self.options.batch_files,
                        "batch_chunks": self.options.batch_chunks, "screenshot_scale": self.options.screenshot_scale,
                        "screenshot_timeout": self.options.screenshot_timeout,
                        "max_file_bytes": self.options.max_file_bytes},
            "progress": {"files_total": report.files_total, "files_to_process": report.files_to_process,
                         "files_processed": report.files_processed, "commits": report.commits,
                         "empty": len(report.empty), "failed": len(report.failed)},
            "report": report.to_dict() if self.state == "succeeded" else None,
            "error": self.error,
            "seconds": round((self.finished if done and self.finished else time.time()) - self.started, 3),
        }


class SyncJobs:
    """The service's jobs, newest last; finished ones beyond MAX_KEPT_JOBS are forgotten."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: OrderedDict[str, SyncJob] = OrderedDict()

    def add(self, job: SyncJob) -> None:
        with self._lock:
            self._jobs[job.id] = job
            finished = [j.id for j in self._jobs.values() if j.state != "running"]
            for job_id in finished[: max(0, len(self._jobs) - MAX_KEPT_JOBS)]:
                del self._jobs[job_id]

    def get(self, project_key: str, kb_id: str, job_id: str) -> SyncJob:
        job = self._jobs.get(job_id)
        if job is None or (job.project_key, job.kb_id) != (project_key, kb_id):
            raise NotFoundError(f"sync job {job_id!r} of knowledge bank {kb_id} does not exist "
                                "(finished jobs are kept in memory until the service restarts)")
        return job

    def of(self, project_key: str, kb_id: str) -> list[SyncJob]:
        with self._lock:
            return [j for j in self._jobs.values() if (j.project_key, j.kb_id) == (project_key, kb_id)]


def jobs_of(request: Request) -> SyncJobs:
    state = request.app.state
    with _CREATE_LOCK:
        if getattr(state, "sync_jobs", None) is None:
            state.sync_jobs = SyncJobs()
    return state.sync_jobs


def _run(job: SyncJob, core: Any, folder: Any, lock: Any, ray_address: str | None) -> None:
    def attach(report: SyncReport) -> None:
        job.report = report  # the live report: polling reads its counters as the sync goes

    try:
        # the engine is the administrator's (KB_RAY_ADDRESS), never a request's
        engine = engine_for(ray_address) if ray_address else None
        job.report = sync_folder(core, folder, job.options, on_progress=attach, held_lock=lock, engine=engine)
        job.state = "succeeded"
    except KBError as exc:
        job.state, job.error = "failed", {"code": exc.code, "message": str(exc)}
    except Exception as exc:  # noqa: BLE001 - a job reports every failure instead of dying silently
        job.state, job.error = "failed", {"code": "internal_error", "message": f"{type(exc).__name__}: {exc}"}
    finally:
        job.finished = time.time()


@router.post("", status_code=202, summary="Start syncing a managed folder into the knowledge bank (409 busy)")
async def start_sync(project_key: str, kb_id: str, body: SyncJobIn, request: Request,
                     client: EmbeddedClient = Depends(get_client),
                     _: Principal = Depends(require("writer"))) -> dict[str, Any]:
    options = SyncOptions.from_mapping(body.model_dump(exclude={"folder_id"}))

    def prepare() -> tuple[Any, Any, Any]:
        core = core_for(client, project_key, kb_id)
        folder = client.resolve_folder(body.folder_id, default_project=project_key)
        return core, folder, acquire_sync_lock(core)  # SyncBusyError: 409 busy, before any job exists

    core, folder, lock = await run_in_threadpool(prepare)
    try:
        job = SyncJob(project_key, kb_id, folder.full_id, options)
        jobs_of(request).add(job)
        ray_address = getattr(request.app.state.settings, "ray_address", None)
        job.engine = "ray" if ray_address else "local"
        threading.Thread(target=_run, args=(job, core, folder, lock, ray_address), name=f"sync-{job.id[:8]}",
                         daemon=True).start()
    except BaseException:
        lock.close()  # no job will run: the next sync must not wait for this lock's garbage collection
        raise
    return job.to_dict()


@router.get("", summary="The knowledge bank's sync jobs, oldest first")
async def list_sync_jobs(project_key: str, kb_id: str, request: Request,
                         _: Principal = Depends(require("reader"))) -> list[dict[str, Any]]:
    return [job.to_dict() for job in jobs_of(request).of(project_key, kb_id)]


@router.get("/{job_id}", summary="A sync job: state, progress, and its report once it succeeded")
async def get_sync_job(project_key: str, kb_id: str, job_id: str, request: Request,
                       _: Principal = Depends(require("reader"))) -> dict[str, Any]:
    return jobs_of(request).get(project_key, kb_id, job_id).to_dict()

"""Ingestion jobs: ingest a file of a managed folder into a knowledge bank in the background, with progress.

``POST .../knowledge-banks/{kb_id}/ingest-jobs`` starts one (202) and ``GET /v1/projects/{key}/jobs/{id}``
follows it, through any server: state, rows and chunks so far (saved at every commit), then the ingestion
report or the error. Jobs are kept in the catalog database and run by any server (``api/jobs.py``); the folder
sync of ``api/routers/sync.py`` is a job of its own kind in the same table.
"""

from __future__ import annotations

import uuid
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import Field

from api.deps import core_for, get_client, require
from api.fastjson import OrjsonRoute
from api.jobs import JobRunner, RunningJob
from api.keys import Principal
from api.schemas import Strict
from kb.catalog_db.jobs import MAX_KEPT_JOBS, JobRow
from kb.client import EmbeddedClient
from kb_base.errors import NotFoundError
from writers.ingest import IngestOptions, IngestReport, ingest
from writers.sources import detect_format

router = APIRouter(prefix="/v1/projects/{project_key}", tags=["jobs"], route_class=OrjsonRoute)


class IngestJobIn(Strict):
    folder: str = Field(description="managed folder id or name in this project", examples=["uploads"])
    path: str = Field(description="file path inside the folder", examples=["/rows.jsonl"])
    format: Literal["jsonl", "csv", "parquet", "arrow"] | None = Field(default=None,
                                                                       description="default: from the extension")
    text_column: str = "text"
    id_column: str | None = None
    metadata_columns: list[str] | None = None
    chunk_size: int = Field(default=1000, ge=0)
    chunk_overlap: int = Field(default=200, ge=0)
    batch_rows: int = Field(default=1000, ge=1, description="rows read at a time (a commit happens between batches)")
    commit_every: int = Field(default=500, ge=1, description="chunks per atomic commit (and progress update)")
    max_rejected: int | None = Field(default=None, ge=0)


def runner(request: Request) -> JobRunner:
    return request.app.state.jobs


def ingest_job_dict(row: JobRow) -> dict[str, Any]:
    """An ingestion job as the REST API shows it (the shape from before jobs moved into the catalog)."""
    return {"id": row.id, "kind": row.kind, "project_key": row.project_key, "target": row.payload["target"],
            "state": row.state, "progress": row.progress, "report": row.report, "error": row.error,
            "created_at": row.created_at, "finished_at": row.finished_at, "attempts": row.attempts}


def run_ingest_job(client: EmbeddedClient, job: RunningJob) -> dict[str, Any]:
    """Run an ingestion job from its payload, on whichever server claimed it (the file is found again by its
    folder and path: managed folders are shared under KB_FOLDERS_ROOT)."""
    payload, row = job.payload, job.row
    core = core_for(client, row.project_key, row.kb_id)
    folder = client.get_project(row.project_key).get_managed_folder(payload["target"]["folder"])
    path = folder.local_file(payload["target"]["path"])
    options = IngestOptions(**payload["options"])

    def on_commit(report: IngestReport) -> None:
        job.committed({"rows_read": report.rows_read, "rows_written": report.rows_written,
                       "rows_rejected": report.rows_rejected, "chunks_written": report.chunks_written,
                       "commits": report.commits})

    return ingest(core, path, options, progress=False, on_commit=on_commit).to_dict()


@router.post("/knowledge-banks/{kb_id}/ingest-jobs", status_code=202,
             summary="Start ingesting a managed folder's file (JSONL, CSV, Parquet, Arrow); follow it at /jobs/{id}")
def start_ingest_job(project_key: str, kb_id: str, body: IngestJobIn, request: Request,
                     client: EmbeddedClient = Depends(get_client),
                     _: Principal = Depends(require("writer"))) -> dict[str, Any]:
    # everything that can be refused is checked here, so a bad request is a 4xx and not a failed job
    core_for(client, project_key, kb_id)
    folder = client.get_project(project_key).get_managed_folder(body.folder)
    path = folder.local_file(body.path)
    options = dict(text_column=body.text_column, id_column=body.id_column, metadata_columns=body.metadata_columns,
                   source=path.name, format=body.format, chunk_size=body.chunk_size,
                   chunk_overlap=body.chunk_overlap, batch_rows=body.batch_rows, commit_every=body.commit_every,
                   max_rejected=body.max_rejected)
    IngestOptions(**options).validate()
    detect_format(path, body.format)  # an unknown extension is a 422 now, not a failed job later
    target = {"knowledge_bank": kb_id, "folder": folder.id, "path": body.path}
    row = runner(request).submit("ingest", project_key, kb_id, {"target": target, "options": options},
                                 job_id=uuid.uuid4().hex[:12])
    return ingest_job_dict(row)


@router.get("/jobs", summary="Recent ingestion jobs of the project, newest first")
def list_jobs(project_key: str, request: Request, _: Principal = Depends(require("reader"))) -> list[dict[str, Any]]:
    return [ingest_job_dict(row) for row in runner(request).store.list(project_key, "ingest")]


def _ingest_job(row: JobRow | None, job_id: str, project_key: str) -> JobRow:
    if row is None or row.project_key != project_key or row.kind != "ingest":
        raise NotFoundError(f"job {job_id!r} does not exist in project {project_key!r} (finished jobs are kept "
                            f"until {MAX_KEPT_JOBS} newer ones of the project have finished)")
    return row


@router.get("/jobs/{job_id}", summary="A job: state, progress, report or error")
def get_job(project_key: str, job_id: str, request: Request,
            _: Principal = Depends(require("reader"))) -> dict[str, Any]:
    return ingest_job_dict(_ingest_job(runner(request).store.get(job_id), job_id, project_key))


@router.post("/jobs/{job_id}/cancel", summary="Cancel an ingestion job: it stops at its next commit (409 if it ended)")
def cancel_job(project_key: str, job_id: str, request: Request,
               who: Principal = Depends(require("writer"))) -> dict[str, Any]:
    _ingest_job(runner(request).store.get(job_id), job_id, project_key)
    row = runner(request).cancel(job_id, f"key {who.name!r}")
    return ingest_job_dict(_ingest_job(row, job_id, project_key))

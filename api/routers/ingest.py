"""Batch ingestion of a file uploaded as the request body (JSONL, CSV, Parquet or Arrow IPC)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from starlette.concurrency import run_in_threadpool

from api.deps import core_for, get_client, require
from api.fastjson import OrjsonRoute
from api.keys import Principal
from kb.client import EmbeddedClient
from kb_base.disk import disk_full_error, is_disk_full
from writers.ingest import IngestOptions, ingest

router = APIRouter(prefix="/v1/projects/{project_key}/knowledge-banks/{kb_id}", tags=["ingestion"],
                   route_class=OrjsonRoute)


@router.post("/ingest", summary="Ingest a file sent as the raw request body; returns the ingestion report")
async def ingest_file(
    project_key: str, kb_id: str, request: Request,
    format: Literal["jsonl", "csv", "parquet", "arrow"] = Query(description="file format"),
    text_column: str = "text", id_column: str | None = None, metadata_columns: str | None = None,
    source: str | None = None, chunk_size: int = Query(1000, ge=0), chunk_overlap: int = Query(200, ge=0),
    commit_every: int = Query(5000, ge=1), max_rejected: int | None = Query(None, ge=0),
    client: EmbeddedClient = Depends(get_client), _: Principal = Depends(require("writer")),
) -> dict[str, Any]:
    core = core_for(client, project_key, kb_id)
    options = IngestOptions(text_column=text_column, id_column=id_column, source=source or f"upload.{format}",
                            format=format, chunk_size=chunk_size, chunk_overlap=chunk_overlap,
                            commit_every=commit_every, max_rejected=max_rejected,
                            metadata_columns=[c for c in metadata_columns.split(",") if c]
                            if metadata_columns else None)
    with tempfile.TemporaryDirectory(prefix="kb-ingest-") as folder:
        path = Path(folder) / f"upload.{format}"
        try:
            with open(path, "wb") as handle:  # stream to disk: the file is never held in memory
                async for chunk in request.stream():
                    handle.write(chunk)
        except OSError as exc:
            if is_disk_full(exc):
                raise disk_full_error(exc, f"receiving the file to ingest (in {tempfile.gettempdir()})") from exc
            raise
        report = await run_in_threadpool(ingest, core, path, options, False)
    return report.to_dict()

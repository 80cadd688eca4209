"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from api.fastjson import OrjsonRoute

router = APIRouter(tags=["health"], route_class=OrjsonRoute)


@router.get("/healthz", summary="The process is up")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="The catalog answers and the local model is loaded: the service takes requests")
def readyz(request: Request) -> JSONResponse:
    request.app.state.client.catalog.projects()
    if not request.app.state.warm.is_set():
        return JSONResponse({"status": "warming up"}, status_code=503)
    return JSONResponse({"status": "ready"})

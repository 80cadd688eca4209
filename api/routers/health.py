"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter, Request

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is up")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="The catalog answers and the service takes requests")
def readyz(request: Request) -> dict[str, str]:
    request.app.state.client.catalog.projects()
    return {"status": "ready"}

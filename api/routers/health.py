"""Liveness and readiness.

``/readyz`` names each dependency and its state, so that an operator (or a load balancer's log) sees *which*
one keeps a server out of rotation: the catalog database (SQLite in ``$KB_HOME``, or the shared PostgreSQL that
also holds the commit points of Elasticsearch and Azure AI Search knowledge banks) and the local embedding
model's warm-up. A knowledge bank's store is not a readiness dependency: one Elasticsearch cluster down must
not take every server, and every other knowledge bank with it, out of rotation (its requests get their own
503 ``store_unavailable``).
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError

from api.fastjson import OrjsonRoute

router = APIRouter(tags=["health"], route_class=OrjsonRoute)
CATALOG_RETRY_AFTER = 2  # seconds, in every 503 while the catalog database is unavailable (api.app's too)


@router.get("/healthz", summary="The process is up")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


def catalog_state(catalog: Any) -> dict[str, Any]:
    """The catalog database: ``up`` with the round trip's milliseconds, or ``down`` with the error's first line."""
    where = {"database": catalog.database.describe(), "shared": catalog.shared}
    started = time.perf_counter()
    try:
        catalog.database.ping()
    except (SQLAlchemyError, sqlite3.Error, OSError) as exc:
        first_line = (str(exc).splitlines() or [""])[0][:300]
        return {"state": "down", **where, "error": f"{type(exc).__name__}: {first_line}"}
    return {"state": "up", **where, "round_trip_ms": round((time.perf_counter() - started) * 1000, 2)}


@router.get("/readyz", summary="Each dependency's state; 200 when the catalog answers and the local model is loaded")
def readyz(request: Request) -> JSONResponse:
    catalog = catalog_state(request.app.state.client.catalog)
    model = {"state": "loaded" if request.app.state.warm.is_set() else "loading"}
    dependencies = {"catalog": catalog, "embedding_model": model}
    if catalog["state"] != "up":
        body = {"status": "unavailable", "down": ["catalog"], "dependencies": dependencies}
        return JSONResponse(body, status_code=503, headers={"Retry-After": str(CATALOG_RETRY_AFTER)})
    if model["state"] != "loaded":
        return JSONResponse({"status": "warming up", "dependencies": dependencies}, status_code=503)
    return JSONResponse({"status": "ready", "dependencies": dependencies})

"""The kb REST service: ``create_app()`` builds the FastAPI application.

One EmbeddedClient per process serves every request; blocking kb calls run
in FastAPI's thread pool. Errors are JSON ``{"error": {"code", "message"}}``
with the status of the kb error class (4xx for anything the caller can fix).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import kb
from api import metrics
from api.config import ServiceSettings
from api.console_app import mount_console
from api.jobs import JobRunner
from api.keys import KeyStore
from api.memory import tune_malloc
from api.routers import (
    connections,
    documents,
    evaluation,
    folders,
    health,
    ingest,
    jobs,
    knowledge_banks,
    llms,
    openai_compat,
    projects,
    session,
)
from api.routers import sync as sync_jobs
from api.routers.health import CATALOG_RETRY_AFTER
from kb.catalog_db.jobs import JobStore
from kb.embeddings import DEFAULT_EMBEDDING_LLM_ID
from kb_base.disk import disk_full_error, is_disk_full
from kb_base.errors import KBError

log = logging.getLogger("kb.api")


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: easy to grep at 3 a.m. and to ship anywhere."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": round(record.created, 3), "level": record.levelname, "logger": record.name,
                 "msg": record.getMessage()}
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLogFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def _warm_up(app: FastAPI) -> None:
    """Load the local model before the first query needs it (10-20 s on 2 cores); /readyz waits for it."""

    started = time.perf_counter()
    try:
        app.state.client.get_llm_handle(DEFAULT_EMBEDDING_LLM_ID).embedder.embed_query("warm-up")
        log.info("local embedding model loaded", extra={"fields": {"seconds": round(time.perf_counter() - started, 1)}})
    except Exception:  # a missing model must not stop the service: requests will report it clearly
        log.exception("could not load the local embedding model")
    finally:
        app.state.warm.set()


def error_response(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


class LimitsAndLogs:
    """Body size limit, request id and one JSON log line per request, as plain ASGI middleware.

    (Starlette's ``@app.middleware("http")`` wraps every request and response in extra tasks and streams;
    on a 1 ms search that was a measurable share of the request time.)
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app, self.max_body_bytes = app, max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = dict(scope["headers"])
        request_id = headers.get(b"x-request-id", b"").decode("latin-1")[:64] or uuid.uuid4().hex[:12]
        status = 500
        started_response = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, started_response
            if message["type"] == "http.response.start":
                status, started_response = message["status"], True
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode("latin-1"))]
            await send(message)

        length = headers.get(b"content-length", b"").decode("latin-1")
        try:
            if length.isdigit() and int(length) > self.max_body_bytes:
                response: Response = error_response(
                    413, "body_too_large", f"request body of {length} bytes exceeds the limit of "
                                           f"{self.max_body_bytes} bytes (KB_MAX_BODY_BYTES)")
                await response(scope, receive, send_with_id)
            else:
                await self.app(scope, receive, send_with_id)
        except Exception:  # the last line of defence: log with an id, answer 500 without internals
            log.exception("unhandled error", extra={"fields": {"request_id": request_id}})
            if not started_response:
                await error_response(500, "internal_error", f"internal error; request id {request_id}")(
                    scope, receive, send_with_id)
        state = scope.get("state") or {}
        elapsed = time.perf_counter() - started
        metrics.observe_request(scope, status, elapsed)
        log.info("request", extra={"fields": {
            "request_id": request_id, "method": scope["method"], "path": scope["path"], "status": status,
            "ms": round(elapsed * 1000, 1), "key": state.get("key_id")}})


def create_app(settings: ServiceSettings | None = None,
               configure_client: Callable[[kb.EmbeddedClient], None] | None = None) -> FastAPI:
    """``configure_client`` runs once on the process's client (e.g. to register in-process models)."""
    if not logging.getLogger().handlers and os.environ.get("KB_LOG_LEVEL"):
        configure_logging(os.environ["KB_LOG_LEVEL"])  # a worker of kb serve --workers N: a fresh interpreter
    settings = settings or ServiceSettings.from_env()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        tune_malloc()  # before the model's first allocations (see api.memory)
        app.state.client = kb.api_client(home=settings.home)
        if configure_client is not None:
            configure_client(app.state.client)
        app.state.keys = KeyStore(app.state.client.catalog.database)  # one catalog: one engine, one watch
        if settings.bootstrap_admin_key:
            app.state.keys.create("bootstrap admin", admin=True, key=settings.bootstrap_admin_key)
        client = app.state.client
        app.state.jobs = JobRunner(JobStore(client.catalog.database), {
            "ingest": lambda job: jobs.run_ingest_job(client, job),
            "sync": lambda job: sync_jobs.run_sync_job(client, job, getattr(settings, "ray_address", None))}).start()
        app.state.warm = threading.Event()
        if settings.warmup:
            threading.Thread(target=_warm_up, args=(app,), name="kb-warmup", daemon=True).start()
        else:
            app.state.warm.set()
        log.info("kb service started", extra={"fields": {"home": str(settings.home), "auth": settings.auth}})
        yield
        # Shutdown runs after uvicorn has drained in-flight requests, so no commit is cut in half.
        app.state.jobs.close()
        app.state.keys.close()
        app.state.client.close()
        log.info("kb service stopped")

    app = FastAPI(title="kb", version="0.1.0", lifespan=lifespan,
                  description="Knowledge banks: text chunks with embeddings and metadata, searched by similarity, "
                              "keyword, hybrid and semantic-hybrid retrieval.")
    app.state.settings = settings

    @app.exception_handler(KBError)
    async def kb_error(request: Request, exc: KBError) -> JSONResponse:
        metrics.observe_error(request.scope, exc)
        return error_response(exc.http_status, exc.code, str(exc))

    @app.exception_handler(OSError)
    @app.exception_handler(sqlite3.Error)
    @app.exception_handler(DBAPIError)  # the catalog's errors, wrapped by SQLAlchemy
    async def system_error(request: Request, exc: Exception) -> JSONResponse:
        # a full disk that surfaced outside the places that name it (kb_base.disk) is still a 507, not a 500
        if is_disk_full(exc):
            return await kb_error(request, disk_full_error(exc, f"{request.method} {request.url.path}"))
        if isinstance(exc, OperationalError | InterfaceError):
            # the catalog database is down, restarting or unreachable: the caller should retry, and the pool
            # reconnects by itself once it answers (pre-ping), so no restart of kb is needed
            log.warning("catalog database unavailable: %s", str(exc).splitlines()[0][:300])
            response = error_response(503, "catalog_unavailable",
                                      "the catalog database is unavailable; retry in a few seconds")
            response.headers["Retry-After"] = str(CATALOG_RETRY_AFTER)
            return response
        log.error("unhandled error", exc_info=exc)
        return error_response(500, "internal_error", "internal error; see the service log")

    @app.exception_handler(UnicodeError)
    async def unicode_error(_: Request, exc: UnicodeError) -> JSONResponse:
        # kb_base.input_checks names the field at the boundary; text it missed is still the caller's, not a 500
        return error_response(422, "invalid_text", f"a string in the request is not valid Unicode: {exc}"[:500])

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:10])
        return error_response(422, "invalid_request", problems)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, "http_error", str(exc.detail))

    app.add_middleware(LimitsAndLogs, max_body_bytes=settings.max_body_bytes)
    # Starlette tries routes in order: the busiest (search, documents) first, so they match without
    # testing thirty others.
    for router in (documents.router, health.router, projects.router, llms.router, folders.router,
                   knowledge_banks.router, ingest.router, openai_compat.router, session.router, jobs.router,
                   evaluation.router, sync_jobs.router, metrics.router):
        app.include_router(router)
    app.include_router(connections.router)
    metrics.install()
    mount_console(app)  # the web console at / (static files; every datum comes from the REST API above)
    return app

"""The kb REST service: ``create_app()`` builds the FastAPI application.

One EmbeddedClient per process serves every request; blocking kb calls run
in FastAPI's thread pool. Errors are JSON ``{"error": {"code", "message"}}``
with the status of the kb error class (4xx for anything the caller can fix).
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

import kb
from api.config import ServiceSettings
from api.keys import KeyStore
from api.routers import documents, folders, health, ingest, knowledge_banks, llms, openai_compat, projects
from kb.errors import KBError

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
    from kb.embeddings import LOCAL_MINILM_ID

    started = time.perf_counter()
    try:
        app.state.client.get_llm_handle(LOCAL_MINILM_ID).embedder.embed_query("warm-up")
        log.info("local embedding model loaded", extra={"fields": {"seconds": round(time.perf_counter() - started, 1)}})
    except Exception:  # a missing model must not stop the service: requests will report it clearly
        log.exception("could not load the local embedding model")
    finally:
        app.state.warm.set()


def error_response(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def create_app(settings: ServiceSettings | None = None,
               configure_client: Callable[[kb.EmbeddedClient], None] | None = None) -> FastAPI:
    """``configure_client`` runs once on the process's client (e.g. to register in-process models)."""
    settings = settings or ServiceSettings.from_env()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.client = kb.api_client(home=settings.home)
        if configure_client is not None:
            configure_client(app.state.client)
        app.state.keys = KeyStore(settings.home / "keys.sqlite")
        if settings.bootstrap_admin_key:
            app.state.keys.create("bootstrap admin", admin=True, key=settings.bootstrap_admin_key)
        app.state.warm = threading.Event()
        if settings.warmup:
            threading.Thread(target=_warm_up, args=(app,), name="kb-warmup", daemon=True).start()
        else:
            app.state.warm.set()
        log.info("kb service started", extra={"fields": {"home": str(settings.home), "auth": settings.auth}})
        yield
        # Shutdown runs after uvicorn has drained in-flight requests, so no commit is cut in half.
        app.state.client.close()
        log.info("kb service stopped")

    app = FastAPI(title="kb", version="0.1.0", lifespan=lifespan,
                  description="Knowledge banks: text chunks with embeddings and metadata, searched by similarity, "
                              "keyword, hybrid and semantic-hybrid retrieval.")
    app.state.settings = settings

    @app.middleware("http")
    async def limits_and_logs(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex[:12]
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > settings.max_body_bytes:
            response: Response = error_response(
                413, "body_too_large", f"request body of {length} bytes exceeds the limit of "
                                       f"{settings.max_body_bytes} bytes (KB_MAX_BODY_BYTES)")
        else:
            try:
                response = await call_next(request)
            except Exception:  # the last line of defence: log with an id, answer 500 without internals
                log.exception("unhandled error", extra={"fields": {"request_id": request_id}})
                response = error_response(500, "internal_error", f"internal error; request id {request_id}")
        response.headers["x-request-id"] = request_id
        log.info("request", extra={"fields": {
            "request_id": request_id, "method": request.method, "path": request.url.path,
            "status": response.status_code, "ms": round((time.perf_counter() - started) * 1000, 1),
            "key": getattr(request.state, "key_id", None)}})
        return response

    @app.exception_handler(KBError)
    async def kb_error(_: Request, exc: KBError) -> JSONResponse:
        return error_response(exc.http_status, exc.code, str(exc))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:10])
        return error_response(422, "invalid_request", problems)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, "http_error", str(exc.detail))

    for router in (health.router, projects.router, llms.router, folders.router, knowledge_banks.router,
                   documents.router, ingest.router, openai_compat.router):
        app.include_router(router)
    return app

"""The service's Prometheus metrics, served at ``GET /metrics`` (a global admin key when auth is on).

Everything the service counts is defined here; the rest of kb only emits ``kb_base.events`` (searches,
embeddings, commits) and the request middleware calls ``observe_request``. Under ``kb serve --workers N``
every worker writes its samples to files in ``PROMETHEUS_MULTIPROC_DIR`` (set and emptied by
``kb serve``, see ``api.metrics_dir``) and a scrape of any worker merges them all.

Metrics:
- ``kb_http_requests_total{method,route,status}``, ``kb_http_request_duration_seconds{method,route}``
  (route is the template, ``/v1/projects/{project_key}/...``, so ids never explode the label set);
- ``kb_searches_total{search_type,store}``, ``kb_search_duration_seconds{search_type,store}``;
- ``kb_embedding_texts_total{model,cache="hit"|"miss"}`` (hit rate = hit / (hit + miss)),
  ``kb_embedding_model_calls_total{model}``, ``kb_embedding_model_call_duration_seconds{model}``;
- ``kb_commit_duration_seconds{store,outcome}``; ``kb_store_errors_total{code,route}`` (502/503 answers);
- ``kb_documents{project,kb_id,store}``: documents of each knowledge bank open in the scraping worker
  (the most recent count any worker made); ``kb_process_resident_memory_bytes`` per live process.
"""

from __future__ import annotations

import os
import re
import resource
import time
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.concurrency import run_in_threadpool
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from starlette.types import Scope

from api.deps import ForbiddenError, get_principal
from api.keys import Principal
from api.metrics_dir import ENV
from kb_base import events
from kb_base.errors import KBError, StoreError, StoreUnavailableError

SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

REQUESTS = Counter("kb_http_requests_total", "HTTP requests by route template, method and status",
                   ["method", "route", "status"])
REQUEST_SECONDS = Histogram("kb_http_request_duration_seconds", "HTTP request latency by route template",
                            ["method", "route"], buckets=SECONDS)
SEARCHES = Counter("kb_searches_total", "Searches by search type and store", ["search_type", "store"])
SEARCH_SECONDS = Histogram("kb_search_duration_seconds", "Search latency inside kb (embedding included)",
                           ["search_type", "store"], buckets=SECONDS)
EMBEDDING_TEXTS = Counter("kb_embedding_texts_total", "Texts embedded through kb, by embedding cache outcome",
                          ["model", "cache"])
MODEL_CALLS = Counter("kb_embedding_model_calls_total", "Batches of texts sent to the embedding model", ["model"])
MODEL_SECONDS = Histogram("kb_embedding_model_call_duration_seconds", "Embedding model call latency", ["model"],
                          buckets=SECONDS)
COMMIT_SECONDS = Histogram("kb_commit_duration_seconds", "Store commit duration by store and outcome",
                           ["store", "outcome"], buckets=SECONDS)
STORE_ERRORS = Counter("kb_store_errors_total", "Store errors answered to callers (502/503), by code and route",
                       ["code", "route"])
DOCUMENTS = Gauge("kb_documents", "Documents per knowledge bank (counted at scrape time by a worker that has it "
                  "open)", ["project", "kb_id", "store"], multiprocess_mode="mostrecent")
# labelled, so that a process which never serves (kb serve's supervisor imports this module) reports nothing
RSS = Gauge("kb_process_resident_memory_bytes", "Resident memory of each live service process", ["role"],
            multiprocess_mode="liveall")

_PAGE = resource.getpagesize()
_rss_updated = 0.0
_LIVE_FILE = re.compile(r"^gauge_live\w+?_(\d+)\.db$")


def _on_event(event: str, fields: dict[str, Any]) -> None:
    if event == "search":
        SEARCHES.labels(fields["search_type"], fields["store"]).inc()
        SEARCH_SECONDS.labels(fields["search_type"], fields["store"]).observe(fields["seconds"])
    elif event == "embedding":
        if fields["hits"]:
            EMBEDDING_TEXTS.labels(fields["model"], "hit").inc(fields["hits"])
        if fields["misses"]:
            EMBEDDING_TEXTS.labels(fields["model"], "miss").inc(fields["misses"])
    elif event == "model_call":
        MODEL_CALLS.labels(fields["model"]).inc()
        MODEL_SECONDS.labels(fields["model"]).observe(fields["seconds"])
    elif event == "commit":
        COMMIT_SECONDS.labels(fields["store"], "ok" if fields["ok"] else "failed").observe(fields["seconds"])


def install() -> None:
    """Start counting kb's events in this process (idempotent)."""
    events.subscribe(_on_event)


def _update_rss(now: float) -> None:
    global _rss_updated
    _rss_updated = now
    try:
        with open("/proc/self/statm") as statm:
            RSS.labels("worker").set(int(statm.read().split()[1]) * _PAGE)
    except OSError:  # not Linux: peak RSS is the best the standard library offers
        RSS.labels("worker").set(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def route_template(scope: Scope) -> str:
    route = scope.get("route")
    return getattr(route, "path", None) or "unmatched"


def observe_request(scope: Scope, status: int, seconds: float) -> None:
    """Called by the request middleware once per HTTP request."""
    route, method = route_template(scope), scope.get("method", "")
    REQUESTS.labels(method, route, str(status)).inc()
    REQUEST_SECONDS.labels(method, route).observe(seconds)
    now = time.monotonic()
    if now - _rss_updated > 2.0:  # every worker keeps its own figure fresh, cheaply
        _update_rss(now)


def observe_error(scope: Scope, exc: KBError) -> None:
    """Called by the service's error handler: counts the store errors callers got."""
    if isinstance(exc, StoreError | StoreUnavailableError):
        STORE_ERRORS.labels(exc.code, route_template(scope)).inc()


def _count_documents(client: Any) -> None:
    for project in client.catalog.projects():
        for info in client.catalog.knowledge_banks(project["key"]):
            driver = client.cached_store(info["id"])
            if driver is None:
                continue
            try:
                DOCUMENTS.labels(project["key"], info["id"], driver.store_type).set(driver.count())
            except KBError:  # a store that is down is counted by kb_store_errors_total, not here
                continue


def _registry() -> CollectorRegistry:
    folder = os.environ.get(ENV)
    if not folder:
        return REGISTRY
    for name in os.listdir(folder):  # workers that died (or were restarted) leave their live gauges behind
        match = _LIVE_FILE.match(name)
        if match and not _alive(int(match.group(1))):
            multiprocess.mark_process_dead(int(match.group(1)), folder)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, folder)
    return registry


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


router = APIRouter(tags=["health"])


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request, principal: Principal = Depends(get_principal)) -> Response:
    """Prometheus text format; needs a global admin key (the figures span every project)."""
    if not principal.admin:
        raise ForbiddenError("/metrics spans every project: it needs a global admin key")
    _update_rss(time.monotonic())
    await run_in_threadpool(_count_documents, request.app.state.client)
    body = await run_in_threadpool(lambda: generate_latest(_registry()))
    return Response(body, media_type=CONTENT_TYPE_LATEST)

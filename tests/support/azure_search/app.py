"""The emulator's HTTP face: the Azure AI Search data-plane routes kb uses, api-key auth, faults, validation.

Routes (API version 2024-07-01 only): ``/indexes`` (POST create, GET list), ``/indexes('name')`` (PUT
create-or-update, GET, DELETE), ``/indexes('name')/docs/search.index`` (batches, 200 or 207; at most
1000 documents and 16 MB, as on the service),
``/indexes('name')/docs/search.post.search``, ``/indexes('name')/docs('key')`` (lookup) and
``/indexes('name')/docs/$count``. Every request body and every response body is checked against the
published schemas (``spec.py``); a request that breaks them gets a 400, and every violation, either way,
is recorded for the tests (``GET /_emulator/violations``).

Auth: the ``api-key`` header, or ``Authorization: Bearer <token>`` when the emulator is given a token (it
then stands for a Microsoft Entra ID access token; the test runs it over TLS, which the SDK requires).

Test controls (no api-key): ``POST /_emulator/faults`` queues faults (``{"status": 429|503, "times": n,
"retry_after": s, "route": "batch"|"search"|...|"*"}``, or ``{"partial": n, "times": m}``: the next m
batches fail their first n documents with a per-document 503 in a 207); ``GET /_emulator/requests``
lists (method, route, status) of every request; ``POST /_emulator/reset`` clears faults and logs.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from tests.support.azure_search import spec
from tests.support.azure_search.engine import (
    Index,
    Reranker,
    ServiceError,
    check_definition,
    index_batch,
    overlap_reranker,
    project,
    search,
)

API_VERSION = "2024-07-01"
MAX_BATCH_DOCS = 1000  # the service's limits for one index batch
MAX_BATCH_BYTES = 16 * 1024 * 1024
_INDEX = r"/indexes(?:\('(?P<name>[^']*)'\)|/(?P<plain>[^/(]+))"
ROUTES: list[tuple[str, re.Pattern[str]]] = [
    ("indexes", re.compile(r"^/indexes/?$")),
    ("index", re.compile(rf"^{_INDEX}/?$")),
    ("batch", re.compile(rf"^{_INDEX}/docs/search\.index$")),
    ("search", re.compile(rf"^{_INDEX}/docs/search\.post\.search$")),
    ("count", re.compile(rf"^{_INDEX}/docs/\$count$")),
    ("lookup", re.compile(rf"^{_INDEX}/docs(?:\('(?P<key>(?:[^']|'')*)'\)|/(?P<plainkey>[^/]+))$")),
]


def url_reranker(url: str) -> Reranker:
    """A reranker served over HTTP in the Cohere/Jina/TEI shape (tests/support/rerank_server.py), scaled to 0-4."""
    import httpx

    def rerank(query: str, texts: list[str]) -> list[float]:
        answer = httpx.post(url, json={"query": query, "documents": texts, "top_n": len(texts)}, timeout=30)
        answer.raise_for_status()
        scores = [0.0] * len(texts)
        for item in answer.json()["results"]:
            scores[item["index"]] = float(item["relevance_score"])
        top = max(scores, default=0.0)
        return [4.0 * s / top if top > 1.0 else 4.0 * s for s in scores]

    return rerank


class Emulator:
    def __init__(self, api_key: str, reranker: Reranker = overlap_reranker, bearer_token: str | None = None) -> None:
        self.api_key, self.reranker, self.bearer_token = api_key, reranker, bearer_token
        self.indexes: dict[str, Index] = {}
        self.faults: list[dict[str, Any]] = []
        self.violations: list[dict[str, Any]] = []
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def take_fault(self, route: str) -> dict[str, Any] | None:
        for fault in self.faults:
            if "status" in fault and fault.get("route", "*") in ("*", route):
                fault["times"] = fault.get("times", 1) - 1
                if fault["times"] <= 0:
                    self.faults.remove(fault)
                return fault
        return None

    def take_partial(self) -> int:
        for fault in self.faults:
            if "partial" in fault:
                fault["times"] = fault.get("times", 1) - 1
                if fault["times"] <= 0:
                    self.faults.remove(fault)
                return int(fault["partial"])
        return 0

    def index(self, name: str) -> Index:
        found = self.indexes.get(name)
        if found is None:
            raise ServiceError(404, "ResourceNotFound", f"No index with the name '{name}' was found in the service.")
        return found

    # --- operations ------------------------------------------------------------------------------

    def handle(self, method: str, route: str, match: re.Match[str], query: dict[str, str],
               body: Any) -> tuple[int, Any]:
        name = match.groupdict().get("name") or match.groupdict().get("plain")
        if route == "indexes" and method == "POST":
            return self.put_index(body.get("name") if isinstance(body, dict) else None, body, create_only=True)
        if route == "indexes" and method == "GET":
            return 200, {"value": [self._select(i.public(), query.get("$select")) for i in self.indexes.values()]}
        if route == "index" and method == "PUT":
            return self.put_index(name, body, create_only=False)
        if route == "index" and method == "GET":
            return 200, self.index(name).public()
        if route == "index" and method == "DELETE":
            if self.indexes.pop(name, None) is None:
                return 404, None
            return 204, None
        index = self.index(name)
        if route == "batch" and method == "POST":
            if len(body["value"]) > MAX_BATCH_DOCS:
                raise ServiceError(400, "InvalidRequestParameter", f"An index batch may hold at most {MAX_BATCH_DOCS} "
                                   f"documents; this one has {len(body['value'])}.")
            failing = set(range(self.take_partial()))
            results = index_batch(index, list(body["value"]), failing)
            return (200 if all(r["status"] for r in results) else 207), {"value": results}
        if route == "search" and method == "POST":
            return 200, search(index, body, self.reranker)
        if route == "count" and method == "GET":
            return 200, len(index.docs)
        if route == "lookup" and method == "GET":
            key = match["key"].replace("''", "'") if match["key"] is not None else match["plainkey"]
            doc = index.docs.get(key)
            if doc is None:
                raise ServiceError(404, "ResourceNotFound", f"Document with key '{key}' was not found.")
            return 200, project(index, doc, query.get("$select"))
        raise ServiceError(405, "MethodNotAllowed", f"{method} is not supported on this resource.")

    @staticmethod
    def _select(definition: dict[str, Any], select: str | None) -> dict[str, Any]:
        if not select:
            return definition
        return {k: v for k, v in definition.items() if k in {s.strip() for s in select.split(",")}}

    def put_index(self, name: str | None, body: Any, create_only: bool) -> tuple[int, Any]:
        if not isinstance(body, dict) or not name or body.get("name") != name:
            raise ServiceError(400, "InvalidRequestParameter", "The index name in the body must match the URL.")
        if not re.match(r"^[a-z0-9][a-z0-9-]{0,126}[a-z0-9]$", name) or "--" in name:
            raise ServiceError(400, "InvalidRequestParameter", f"Invalid index name '{name}': lower case letters, "
                               "digits or dashes, starting and ending with a letter or digit, 2-128 characters.")
        current = self.indexes.get(name)
        if current is not None and create_only:
            raise ServiceError(409, "ResourceNameAlreadyInUse", f"Cannot create index '{name}' because it "
                               "already exists.")
        check_definition(body, current)
        definition = {k: v for k, v in body.items() if k != "@odata.etag"}
        if current is None:
            self.indexes[name] = Index(definition)
            return 201, self.indexes[name].public()
        current.definition, current.etag = definition, current.etag + 1
        return 200, current.public()


def create_app(api_key: str, reranker: Reranker = overlap_reranker, bearer_token: str | None = None) -> FastAPI:
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    emulator = Emulator(api_key, reranker, bearer_token)
    app.state.emulator = emulator

    def answer(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
        if body is None:
            return Response(status_code=status, headers=headers)
        return JSONResponse(body, status_code=status, headers=headers)

    @app.post("/_emulator/faults")
    async def add_fault(fault: dict[str, Any]) -> dict[str, Any]:
        with emulator.lock:
            emulator.faults.append(dict(fault))
        return {"faults": len(emulator.faults)}

    @app.get("/_emulator/violations")
    async def violations() -> list[dict[str, Any]]:
        return emulator.violations

    @app.get("/_emulator/requests")
    async def requests() -> list[dict[str, Any]]:
        return emulator.requests

    @app.post("/_emulator/reset")
    async def reset() -> dict[str, Any]:
        with emulator.lock:
            emulator.faults.clear()
            emulator.requests.clear()
            emulator.violations.clear()
        return {}

    @app.api_route("/{rest:path}", methods=["GET", "POST", "PUT", "DELETE"])
    async def service(request: Request, rest: str) -> Response:
        path = "/" + rest
        route, match = next(((r, m) for r, pattern in ROUTES if (m := pattern.match(path))), (None, None))
        raw = await request.body()
        status, body, headers = _serve(emulator, request, route, match, raw)
        if route is not None:
            with emulator.lock:
                emulator.requests.append({"method": request.method, "route": route, "status": status})
                if (request.method, route) in spec.OPERATIONS and status != 401 and status != 403:
                    problems = spec.response_errors(request.method, route, status, body)
                    if problems:
                        emulator.violations.append({"kind": "response", "route": route, "status": status,
                                                    "errors": problems[:5]})
        return answer(status, body, headers)

    return app


def _error(status: int, code: str, message: str) -> tuple[int, Any, dict[str, str]]:
    return status, {"error": {"code": code, "message": message}}, {}


def _serve(emulator: Emulator, request: Request, route: str | None, match: re.Match[str] | None,
           raw: bytes) -> tuple[int, Any, dict[str, str]]:
    query = {k: v[-1] for k, v in parse_qs(request.url.query, keep_blank_values=True).items()}
    if route is None or match is None:
        return _error(404, "ResourceNotFound", f"The resource '{request.url.path}' does not exist.")
    key = request.headers.get("api-key")
    authorization = request.headers.get("authorization", "")
    if key is None and not authorization.startswith("Bearer "):
        return 401, None, {}
    token_ok = emulator.bearer_token is not None and authorization == f"Bearer {emulator.bearer_token}"
    if key != emulator.api_key and not token_ok:
        return 403, None, {}
    if query.get("api-version") != API_VERSION:
        return _error(400, "InvalidApiVersionParameter", f"Invalid or missing api-version query string parameter: "
                      f"{query.get('api-version')!r}; this emulator serves {API_VERSION}.")
    with emulator.lock:
        fault = emulator.take_fault(route)
    if fault is not None:
        headers = {"Retry-After": str(fault["retry_after"])} if "retry_after" in fault else {}
        message = "Too many requests" if fault["status"] == 429 else "Service unavailable"
        status, body, _ = _error(int(fault["status"]), "Throttled" if fault["status"] == 429 else "ServiceUnavailable",
                                 message)
        return status, body, headers
    if route == "batch" and len(raw) > MAX_BATCH_BYTES:
        return _error(413, "RequestEntityTooLarge", f"The request is {len(raw)} bytes; an index batch may hold at "
                      f"most {MAX_BATCH_BYTES} bytes.")
    body: Any = None
    if raw:
        try:
            body = json.loads(raw)
        except ValueError:
            return _error(400, "InvalidRequestParameter", "The request body is not valid JSON.")
    if (request.method, route) in spec.OPERATIONS:
        problems = spec.request_errors(request.method, route, body)
        if problems:
            with emulator.lock:
                emulator.violations.append({"kind": "request", "route": route, "errors": problems[:5]})
            return _error(400, "InvalidRequestParameter", "The request does not match the API's schema: "
                          + "; ".join(problems[:3]))
    try:
        with emulator.lock:
            status, payload = emulator.handle(request.method, route, match, query, body)
    except ServiceError as exc:
        return _error(exc.status, exc.code, exc.message)
    return status, payload, {}


def make_app() -> FastAPI:  # uvicorn factory: settings from the environment
    import os

    reranker: Callable[[str, list[str]], list[float]] = overlap_reranker
    if os.environ.get("AZURE_EMULATOR_RERANKER_URL"):
        reranker = url_reranker(os.environ["AZURE_EMULATOR_RERANKER_URL"])
    return create_app(os.environ["AZURE_EMULATOR_API_KEY"], reranker, os.environ.get("AZURE_EMULATOR_BEARER_TOKEN"))

"""An OpenAI-compatible ``POST /v1/embeddings`` server for tests: real HTTP, uvicorn in a background thread.

Vectors are deterministic (seeded by a hash of each input). A script of
actions, one per request, makes it misbehave: ``status:<code>[:<retry-after>]``,
``sleep:<seconds>`` (past the client's timeout), ``short`` (one vector too
few), ``nonnumeric``, ``ragged``, ``dupindex``, ``html`` (a 200 that is not
JSON) and ``echokey`` (a 401 quoting the caller's key, as OpenAI does). Every
request is recorded (headers, body, outcome) for assertions.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

API_KEY = "sk-stub-secret-key-9f8e7d6c5b4a"
DIM = 16


def vector_for(text: str) -> list[float]:
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    vector = np.random.default_rng(seed).normal(size=DIM)
    return (vector / np.linalg.norm(vector)).astype(np.float32).tolist()


@dataclass
class Recorded:
    headers: dict[str, str]
    body: dict[str, Any]
    action: str


@dataclass
class StubState:
    script: list[str] = field(default_factory=list)
    requests: list[Recorded] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def inputs(self) -> int:
        """Texts embedded successfully (so a cache hit shows up as an unchanged count)."""
        with self.lock:
            return sum(len(r.body["input"]) for r in self.requests if r.action == "ok")


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "invalid_request_error"}}, status_code=status,
                        headers=headers)


def make_app(state: StubState) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Response:
        body = await request.json()
        with state.lock:
            action = state.script.pop(0) if state.script else "ok"
            state.requests.append(Recorded(dict(request.headers), body, action))
        given = request.headers.get("authorization", "")
        if action == "echokey":
            return _error(401, f"Incorrect API key provided: {given.removeprefix('Bearer ')}.")
        if given != f"Bearer {API_KEY}":
            return _error(401, "Incorrect API key provided")
        if action.startswith("status:"):
            _, status, *after = action.split(":")
            return _error(int(status), f"scripted failure {status}", {"Retry-After": after[0]} if after else None)
        if action.startswith("sleep:"):
            await asyncio.sleep(float(action.split(":")[1]))
            return _error(504, "answered too late on purpose")
        if action == "html":
            return PlainTextResponse("<html>gateway says hello</html>")
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data: list[dict[str, Any]] = [{"object": "embedding", "index": i, "embedding": vector_for(t)}
                                      for i, t in enumerate(inputs)]
        if body.get("encoding_format") == "base64":  # what the openai client asks for by default
            for item in data:
                item["embedding"] = base64.b64encode(np.asarray(item["embedding"], "<f4").tobytes()).decode()
        if action == "short":
            data = data[:-1]
        elif action == "nonnumeric":
            data[0]["embedding"] = ["0.5"] * DIM
        elif action == "ragged":
            data[-1]["embedding"] = data[-1]["embedding"][:-1]
        elif action == "dupindex":
            data[-1]["index"] = 0
        data.reverse()  # clients must order by index, not by position
        return JSONResponse({"object": "list", "data": data, "model": body.get("model"),
                             "usage": {"prompt_tokens": 0, "total_tokens": 0}})

    return app


class StubServer:
    def __init__(self) -> None:
        self.state = StubState()
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}/v1"
        config = uvicorn.Config(make_app(self.state), host="127.0.0.1", port=self.port, log_level="warning",
                                lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="openai-stub", daemon=True)

    def start(self) -> StubServer:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"the OpenAI stub server did not start on port {self.port}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)

    def script(self, *actions: str) -> None:
        """Forget past requests; the next requests follow ``actions``, then succeed."""
        with self.state.lock:
            self.state.script = list(actions)
            self.state.requests.clear()

    @property
    def requests(self) -> list[Recorded]:
        with self.state.lock:
            return list(self.state.requests)

"""A small OpenAI-compatible embeddings server for tests, run as a real uvicorn process.

It follows the wire format of ``POST /v1/embeddings`` and computes
deterministic vectors from a hash of each input. Failures can be scripted
per run through ``POST /control`` (status codes with Retry-After, delays
past the client's timeout, answers with the wrong number of vectors), and
``GET /control`` reports how many requests it served.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import subprocess
import sys
import time
from typing import Any

import httpx
import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

API_KEY = "sk-test-secret-key-0123456789"
DIM = 16

app = FastAPI()
state: dict[str, Any] = {"requests": 0, "inputs": 0, "script": []}


def vector_for(text: str) -> list[float]:
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    vector = np.random.default_rng(seed).normal(size=DIM)
    return (vector / np.linalg.norm(vector)).tolist()


@app.post("/control")
async def control(body: dict[str, Any]) -> dict[str, Any]:
    state["script"] = list(body.get("script", []))
    state["requests"] = state["inputs"] = 0
    return {"ok": True}


@app.get("/control")
async def report() -> dict[str, Any]:
    return {"requests": state["requests"], "inputs": state["inputs"]}


@app.post("/v1/embeddings")
async def embeddings(request: Request) -> JSONResponse:
    state["requests"] += 1
    if request.headers.get("authorization") != f"Bearer {API_KEY}":
        return JSONResponse({"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}},
                            status_code=401)
    body = await request.json()
    inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
    action = state["script"].pop(0) if state["script"] else "ok"
    if action.startswith("status:"):
        status = int(action.split(":")[1])
        return JSONResponse({"error": {"message": f"scripted failure {status}"}}, status_code=status,
                            headers={"Retry-After": "0.05"})
    if action.startswith("sleep:"):
        await asyncio.sleep(float(action.split(":")[1]))
        return JSONResponse({"error": {"message": "answered too late on purpose"}}, status_code=504)
    state["inputs"] += len(inputs)
    data = [{"object": "embedding", "index": i, "embedding": vector_for(t)} for i, t in enumerate(inputs)]
    if action == "short":
        data = data[:-1]
    data.reverse()  # clients must order by index, not by position
    return JSONResponse({"object": "list", "data": data, "model": body.get("model"),
                         "usage": {"prompt_tokens": 0, "total_tokens": 0}})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmbeddingsServer:
    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> EmbeddingsServer:
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "tests.support.openai_embeddings_server:app", "--host", "127.0.0.1",
             "--port", str(self.port), "--log-level", "warning"], cwd=root)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{self.port}/control", timeout=1)
                return self
            except httpx.TransportError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("the test embeddings server did not start")

    def script(self, *actions: str) -> None:
        httpx.post(f"http://127.0.0.1:{self.port}/control", json={"script": list(actions)})

    def stats(self) -> dict[str, int]:
        return httpx.get(f"http://127.0.0.1:{self.port}/control").json()

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
            self.process = None

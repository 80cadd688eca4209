"""Small HTTP assertions shared by the tests that drive real kb servers (jobs across servers, restarts,
several servers over one catalog)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

from tests.support.server import ADMIN_KEY

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def ok(response: httpx.Response, status: int = 200) -> Any:
    """The response's JSON body (None when empty), after asserting its status; the body is the failure message."""
    assert response.status_code == status, response.text
    return response.json() if response.content else None


def poll_job(url: str, done: Callable[[dict[str, Any]], bool], budget: float, interval: float = 0.05) -> dict[str, Any]:
    """GET ``url`` as admin until ``done(job)``; fails with the last state seen past ``budget`` seconds."""
    deadline = time.monotonic() + budget
    while True:
        job = ok(httpx.get(url, headers=ADMIN, timeout=30))
        if done(job):
            return job
        assert time.monotonic() < deadline, f"not done within {budget} s: {job}"
        time.sleep(interval)

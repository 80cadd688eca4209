"""Cancelling ingestion and folder sync jobs over REST (a real ``kb serve`` and the real local model): the job
stops at its next commit, what it committed stays (and a later run picks up from there, writing nothing twice),
and asking to cancel a job that ended, that does not exist or without the writer role is a clear 4xx."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx

from tests.support.server import KBServer

pytest_plugins = ["tests.support.remote_pair"]  # server, http

PROJECT = "/v1/projects/DEFAULT"


def _error(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    return response.json()["error"]["code"] == code and response.json()["error"]["message"]


def _until(http: httpx.Client, path: str, done: Any, seconds: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while True:
        job = http.get(path).json()
        if done(job):
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.05)


def _knowledge_bank(http: httpx.Client, name: str) -> str:
    created = http.post(f"{PROJECT}/knowledge-banks", json={"name": name})  # the default local model
    assert created.status_code == 201, created.text
    return f"{PROJECT}/knowledge-banks/{created.json()['id']}"


def test_cancel_an_ingestion_job(server: KBServer, http: httpx.Client) -> None:
    url = _knowledge_bank(http, "cancel-ingest")
    folder = http.post(f"{PROJECT}/folders", json={"name": "rows"}).json()
    rows = "".join(json.dumps({"id": f"r{n}", "text": f"row {n}: the quick brown fox jumps over dog {n}"}) + "\n"
                   for n in range(3000))
    assert http.put(f"{PROJECT}/folders/{folder['id']}/files/rows.jsonl", content=rows.encode()).status_code == 201
    started = http.post(f"{url}/ingest-jobs", json={"folder": "rows", "path": "/rows.jsonl", "id_column": "id",
                                                     "batch_rows": 20, "commit_every": 20})
    assert started.status_code == 202, started.text
    job_path = f"{PROJECT}/jobs/{started.json()['id']}"
    _until(http, job_path, lambda job: job["progress"].get("commits", 0) >= 1)

    cancel = http.post(f"{job_path}/cancel")
    assert cancel.status_code == 200, cancel.text
    assert cancel.json()["error"]["code"] == "cancelled" and "key" in cancel.json()["error"]["message"]
    job = _until(http, job_path, lambda job: job["state"] != "running", seconds=60)
    assert job["state"] == "cancelled", job
    written = job["progress"]["chunks_written"]
    assert 0 < written < 3000 and http.get(f"{url}/count").json()["count"] == written  # its commits stay

    again = http.post(f"{job_path}/cancel")  # cancelling twice is harmless
    assert again.status_code == 200 and again.json()["state"] == "cancelled"
    _error(http.post(f"{PROJECT}/jobs/nope/cancel"), 404, "not_found")
    reader = server.keys().create("cancel-reader", roles={"DEFAULT": "reader"})
    _error(httpx.post(f"{server.url}{job_path}/cancel", headers={"Authorization": f"Bearer {reader}"}), 403,
           "forbidden")

    small = http.put(f"{PROJECT}/folders/{folder['id']}/files/one.jsonl", content=b'{"id": "x", "text": "one"}\n')
    assert small.status_code == 201
    finished = http.post(f"{url}/ingest-jobs", json={"folder": "rows", "path": "/one.jsonl", "id_column": "id"})
    done_path = f"{PROJECT}/jobs/{finished.json()['id']}"
    _until(http, done_path, lambda job: job["state"] in ("succeeded", "failed"))
    assert "already succeeded" in _error(http.post(f"{done_path}/cancel"), 409, "job_finished")


def test_cancel_a_sync_job_then_the_next_sync_finishes_the_folder(http: httpx.Client) -> None:
    url = _knowledge_bank(http, "cancel-sync")
    folder = http.post(f"{PROJECT}/folders", json={"name": "docs"}).json()
    for n in range(40):
        body = f"# Note {n}\n\n" + " ".join(f"paragraph {n} sentence {s} about topic {n % 7}." for s in range(60))
        put = http.put(f"{PROJECT}/folders/{folder['id']}/files/note{n:02d}.md", content=body.encode())
        assert put.status_code == 201
    started = http.post(f"{url}/sync-jobs", json={"folder_id": folder["id"], "batch_files": 2})
    assert started.status_code == 202, started.text
    job_path = f"{url}/sync-jobs/{started.json()['job_id']}"
    _until(http, job_path, lambda job: job["progress"]["commits"] >= 1)
    assert http.post(f"{job_path}/cancel").status_code == 200
    job = _until(http, job_path, lambda job: job["state"] != "running", seconds=60)
    assert job["state"] == "cancelled" and job["error"]["code"] == "cancelled", job
    assert 0 < job["progress"]["files_processed"] < 40

    # the knowledge bank is free again, and the next sync does only the files the cancelled one did not
    resumed = http.post(f"{url}/sync-jobs", json={"folder_id": folder["id"]})
    assert resumed.status_code == 202, resumed.text
    report = _until(http, f"{url}/sync-jobs/{resumed.json()['job_id']}",
                    lambda job: job["state"] in ("succeeded", "failed"))
    assert report["state"] == "succeeded", report
    assert report["progress"]["files_processed"] == 40 - job["progress"]["files_processed"]
    documents = http.get(f"{url}/documents", params={"limit": 1000}).json()["documents"]
    assert sorted({d["metadata"]["KB_SOURCE"] for d in documents}) == [f"/note{n:02d}.md" for n in range(40)]
    assert len(documents) == len({d["id"] for d in documents}) == sum(  # every chunk once, none twice
        chunks for chunks in {d["metadata"]["KB_SOURCE"]: d["metadata"]["KB_CHUNKS"] for d in documents}.values())

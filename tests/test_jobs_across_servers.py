"""Jobs across servers (issue 28): two ``kb serve`` processes over one PostgreSQL catalog and one Elasticsearch
node. A job started through A is polled through B; A is SIGKILLed while a folder sync runs, B takes the job over
once A's heartbeat lapses and finishes it: every chunk stored once, nothing A committed embedded again.

Heartbeats every 0.5 s and a 3 s lapse (``KB_JOB_*``), so the takeover is quick; the Elasticsearch writer
lease A may hold at the kill lapses after 30 s, which B's first commit waits out.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.support.deployment import Deployment
from tests.support.http_checks import ADMIN
from tests.support.http_checks import ok as _ok
from tests.support.http_checks import poll_job as _poll
from tests.support.kb_serve import STUB_MODEL, KBServe

FILES = 60
JOB_ENV = {"KB_JOB_HEARTBEAT_SECONDS": "0.5", "KB_JOB_LAPSE_SECONDS": "3", "KB_JOB_POLL_SECONDS": "0.3"}


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    running = Deployment(tmp_path_factory.mktemp("jobs-across-servers"), server_env=JOB_ENV)
    try:
        yield running.start()
    finally:
        running.stop()


def _project(server: KBServe) -> str:
    return f"{server.url}/v1/projects/DEFAULT"



def _new_kb(server: KBServe, name: str) -> str:
    return _ok(httpx.post(f"{_project(server)}/knowledge-banks", headers=ADMIN, timeout=60, json={
        "name": name, "embedding_llm_id": STUB_MODEL, "vector_store_type": "ELASTICSEARCH",
        "settings": {"connection": "es"}}), 201)["id"]


def _new_folder(server: KBServe, name: str, files: dict[str, bytes]) -> str:
    folder = _ok(httpx.post(f"{_project(server)}/folders", headers=ADMIN, json={"name": name}), 201)["id"]
    with httpx.Client(headers=ADMIN, timeout=60) as http:
        for path, data in files.items():
            _ok(http.put(f"{_project(server)}/folders/{folder}/files{path}", content=data), 201)
    return folder



def _all_ids(server: KBServe, kb_id: str) -> list[str]:
    page = _ok(httpx.get(f"{_project(server)}/knowledge-banks/{kb_id}/documents", headers=ADMIN, timeout=60,
                         params={"limit": 1000}))
    return [d["id"] for d in page["documents"]]


def test_an_ingestion_job_started_on_a_is_polled_and_listed_on_b(deployment: Deployment) -> None:
    a, b = deployment.servers
    kb_id = _new_kb(a, "ingested")
    rows = "".join(json.dumps({"id": f"r{n}", "text": f"row {n} about subject {n * 3}"}) + "\n" for n in range(40))
    folder = _new_folder(a, "rows", {"/rows.jsonl": rows.encode()})
    started = _ok(httpx.post(f"{_project(a)}/knowledge-banks/{kb_id}/ingest-jobs", headers=ADMIN, timeout=60,
                             json={"folder": folder, "path": "/rows.jsonl", "id_column": "id",
                                   "batch_rows": 10, "commit_every": 10}), 202)
    done = _poll(f"{_project(b)}/jobs/{started['id']}", lambda j: j["state"] in ("succeeded", "failed"), 120)
    assert done["state"] == "succeeded", done
    assert done["report"]["rows_written"] == 40 and done["progress"]["commits"] == done["report"]["commits"] >= 4
    assert started["id"] in [j["id"] for j in _ok(httpx.get(f"{_project(b)}/jobs", headers=ADMIN))]
    assert sorted(_all_ids(b, kb_id)) == sorted(f"r{n}#0" for n in range(40))


def test_a_sync_job_survives_the_death_of_its_server(deployment: Deployment) -> None:
    a, b = deployment.servers
    kb_id = _new_kb(a, "synced")
    files = {f"/notes/n{i:03d}.txt": f"Note {i}: the valve V-{i * 13} is checked every {i + 2} days.".encode()
             for i in range(FILES)}
    folder = _new_folder(a, "notes", files)
    deployment.embeddings.script()  # resets the stub model's counters: what it embeds from here on
    started = _ok(httpx.post(f"{_project(a)}/knowledge-banks/{kb_id}/sync-jobs", headers=ADMIN, timeout=60,
                             json={"folder_id": folder, "batch_files": 1}), 202)
    assert started["state"] == "running"
    job_on_b = f"{_project(b)}/knowledge-banks/{kb_id}/sync-jobs/{started['job_id']}"

    # polled through B while A runs it; then A dies mid-job, without a word to anyone
    running = _poll(job_on_b, lambda j: j["progress"]["commits"] >= 5 or j["state"] != "running", 180)
    assert running["state"] == "running" and running["attempts"] == 1, running
    assert a.process is not None
    os.killpg(a.process.pid, signal.SIGKILL)
    a.process.wait()
    a.process = None
    killed_at = time.monotonic()
    committed_by_a = _ok(httpx.get(f"{_project(b)}/knowledge-banks/{kb_id}/count", headers=ADMIN,
                                   timeout=60))["count"]
    assert 5 <= committed_by_a < FILES, committed_by_a

    taken = _poll(job_on_b, lambda j: j["attempts"] == 2 or j["state"] != "running", 60)
    taken_after = time.monotonic() - killed_at
    done = _poll(job_on_b, lambda j: j["state"] != "running", 240)
    print(f"A killed after {committed_by_a} of {FILES} files committed; B took the job over {taken_after:.1f} s "
          f"later (lapse 3 s) and finished it {time.monotonic() - killed_at:.1f} s after the kill")
    assert taken["attempts"] == 2, taken
    assert done["state"] == "succeeded" and done["attempts"] == 2, done
    report = done["report"]
    # B re-embedded and wrote exactly what A had not committed; A's files were skipped, unchanged or stored
    assert report["texts_embedded"] == report["chunks_written"] == FILES - committed_by_a, report
    assert len(report["unchanged"]) + report["chunks_skipped"] == committed_by_a, report
    assert report["failed"] == [] and report["removed"] == []

    ids = _all_ids(b, kb_id)
    assert len(ids) == len(set(ids)) == FILES  # every file's one chunk, each once
    assert _ok(httpx.get(f"{_project(b)}/knowledge-banks/{kb_id}/count", headers=ADMIN))["count"] == FILES
    stored = httpx.get(f"{deployment.es.url}/multi-*/_search", timeout=30, params={"size": 0, "q": "valve"}).json()
    assert stored["hits"]["total"]["value"] == FILES  # in the index itself too (a partial generation rolled back)
    # the model saw each chunk once, and at most A's last uncommitted batch (one file) twice
    embedded = deployment.embeddings.stats()["inputs"]
    assert FILES <= embedded <= FILES + 1, embedded
    hits = _ok(httpx.post(f"{_project(b)}/knowledge-banks/{kb_id}/search", headers=ADMIN, timeout=60,
                          json={"query": "V-416", "k": 1, "search_type": "keyword"}))["results"]
    assert "V-416" in hits[0]["text"]

    # the next sync, through B, finds everything recorded: nothing to do
    again = _ok(httpx.post(f"{_project(b)}/knowledge-banks/{kb_id}/sync-jobs", headers=ADMIN, timeout=60,
                           json={"folder_id": folder, "batch_files": 1}), 202)
    second = _poll(f"{_project(b)}/knowledge-banks/{kb_id}/sync-jobs/{again['job_id']}",
                   lambda j: j["state"] != "running", 120)
    assert second["state"] == "succeeded" and len(second["report"]["unchanged"]) == FILES, second
    assert second["report"]["texts_embedded"] == 0

"""One machine, the SQLite catalog: a folder sync whose ``kb serve`` is SIGKILLed mid-job is finished by the
server started again on the same ``$KB_HOME``, once the dead one's heartbeat lapses; one stopped with SIGTERM
gives the job back at its next commit, and the next server goes on with it at once. Every chunk is stored
once and the model embeds nothing that was committed."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx
import pytest

import kb
from kb.catalog_db.jobs import JobStore
from tests.support.http_checks import ADMIN
from tests.support.http_checks import ok as _ok
from tests.support.http_checks import poll_job as _poll
from tests.support.kb_serve import KBServe, connect_stub_model
from tests.support.openai_embeddings_server import EmbeddingsServer

FILES = 80
JOB_ENV = {"KB_JOB_HEARTBEAT_SECONDS": "0.5", "KB_JOB_LAPSE_SECONDS": "2", "KB_JOB_POLL_SECONDS": "0.3"}




@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_a_sync_cut_off_by_a_stop_is_finished_by_the_restarted_server(how: str, tmp_path: Path) -> None:
    embeddings = EmbeddingsServer().start()
    home = tmp_path / "home"
    server: KBServe | None = None
    try:
        model = connect_stub_model(home, embeddings)
        server = KBServe(home, workers=1, env=JOB_ENV).start()
        project = f"{server.url}/v1/projects/DEFAULT"
        kb_id = _ok(httpx.post(f"{project}/knowledge-banks", headers=ADMIN, timeout=60,
                               json={"name": "notes", "embedding_llm_id": model}), 201)["id"]
        folder = _ok(httpx.post(f"{project}/folders", headers=ADMIN, json={"name": "notes"}), 201)["id"]
        with httpx.Client(headers=ADMIN, timeout=60) as http:
            for i in range(FILES):
                _ok(http.put(f"{project}/folders/{folder}/files/n{i:03d}.txt",
                             content=f"Note {i}: pump P-{i * 17} runs at {i + 40} litres a minute.".encode()), 201)
        embeddings.script()  # the stub model counts what it embeds from here on
        started = _ok(httpx.post(f"{project}/knowledge-banks/{kb_id}/sync-jobs", headers=ADMIN, timeout=60,
                                 json={"folder_id": folder, "batch_files": 1}), 202)
        job_url = f"{project}/knowledge-banks/{kb_id}/sync-jobs/{started['job_id']}"
        running = _poll(job_url, lambda j: j["progress"]["commits"] >= 5 or j["state"] != "running", 120)
        assert running["state"] == "running", running
        assert server.process is not None
        if how == "SIGKILL":
            os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait()
            server.process = None
        else:
            server.stop()  # SIGTERM: uvicorn drains, the job stops at its next commit and is given back
            client = kb.api_client(home=home)
            try:
                given_back = JobStore(client.catalog.database).get(started["job_id"])
            finally:
                client.close()
            assert given_back is not None and (given_back.state, given_back.owner) == ("running", None)

        server = KBServe(home, workers=1, env=JOB_ENV).start()  # the same home, a new process
        project = f"{server.url}/v1/projects/DEFAULT"
        job_url = f"{project}/knowledge-banks/{kb_id}/sync-jobs/{started['job_id']}"
        committed = _ok(httpx.get(f"{project}/knowledge-banks/{kb_id}/count", headers=ADMIN))["count"]
        assert 5 <= committed < FILES, committed
        done = _poll(job_url, lambda j: j["state"] != "running", 120)
        assert done["state"] == "succeeded" and done["attempts"] == 2, done
        report = done["report"]
        assert report["chunks_written"] == FILES - committed, report
        assert len(report["unchanged"]) + report["chunks_skipped"] == committed, report
        page = _ok(httpx.get(f"{project}/knowledge-banks/{kb_id}/documents", headers=ADMIN,
                             params={"limit": 1000}))
        ids = [d["id"] for d in page["documents"]]
        assert page["total"] == len(ids) == len(set(ids)) == FILES
        embedded = embeddings.stats()["inputs"]
        assert FILES <= embedded <= FILES + 1, embedded  # at most the kill's uncommitted file twice
        print(f"{how} after {committed} of {FILES} files committed; the restarted server finished the job "
              f"(model inputs: {embedded})")
    finally:
        if server is not None:
            server.stop()
        embeddings.stop()

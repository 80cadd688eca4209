"""Folder sync over REST (real HTTP through uvicorn): start a job, poll it, read the report; busy is 409."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import kb
from stores.base import acquire_writer_lock
from tests.support.document_files import NESTED_MARKDOWN, corrupt_pdf, manual_pdf
from tests.support.server import ADMIN_KEY, KBServer

HEADERS = {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KBServer]:
    process = KBServer(tmp_path_factory.mktemp("sync-home")).start()
    yield process
    process.stop()


def call(server: KBServer, method: str, path: str, **kwargs: object) -> httpx.Response:
    return httpx.request(method, server.url + "/v1/projects/DEFAULT" + path, headers=HEADERS, timeout=60,
                         **kwargs)  # type: ignore[arg-type]


def wait_for(server: KBServer, kb_id: str, job_id: str) -> dict:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job = call(server, "GET", f"/knowledge-banks/{kb_id}/sync-jobs/{job_id}").json()
        if job["state"] != "running":
            return job
        time.sleep(0.1)
    raise AssertionError("the sync job did not finish in 120 s")


def test_sync_job_lifecycle(server: KBServer, tmp_path: Path) -> None:
    folder = call(server, "POST", "/folders", json={"name": "manuals"}).json()["id"]
    uploads = {"/guide.pdf": manual_pdf(tmp_path / "guide.pdf").read_bytes(), "/cookbook.md": NESTED_MARKDOWN.encode(),
               "/broken.pdf": corrupt_pdf(tmp_path / "broken.pdf").read_bytes(),
               "/shell.html": b'<html><head><script src="app.js"></script></head><body><div id="app"></div>'
                              b"</body></html>"}
    for path, data in uploads.items():
        assert call(server, "PUT", f"/folders/{folder}/files{path}", content=data).status_code == 201
    kb_id = call(server, "POST", "/knowledge-banks", json={"name": "manuals-kb", "embedding_llm_id": "custom:fake6"}
                 ).json()["id"]

    started = call(server, "POST", f"/knowledge-banks/{kb_id}/sync-jobs",
                   json={"folder_id": folder, "extraction": "structured", "screenshots": True})
    assert started.status_code == 202, started.text
    job = started.json()
    assert job["state"] == "running" and job["options"]["extraction"] == "structured" and job["report"] is None
    done = wait_for(server, kb_id, job["job_id"])
    assert done["state"] == "succeeded", done
    report = done["report"]
    assert sorted(report["added"]) == ["/cookbook.md", "/guide.pdf"] and report["exit_status"] == 1
    assert [f["path"] for f in report["failed"]] == ["/broken.pdf"] and "not a readable PDF" in report["failed"][0][
        "reason"]
    assert [e["path"] for e in report["empty"]] == ["/shell.html"] and "built by JavaScript" in report["empty"][0][
        "reason"]
    assert done["progress"]["files_processed"] == done["progress"]["files_to_process"] == 4
    assert (done["progress"]["empty"], done["progress"]["failed"]) == (1, 1)
    assert report["screenshots_written"] == 5

    # the search results carry the page screenshots; the images folder was set in the settings
    hits = call(server, "POST", f"/knowledge-banks/{kb_id}/search",
                json={"query": "recessed pinhole button", "k": 1, "search_type": "keyword"}).json()["results"]
    assert hits[0]["metadata"]["KB_PAGE_START"] == 3
    (image,) = hits[0]["images"]
    assert image["path"].endswith("/page-0003.png") and image["url"]
    png = httpx.get(server.url + image["url"], headers=HEADERS)
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
    settings = call(server, "GET", f"/knowledge-banks/{kb_id}/settings").json()
    assert settings["images_folder"]

    # a second job on an unchanged folder: everything unchanged; both jobs are listed
    second = wait_for(server, kb_id, call(server, "POST", f"/knowledge-banks/{kb_id}/sync-jobs",
                                          json={"folder_id": folder, "extraction": "structured",
                                                "screenshots": True}).json()["job_id"])
    assert sorted(second["report"]["unchanged"]) == ["/cookbook.md", "/guide.pdf", "/shell.html"]
    assert second["report"]["texts_embedded"] == 0
    listed = call(server, "GET", f"/knowledge-banks/{kb_id}/sync-jobs").json()
    assert [j["job_id"] for j in listed] == [job["job_id"], second["job_id"]]


def test_busy_bad_input_and_auth(server: KBServer) -> None:
    folder = call(server, "POST", "/folders", json={"name": "notes"}).json()["id"]
    call(server, "PUT", f"/folders/{folder}/files/a.txt", content=b"alpha")
    kb_id = call(server, "POST", "/knowledge-banks", json={"name": "notes-kb", "embedding_llm_id": "custom:fake6"}
                 ).json()["id"]
    # another sync (here: this process, as `kb sync` would) holds the knowledge bank
    client = kb.api_client(home=server.home)
    lock = acquire_writer_lock(client.knowledge_bank_folder("DEFAULT", kb_id) / "sync.lock", 1.0, kb_id)
    try:
        busy = call(server, "POST", f"/knowledge-banks/{kb_id}/sync-jobs", json={"folder_id": folder})
        assert busy.status_code == 409
        assert busy.json()["error"]["code"] == "busy" and "another folder sync" in busy.json()["error"]["message"]
        assert call(server, "GET", f"/knowledge-banks/{kb_id}/sync-jobs").json() == []  # no job was created
    finally:
        lock.close()
        client.close()
    ok = call(server, "POST", f"/knowledge-banks/{kb_id}/sync-jobs", json={"folder_id": folder})
    assert wait_for(server, kb_id, ok.json()["job_id"])["report"]["added"] == ["/a.txt"]

    missing = call(server, "POST", f"/knowledge-banks/{kb_id}/sync-jobs", json={"folder_id": "nope"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    for body, words in [({"folder_id": folder, "extraction": "fancy"}, "extraction"),
                        ({"folder_id": folder, "colour": "red"}, "colour"),
                        ({"folder_id": folder, "chunk_size": 100, "chunk_overlap": 100}, "chunk_overlap"),
                        ({}, "folder_id")]:
        bad = call(server, "POST", f"/knowledge-banks/{kb_id}/sync-jobs", json=body)
        assert bad.status_code == 422 and words in bad.json()["error"]["message"], bad.text
    unknown = call(server, "GET", f"/knowledge-banks/{kb_id}/sync-jobs/0123")
    assert unknown.status_code == 404 and "sync job '0123'" in unknown.json()["error"]["message"]
    anonymous = httpx.post(f"{server.url}/v1/projects/DEFAULT/knowledge-banks/{kb_id}/sync-jobs",
                           json={"folder_id": folder})
    assert anonymous.status_code == 401


def test_a_second_job_while_one_runs_is_busy(server: KBServer, tmp_path: Path) -> None:
    folder = call(server, "POST", "/folders", json={"name": "many"}).json()["id"]
    pdf = manual_pdf(tmp_path / "m.pdf", with_scanned_page=False).read_bytes()
    for n in range(24):  # 96 pages rendered to PNG: seconds of work
        call(server, "PUT", f"/folders/{folder}/files/m{n:02d}.pdf", content=pdf)
    kb_id = call(server, "POST", "/knowledge-banks", json={"name": "many-kb", "embedding_llm_id": "custom:fake6"}
                 ).json()["id"]
    body = {"folder_id": folder, "screenshots": True, "batch_files": 4}
    first = call(server, "POST", f"/knowledge-banks/{kb_id}/sync-jobs", json=body).json()
    second = call(server, "POST", f"/knowledge-banks/{kb_id}/sync-jobs", json=body)
    running = call(server, "GET", f"/knowledge-banks/{kb_id}/sync-jobs/{first['job_id']}").json()
    assert second.status_code == 409 and second.json()["error"]["code"] == "busy"
    assert running["state"] == "running" and running["progress"]["files_processed"] < 24
    done = wait_for(server, kb_id, first["job_id"])
    assert len(done["report"]["added"]) == 24 and done["report"]["commits"] == 6
    assert [j["job_id"] for j in call(server, "GET", f"/knowledge-banks/{kb_id}/sync-jobs").json()] == [
        first["job_id"]]
    again = call(server, "POST", f"/knowledge-banks/{kb_id}/sync-jobs", json=body)  # free again
    assert wait_for(server, kb_id, again.json()["job_id"])["report"]["unchanged"] == [
        f"/m{n:02d}.pdf" for n in range(24)]

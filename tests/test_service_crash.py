"""The REST service killed (SIGKILL) during an ingestion: after a restart the KB holds whole commits only."""

from __future__ import annotations

import json
import random
import signal
import threading
import time
from pathlib import Path

import httpx

import kb
from tests.support.server import ADMIN_KEY, KBServer

ROWS, COMMIT = 20_000, 1000


def _body(version: int) -> bytes:
    return "\n".join(json.dumps({"id": f"r{i}", "text": f"row {i} version {version} " + "words " * 20,
                                 "version": version}) for i in range(ROWS)).encode()


def test_service_killed_during_ingestion_keeps_whole_commits(tmp_path: Path) -> None:
    home = tmp_path / "home"
    rng = random.Random(7)
    kills, partial = 0, []
    kb_id = None
    for version in range(1, 4):
        server = KBServer(home).start()
        admin = kb.api_client(url=server.url, api_key=ADMIN_KEY)
        if kb_id is None:
            kb_id = admin.get_default_project().create_knowledge_bank("crashy", embedding_llm_id="custom:fake6").id
        url = (f"{server.url}/v1/projects/DEFAULT/knowledge-banks/{kb_id}/ingest?format=jsonl&id_column=id"
               f"&chunk_size=0&commit_every={COMMIT}")
        thread = threading.Thread(target=_post_ignoring_errors, args=(url, _body(version)))
        thread.start()
        # kill after the first commit of this version has landed, at a random moment of the ones that follow: a
        # fixed delay killed before any commit on a busy machine, and the test saw no cut ingestion ([0, 0, 0])
        _wait_for_a_commit(home, kb_id, version)
        time.sleep(rng.uniform(0.0, 0.5))
        assert server.process is not None
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(30)
        server.process = None
        thread.join()
        kills += 1
        core = kb.api_client(home=home).get_default_project().get_knowledge_bank(kb_id).as_core_knowledge_bank()
        landed = core.count({"version": version})
        assert landed % COMMIT == 0, landed  # each commit of COMMIT rows landed whole or not at all
        ids = core.driver.ids_where(None)
        assert len(ids) == len(set(ids)) and len(ids) <= ROWS  # replaced, never duplicated
        partial.append(landed)
    assert any(0 < n < ROWS for n in partial), partial  # at least one kill really cut an ingestion short
    server = KBServer(home).start()
    try:
        url = (f"{server.url}/v1/projects/DEFAULT/knowledge-banks/{kb_id}/ingest?format=jsonl&id_column=id"
               f"&chunk_size=0&commit_every={COMMIT}")
        report = httpx.post(url, content=_body(3), headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                            timeout=300).json()
        assert report["rows_rejected"] == 0 and report["chunks_skipped"] == partial[-1]
        core = kb.api_client(home=home).get_default_project().get_knowledge_bank(kb_id).as_core_knowledge_bank()
        assert core.count() == ROWS and core.count({"version": 3}) == ROWS
        print(f"service kills during ingestion: {kills}; rows of the cut version committed: {partial}")
    finally:
        server.stop()


def _wait_for_a_commit(home: Path, kb_id: str, version: int, timeout: float = 180.0) -> None:
    client = kb.api_client(home=home)
    try:
        core = client.get_default_project().get_knowledge_bank(kb_id).as_core_knowledge_bank()
        deadline = time.monotonic() + timeout
        while core.count({"version": version}) == 0:
            assert time.monotonic() < deadline, f"no commit of version {version} within {timeout:.0f} s"
            time.sleep(0.05)
    finally:
        client.close()


def _post_ignoring_errors(url: str, body: bytes) -> None:
    try:
        httpx.post(url, content=body, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=120)
    except httpx.HTTPError:
        pass  # the server dies under the request on purpose

"""Isolation on every route, secrets kept out of responses and logs, readers in other processes during commits."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import kb
from stores.base import StoreContext
from stores.faiss.store import FaissStore
from tests.support.crash_worker import write_version
from tests.support.server import ADMIN_KEY, KBServer

ROOT = Path(__file__).resolve().parent.parent
SECRET = "sk-very-secret-connection-key-123456"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KBServer]:
    home = tmp_path_factory.mktemp("security-home")
    embedded = kb.api_client(home=home)
    embedded.create_project("SECRET")
    embedded.create_connection("private", "openai-compatible",
                               {"base_url": "http://127.0.0.1:9/v1", "api_key": SECRET, "models": ["m"]})
    embedded.close()
    process = KBServer(home).start()
    admin = kb.api_client(url=process.url, api_key=ADMIN_KEY)
    project = admin.get_project("SECRET")
    handle = project.create_knowledge_bank("hidden", embedding_llm_id="custom:fake6",
                                           settings={"search": {"reranker": {"type": "http", "url": "http://127.0.0.1:9/r",
                                                                              "connection": "private"}}})
    handle.as_core_knowledge_bank().as_langchain_vectorstore().add_texts(["classified"], ids=["c"])
    folder = project.create_managed_folder("vault")
    folder.upload_data("/plans.txt", b"plans")
    process.ids = {"kb_id": handle.id, "folder_id": folder.id, "project_key": "SECRET", "path": "plans.txt",
                   "llm_id": "custom:fake6", "job_id": "any-job"}  # type: ignore[attr-defined]
    yield process
    process.stop()


def test_a_key_of_another_project_gets_403_on_every_route(server: KBServer) -> None:
    outsider = server.keys().create("outsider", roles={"DEFAULT": "admin"})
    spec = httpx.get(f"{server.url}/openapi.json").json()
    walked = 0
    for path, methods in spec["paths"].items():
        if "{project_key}" not in path:
            continue
        url = server.url + re.sub(r"\{(\w+)(:path)?\}", lambda m: server.ids[m.group(1)], path)  # type: ignore[attr-defined]
        for method in methods:
            response = httpx.request(method.upper(), url, headers={"Authorization": f"Bearer {outsider}"},
                                     json={} if method in ("post", "put") else None)
            assert response.status_code == 403, (method, path, response.status_code, response.text)
            assert "classified" not in response.text and "hidden" not in response.text
            assert "plans" not in response.text.replace("plans.txt", "")
            walked += 1
    listed = httpx.get(f"{server.url}/v1/projects", headers={"Authorization": f"Bearer {outsider}"}).json()
    assert [p["key"] for p in listed] == ["DEFAULT"]
    assert walked >= 20


def test_secrets_never_leave_the_server(server: KBServer) -> None:
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    base = f"{server.url}/v1/projects/SECRET/knowledge-banks/{server.ids['kb_id']}"  # type: ignore[attr-defined]
    settings = httpx.get(f"{base}/settings", headers=headers)
    failing = httpx.post(f"{base}/search", json={"query": "x", "search_type": "semantic_hybrid"}, headers=headers)
    embed = httpx.post(f"{server.url}/v1/embeddings", json={"model": "openai:private:m", "input": "x"},
                       headers=headers, timeout=60)
    assert failing.status_code >= 400 and embed.status_code >= 400  # nothing listens on port 9
    for response in (settings, failing, embed):
        assert SECRET not in response.text
    assert ADMIN_KEY not in server.log.read_text() and SECRET not in server.log.read_text()
    stored = b"".join(p.read_bytes() for p in server.home.glob("catalog.sqlite*"))  # the keys: in the catalog
    assert ADMIN_KEY.split("_", 2)[2].encode() not in stored  # keys are stored hashed


def test_readers_in_another_process_see_only_whole_commits(tmp_path: Path) -> None:
    folder = tmp_path / "kb"
    store = FaissStore(StoreContext("crash", folder))
    write_version(store, 0)
    reader = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from pathlib import Path
        from stores.base import StoreContext
        from stores.faiss.store import FaissStore
        from tests.support.crash_worker import version_records
        store = FaissStore(StoreContext("crash", Path({str(folder)!r})))
        reads = 0
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            records = store.get([f"d{{i}}" for i in range(32)])
            versions = {{r.metadata["v"] for r in records}}
            assert len(versions) == 1, versions
            v = versions.pop()
            assert len(records) == len(version_records(v)), (v, len(records))
            reads += 1
        print(reads)
    """)
    process = subprocess.Popen([sys.executable, "-c", reader], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    for version in range(1, 200):
        write_version(store, version)
        if process.poll() is not None:
            break
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err[-2000:]
    assert int(out.strip()) > 10

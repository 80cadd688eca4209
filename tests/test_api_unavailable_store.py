"""A store that is down fails its own knowledge bank's requests fast with 503; other KBs keep serving."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

import kb
from tests.support.chroma_server import ChromaServer
from tests.support.server import ADMIN_KEY, KBServer


def test_down_store_gives_503_and_other_knowledge_banks_keep_serving(tmp_path: Path) -> None:
    chroma = ChromaServer(tmp_path / "chroma-data").start()
    home = tmp_path / "home"
    server = KBServer(home)
    try:
        server.start()
        admin = kb.api_client(url=server.url, api_key=ADMIN_KEY)
        embedded = kb.api_client(home=home)  # connections are configured on the server's host
        embedded.create_connection("chroma", "chroma", {"url": chroma.url})
        embedded.close()
        project = admin.get_default_project()
        remote_kb = project.create_knowledge_bank("on-chroma", embedding_llm_id="custom:fake6",
                                                  vector_store_type="CHROMA", settings={"connection": "chroma"})
        local_kb = project.create_knowledge_bank("on-faiss", embedding_llm_id="custom:fake6")
        for handle in (remote_kb, local_kb):
            handle.as_core_knowledge_bank().as_langchain_vectorstore().add_texts(["hello there"], ids=["h"])
        chroma.stop()
        headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
        started = time.monotonic()
        down = httpx.post(f"{server.url}/v1/projects/DEFAULT/knowledge-banks/{remote_kb.id}/search",
                          json={"query": "hello"}, headers=headers, timeout=60)
        assert down.status_code == 503, down.text
        assert time.monotonic() - started < 10  # fails fast
        assert down.json()["error"]["code"] == "store_unavailable" and chroma.url in down.json()["error"]["message"]
        up = httpx.post(f"{server.url}/v1/projects/DEFAULT/knowledge-banks/{local_kb.id}/search",
                        json={"query": "hello"}, headers=headers, timeout=60)
        assert up.status_code == 200 and up.json()["results"][0]["id"] == "h"
    finally:
        server.stop()
        chroma.stop()

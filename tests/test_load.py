"""A bounded load test over REST (loopback, fixed duration): concurrent searches and writes, zero errors."""

from __future__ import annotations

from pathlib import Path

import kb
from benchmarks.load import run_load
from tests.support.server import ADMIN_KEY, KBServer


def test_concurrent_search_and_ingestion_hold_without_errors(tmp_path: Path) -> None:
    server = KBServer(tmp_path / "home").start()
    try:
        admin = kb.api_client(url=server.url, api_key=ADMIN_KEY)
        handle = admin.get_default_project().create_knowledge_bank("load", embedding_llm_id="custom:fake6")
        handle.as_core_knowledge_bank().as_langchain_vectorstore().add_texts([f"seed {i}" for i in range(50)])
        figures = run_load(server.url, ADMIN_KEY, handle.id, clients=6, seconds=6, dim=6)
        assert figures["errors"] == 0 and figures["closed_connections"] == 0, figures["first_errors"]
        assert figures["search"]["requests"] > 20 and figures["write"]["requests"] > 2
        written = figures["write"]["requests"] * 20
        assert handle.as_core_knowledge_bank().count() == 50 + written  # every acknowledged write is there
        print(f"load held: {figures}")
    finally:
        server.stop()

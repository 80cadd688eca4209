"""An Azure AI Search knowledge bank over the REST API (real HTTP, a real kb service process, the emulator as
the service) and through ``kb export``/``kb import`` (FAISS -> Azure AI Search -> FAISS, identical results)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np

import kb
from api.cli_snapshot import main_export, main_import
from kb.custom_models import LangChainEmbeddingModel
from stores.azure_search.store import index_name
from tests.support.azure_search_emulator import AzureSearchEmulator
from tests.support.server import ADMIN_KEY, KBServer
from tests.test_snapshot import RefusingEmbeddings, _search_all
from writers.snapshot import export_knowledge_bank, import_knowledge_bank

TEXTS = ["espresso coffee crema", "coffee beans roasted slowly", "marathon runners train daily",
         "solar panels make power", "how coffee beans are roasted: slowly, in a drum"]


def _azure_connection(emulator: AzureSearchEmulator) -> dict[str, object]:
    return {"endpoint": emulator.url, "api_key": emulator.api_key, "index_prefix": "api-",
            "api_version": "2024-07-01", "retry_total": 1, "retry_backoff_factor": 0.05}


def test_azure_knowledge_bank_over_rest(tmp_path: Path) -> None:
    emulator = AzureSearchEmulator(tmp_path / "emulator").start()
    home = tmp_path / "home"
    server = KBServer(home)
    try:
        server.start()
        embedded = kb.api_client(home=home)  # connections are configured on the server's host
        embedded.create_connection("az", "azure-ai-search", _azure_connection(emulator))
        embedded.close()
        project = kb.api_client(url=server.url, api_key=ADMIN_KEY).get_default_project()
        on_azure = project.create_knowledge_bank("on-azure", embedding_llm_id="custom:fake6",
                                                 vector_store_type="AZURE_AI_SEARCH", settings={"connection": "az"})
        on_faiss = project.create_knowledge_bank("on-faiss", embedding_llm_id="custom:fake6")
        headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
        base = f"{server.url}/v1/projects/DEFAULT/knowledge-banks/{on_azure.id}"
        docs = [{"id": f"t{i}", "text": t, "metadata": {"n": i, "kind": "drink" if "coffee" in t else "other"}}
                for i, t in enumerate(TEXTS)]
        assert httpx.post(f"{base}/documents", json={"documents": docs}, headers=headers).status_code == 200

        def search(**body: object) -> httpx.Response:
            return httpx.post(f"{base}/search", json=body, headers=headers, timeout=60)

        for search_type in ("similarity", "mmr", "keyword", "hybrid", "semantic_hybrid"):
            answer = search(query="coffee beans", k=2, search_type=search_type)
            assert answer.status_code == 200 and len(answer.json()["results"]) == 2, (search_type, answer.text)
        hybrid = search(query="roasted coffee", k=5, search_type="hybrid", filter={"kind": "drink"}).json()
        assert {r["id"] for r in hybrid["results"]} == {"t0", "t1", "t4"}
        semantic = search(query="how are coffee beans roasted", k=2, search_type="semantic_hybrid").json()
        assert semantic["results"][0]["id"] == "t4"
        assert semantic["results"][0]["metadata"]["KB_SEMANTIC_CAPTIONS"][0]["highlights"]
        too_big = search(query="x", filter={"n": 2**60})
        assert too_big.status_code == 422 and "2**53" in too_big.json()["error"]["message"]
        deleted = httpx.post(f"{base}/documents/delete", json={"filter": {"n": {"$gte": 3}}}, headers=headers)
        assert deleted.json() == {"deleted": 2}
        assert httpx.get(f"{base}/count", headers=headers).json() == {"count": 3}
        doomed = project.create_knowledge_bank("doomed", embedding_llm_id="custom:fake6",
                                               vector_store_type="AZURE_AI_SEARCH", settings={"connection": "az"})
        assert index_name("api-", doomed.id) in _indexes(emulator)
        assert httpx.delete(f"{server.url}/v1/projects/DEFAULT/knowledge-banks/{doomed.id}",
                            headers=headers).status_code in (200, 204)
        assert index_name("api-", doomed.id) not in _indexes(emulator)  # the index goes with the knowledge bank
        assert emulator.violations() == []

        on_faiss.as_core_knowledge_bank().as_langchain_vectorstore().add_texts(["hello there"], ids=["h"])
        emulator.stop()  # the service goes away: that knowledge bank answers 503, the others keep serving
        down = search(query="coffee")
        assert down.status_code == 503, down.text
        assert down.json()["error"]["code"] == "store_unavailable" and emulator.url in down.json()["error"]["message"]
        up = httpx.post(f"{server.url}/v1/projects/DEFAULT/knowledge-banks/{on_faiss.id}/search",
                        json={"query": "hello"}, headers=headers, timeout=60)
        assert up.status_code == 200 and up.json()["results"][0]["id"] == "h"
    finally:
        server.stop()
        emulator.stop()


def _indexes(emulator: AzureSearchEmulator) -> set[str]:
    answer = httpx.get(f"{emulator.url}/indexes", params={"api-version": "2024-07-01"},
                       headers={"api-key": emulator.api_key})
    return {i["name"] for i in answer.json()["value"]}


def test_export_import_faiss_azure_faiss(tmp_path: Path) -> None:
    emulator = AzureSearchEmulator(tmp_path / "emulator").start()
    try:
        client = kb.api_client(home=tmp_path / "home")
        client.register_embedding_model(LangChainEmbeddingModel("refusing", RefusingEmbeddings()))
        client.create_connection("az", "azure-ai-search", _azure_connection(emulator))
        project = client.get_default_project()
        source = project.create_knowledge_bank("source", embedding_llm_id="custom:refusing",
                                               settings={"metadata_schema": {"n": "int", "tag": "string"}})
        core = source.as_core_knowledge_bank()
        rng = np.random.default_rng(0)
        vectors = rng.normal(size=(250, 8)).astype(np.float32)
        core.write_texts([f"text {i}" for i in range(250)], [{"n": i, "tag": "ab"[i % 2]} for i in range(250)],
                         [f"d{i}" for i in range(250)], vectors=vectors)
        queries = [rng.normal(size=8).astype(np.float32) for _ in range(10)]
        expected = _search_all(core, queries)
        export_knowledge_bank(core, tmp_path / "a.parquet", progress=False)
        on_azure = import_knowledge_bank(project, tmp_path / "a.parquet", "on-azure", "AZURE_AI_SEARCH",
                                         {"connection": "az"}, progress=False)
        azure_core = on_azure.as_core_knowledge_bank()
        assert azure_core.count() == 250 and azure_core.count({"tag": "a"}) == 125
        assert _search_all(azure_core, queries) == expected
        filtered = [[r.id for r in azure_core.search(vector=q.tolist(), k=5, filter={"n": {"$lt": 100}})]
                    for q in queries]
        assert filtered == [[r.id for r in core.search(vector=q.tolist(), k=5, filter={"n": {"$lt": 100}})]
                            for q in queries]
        export_knowledge_bank(azure_core, tmp_path / "b.parquet", progress=False)
        back = import_knowledge_bank(project, tmp_path / "b.parquet", "back", "FAISS", progress=False)
        back_core = back.as_core_knowledge_bank()
        assert _search_all(back_core, queries) == expected
        assert back_core.get_documents(["d7"])[0].metadata == {"n": 7, "tag": "b"}
        assert json.dumps(back.get_settings().get_metadata_schema()) == json.dumps({"n": "int", "tag": "string"})
        assert emulator.violations() == []
        client.close()
    finally:
        emulator.stop()


def test_kb_export_and_kb_import_commands_through_azure(tmp_path: Path) -> None:
    emulator = AzureSearchEmulator(tmp_path / "emulator").start()
    home = tmp_path / "home"
    try:
        client = kb.api_client(home=home)
        client.create_connection("az", "azure-ai-search", _azure_connection(emulator))
        core = client.get_default_project().create_knowledge_bank("cli").as_core_knowledge_bank()
        rng = np.random.default_rng(1)
        vectors = rng.normal(size=(40, 384)).astype(np.float32)
        core.write_texts([f"t{i}" for i in range(40)], [{"i": i} for i in range(40)], [f"d{i}" for i in range(40)],
                         vectors=vectors)
        queries = [rng.normal(size=384).astype(np.float32) for _ in range(5)]
        expected = _search_all(core, queries)
        client.close()

        def names() -> dict[str, str]:
            listing = kb.api_client(home=home).get_default_project().list_knowledge_banks()
            return {item.name: item.to_knowledge_bank().id for item in listing}

        assert main_export([str(tmp_path / "a.parquet"), "--kb", core.id, "--home", str(home)]) == 0
        assert main_import([str(tmp_path / "a.parquet"), "--name", "on-azure", "--store", "AZURE_AI_SEARCH",
                            "--connection", "az", "--home", str(home)]) == 0
        assert main_export([str(tmp_path / "b.parquet"), "--kb", names()["on-azure"], "--home", str(home)]) == 0
        assert main_import([str(tmp_path / "b.parquet"), "--name", "back", "--store", "FAISS",
                            "--home", str(home)]) == 0
        again = kb.api_client(home=home).get_default_project()
        on_azure = again.get_knowledge_bank(names()["on-azure"]).as_core_knowledge_bank()
        back = again.get_knowledge_bank(names()["back"]).as_core_knowledge_bank()
        assert on_azure.driver.store_type == "AZURE_AI_SEARCH" and back.driver.store_type == "FAISS"
        assert _search_all(on_azure, queries) == expected
        assert _search_all(back, queries) == expected
        assert emulator.violations() == []
    finally:
        emulator.stop()

"""``GET /metrics``: Prometheus figures of the service, protected by the API keys, merged across workers."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.kb_serve import KBServe, connect_stub_model
from tests.support.openai_embeddings_server import EmbeddingsServer
from tests.support.server import ADMIN_KEY, KBServer

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
SEARCH_ROUTE = "/v1/projects/{project_key}/knowledge-banks/{kb_id}/search"


def samples(url: str) -> dict[tuple[str, frozenset], float]:
    response = httpx.get(f"{url}/metrics", headers=ADMIN, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    out: dict[tuple[str, frozenset], float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            out[key] = out.get(key, 0.0) + sample.value
    return out


def value(figures: dict, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, got), v in figures.items() if n == name and wanted <= got)


@pytest.fixture(scope="module")
def embeddings() -> Iterator[EmbeddingsServer]:
    server = EmbeddingsServer().start()
    yield server
    server.stop()


def _exercise(url: str, model: str) -> str:
    """One knowledge bank, a commit, searches of every type, a repeated query, an error; returns its url."""
    created = httpx.post(f"{url}/v1/projects/DEFAULT/knowledge-banks", headers=ADMIN,
                         json={"name": "metered", "embedding_llm_id": model}, timeout=30)
    assert created.status_code == 201, created.text
    kb_url = f"{url}/v1/projects/DEFAULT/knowledge-banks/{created.json()['id']}"
    docs = [{"id": f"d{i}", "text": f"document {i} about foxes and hounds", "metadata": {"n": i}} for i in range(5)]
    assert httpx.post(f"{kb_url}/documents", headers=ADMIN, json={"documents": docs}, timeout=30).status_code == 200
    for search_type in ("similarity", "mmr", "keyword", "hybrid", "similarity"):
        response = httpx.post(f"{kb_url}/search", headers=ADMIN, timeout=30,
                              json={"query": "foxes", "k": 2, "search_type": search_type})
        assert response.status_code == 200, response.text
    assert httpx.post(f"{kb_url}/search", headers=ADMIN, json={"query": "x", "k": 0}).status_code == 422
    return kb_url


def test_metrics_count_requests_searches_embeddings_commits_and_documents(tmp_path: Path,
                                                                           embeddings: EmbeddingsServer) -> None:
    server = KBServer(tmp_path / "home")
    model = connect_stub_model(server.home, embeddings)
    server.start()
    try:
        assert httpx.get(f"{server.url}/metrics").status_code == 401
        reader = server.keys().create("reader", roles={"DEFAULT": "reader"})
        forbidden = httpx.get(f"{server.url}/metrics", headers={"Authorization": f"Bearer {reader}"})
        assert forbidden.status_code == 403 and forbidden.json()["error"]["code"] == "forbidden"
        kb_url = _exercise(server.url, model)
        figures = samples(server.url)
        assert value(figures, "kb_http_requests_total", route=SEARCH_ROUTE, status="200") == 5
        assert value(figures, "kb_http_requests_total", route=SEARCH_ROUTE, status="422") == 1
        assert value(figures, "kb_http_request_duration_seconds_count", route=SEARCH_ROUTE) == 6
        for search_type, expected in (("similarity", 2), ("mmr", 1), ("keyword", 1), ("hybrid", 1)):
            assert value(figures, "kb_searches_total", search_type=search_type, store="FAISS") == expected
        # 5 documents and 1 query text went to the model; the 3 repeats of "foxes" were cache hits
        assert value(figures, "kb_embedding_texts_total", model=model, cache="miss") == 6
        assert value(figures, "kb_embedding_texts_total", model=model, cache="hit") == 3
        assert value(figures, "kb_embedding_model_calls_total", model=model) == 2
        assert value(figures, "kb_commit_duration_seconds_count", store="FAISS", outcome="ok") == 1
        assert value(figures, "kb_documents", kb_id=kb_url.rsplit("/", 1)[1], store="FAISS") == 5
        assert value(figures, "kb_process_resident_memory_bytes") > 50e6
    finally:
        server.stop()


def test_metrics_merge_every_worker_of_kb_serve_and_start_clean(tmp_path: Path, embeddings: EmbeddingsServer) -> None:
    home = tmp_path / "home"
    model = connect_stub_model(home, embeddings)
    serve = KBServe(home, workers=2).start()
    try:
        folder = home / "run" / f"metrics-{serve.port}"
        assert folder.is_dir()
        kb_url = _exercise(serve.url, model)
        for _ in range(40):  # keep-alive-free requests land on both workers
            assert httpx.post(f"{kb_url}/search", headers=ADMIN, json={"query": "hounds", "k": 1}).status_code == 200
        figures = samples(serve.url)
        assert value(figures, "kb_http_requests_total", route=SEARCH_ROUTE, status="200") == 45
        assert value(figures, "kb_searches_total", search_type="similarity") == 42
        pids = {dict(labels).get("pid") for (name, labels) in figures if name == "kb_process_resident_memory_bytes"}
        assert len(pids) == 2, pids  # both workers answered, and each reports its own memory
        assert {f.name.rsplit("_", 1)[0] for f in folder.glob("*.db")} >= {"counter", "histogram"}
    finally:
        serve.stop()
    # a restart empties the folder: counters start again from zero
    stale = folder / "counter_999999.db"
    stale.write_bytes(b"left over")
    restarted = KBServe(home, workers=1)
    restarted.port = serve.port
    restarted.url = serve.url
    restarted.start()
    try:
        assert not stale.exists()
        figures = samples(restarted.url)
        assert value(figures, "kb_http_requests_total", route=SEARCH_ROUTE) == 0
        assert os.listdir(folder)
    finally:
        restarted.stop()

"""Embedding models: the real local model, an OpenAI-compatible endpoint over real HTTP, and the cache."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import kb
from kb.embedding_cache import CachedEmbedder, EmbeddingCache
from kb.embeddings import LOCAL_MINILM_ID, OpenAICompatibleModel, build_model
from tests.support.openai_embeddings_server import API_KEY, DIM, EmbeddingsServer, vector_for


@pytest.fixture(scope="module")
def server() -> Iterator[EmbeddingsServer]:
    process = EmbeddingsServer().start()
    yield process
    process.stop()


def _model(server: EmbeddingsServer, **kwargs: object) -> OpenAICompatibleModel:
    options = {"batch_size": 4, "timeout": 2.0, "max_retries": 2, **kwargs}
    return OpenAICompatibleModel("openai:test:emb", server.url, API_KEY, "emb", **options)  # type: ignore[arg-type]


@pytest.mark.slow
def test_local_model_is_real_and_offline() -> None:
    model = build_model(LOCAL_MINILM_ID, {})
    vectors = model.embed(["A cat sits on the mat.", "A kitten rests on a rug.", "Stock markets fell sharply."])
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.2


def test_openai_compatible_batches_and_orders(server: EmbeddingsServer) -> None:
    server.script()
    texts = [f"text {i}" for i in range(10)]
    vectors = _model(server).embed(texts)
    assert vectors.shape == (10, DIM)
    assert np.allclose(vectors, np.array([vector_for(t) for t in texts]), atol=1e-6)
    assert server.stats()["requests"] == 3  # batches of 4, 4, 2


def test_openai_compatible_retries_then_succeeds(server: EmbeddingsServer) -> None:
    server.script("status:429", "status:503")
    assert _model(server).embed(["x"]).shape == (1, DIM)
    assert server.stats()["requests"] == 3


def test_openai_compatible_gives_up_with_a_clear_error_without_the_key(server: EmbeddingsServer) -> None:
    server.script("status:500", "status:500", "status:500")
    with pytest.raises(kb.EmbeddingError) as info:
        _model(server).embed(["x"])
    message = str(info.value)
    assert "HTTP 500" in message and "openai:test:emb" in message and server.url in message
    assert API_KEY not in message


def test_openai_compatible_wrong_key_is_not_retried(server: EmbeddingsServer) -> None:
    server.script()
    model = OpenAICompatibleModel("openai:test:emb", server.url, "sk-wrong", "emb", max_retries=3)
    with pytest.raises(kb.EmbeddingError, match="HTTP 401.*Incorrect API key"):
        model.embed(["x"])
    assert server.stats()["requests"] == 1


def test_openai_compatible_timeout_and_malformed_answers(server: EmbeddingsServer) -> None:
    server.script("sleep:1.5", "sleep:1.5")
    with pytest.raises(kb.EmbeddingError, match="timed out"):
        _model(server, timeout=0.5, max_retries=1).embed(["x"])
    server.script("short")
    with pytest.raises(kb.EmbeddingError, match="1 embeddings for 2 inputs"):
        _model(server, max_retries=0).embed(["a", "b"])


def test_connection_makes_the_model_usable_in_a_knowledge_bank(server: EmbeddingsServer, tmp_path: Path) -> None:
    server.script()
    client = kb.api_client(home=tmp_path / "home")
    client.create_connection("myopenai", "openai-compatible", {"base_url": server.url, "api_key": API_KEY,
                                                                "models": ["emb"], "batch_size": 8})
    project = client.get_default_project()
    assert "openai:myopenai:emb" in [llm.id for llm in project.list_llms()]
    assert API_KEY not in str(client.list_connections())
    core = project.create_knowledge_bank("remote-emb", embedding_llm_id="openai:myopenai:emb").as_core_knowledge_bank()
    store = core.as_langchain_vectorstore()
    store.add_texts([f"doc {i}" for i in range(5)], ids=[str(i) for i in range(5)])
    assert store.similarity_search("doc 3", k=1)[0].id == "3"
    inputs = server.stats()["inputs"]
    store.add_texts([f"doc {i}" for i in range(5)], ids=[str(i) for i in range(5)])  # cached: nothing sent
    store.similarity_search("doc 3", k=1)
    assert server.stats()["inputs"] == inputs
    with pytest.raises(kb.UnknownModelError, match="offers"):
        project.get_llm("openai:myopenai:other")
    client.close()


def test_cache_persists_and_is_shared_by_threads(tmp_path: Path) -> None:
    calls: list[int] = []

    class CountingModel(kb.embeddings.EmbeddingModel):  # type: ignore[name-defined]
        id, description = "custom:counting", "counts calls"
        dimension = 4

        def embed(self, texts):  # type: ignore[no-untyped-def]
            calls.append(len(texts))
            return np.array([[len(t), 1, 2, 3] for t in texts], dtype=np.float32)

    path = tmp_path / "cache.sqlite"
    first = CachedEmbedder(CountingModel(), EmbeddingCache(path))
    first.embed_documents(["a", "bb", "a"])
    assert calls == [2]  # duplicates in one call are embedded once
    second = CachedEmbedder(CountingModel(), EmbeddingCache(path))
    assert np.allclose(second.embed_documents(["bb"]), [[2, 1, 2, 3]])
    assert calls == [2] and second.hits == 1 and second.misses == 0
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(20):
                second.embed_documents([f"t{n}-{i}", "a"])
                second.embed_query(f"q{i}")
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


def test_embedding_query_api_rejects_non_text(client: kb.EmbeddedClient) -> None:
    query = client.get_default_project().get_llm("custom:fake6").new_embeddings()
    with pytest.raises(kb.InvalidInputError, match="string"):
        query.add_text(42)  # type: ignore[arg-type]
    assert query.execute().get_embeddings() == []

"""Embedding models: the real local model, an OpenAI-compatible endpoint over real HTTP, and the cache."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

import kb
from kb.embedding_cache import CachedEmbedder, EmbeddingCache
from kb.embeddings import (
    LOCAL_MINILM_ID,
    LOCAL_MINILM_INT8_ID,
    EmbeddingModel,
    LocalMiniLMModel,
    OpenAICompatibleModel,
    build_model,
    list_model_ids,
)
from kb.llm import KBEmbeddings, LLMHandle
from tests.support.openai_stub_server import API_KEY, DIM, StubServer, vector_for

ROOT = Path(__file__).resolve().parents[1]


class CountingModel(EmbeddingModel):
    """A real (tiny, deterministic) model that records every text it is asked to embed."""

    def __init__(self, delay: float = 0.0) -> None:
        self.id, self.description = "custom:counting", "counts calls"
        self.calls: list[list[str]] = []
        self.delay = delay
        self._lock = threading.Lock()

    @property
    def dimension(self) -> int | None:
        return 4

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        with self._lock:
            self.calls.append(list(texts))
        time.sleep(self.delay)  # widens the window in which concurrent writers overlap
        return np.array([[len(t), 1, 2, 3] for t in texts], dtype=np.float32)

    @property
    def embedded(self) -> list[str]:
        return [t for call in self.calls for t in call]


@pytest.fixture(scope="module")
def server() -> Iterator[StubServer]:
    stub = StubServer().start()
    yield stub
    stub.stop()


def _model(server: StubServer, **kwargs: object) -> OpenAICompatibleModel:
    options = {"batch_size": 4, "timeout": 2.0, "max_retries": 2, **kwargs}
    return OpenAICompatibleModel("openai:test:emb", server.url, API_KEY, "emb", **options)  # type: ignore[arg-type]


# --- the local model ---------------------------------------------------------------------------


@pytest.mark.slow
def test_local_model_is_real_offline_and_cached(tmp_path: Path) -> None:
    model = build_model(LOCAL_MINILM_ID, {})
    assert model is build_model(LOCAL_MINILM_ID, {})  # one process-wide instance
    assert "all-MiniLM-L6-v2" in model.description and "384" in model.description
    assert model.embed([]).shape == (0, 384)
    embedder = CachedEmbedder(model, EmbeddingCache(tmp_path / "cache.sqlite"))
    texts = ["A cat sits on the mat.", "A kitten rests on a rug.", "Stock markets fell sharply."]
    vectors = embedder.embed_documents(texts)
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32 and model.dimension == 384
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.2
    assert (embedder.hits, embedder.misses) == (0, 3)
    assert np.array_equal(embedder.embed_documents(texts[::-1]), vectors[::-1])
    assert (embedder.hits, embedder.misses) == (3, 3)  # second call: cache only, the model was not called
    runtime = LocalMiniLMModel().runtime()  # onnxruntime on the CPU, from the packaged weights
    assert runtime.session.get_providers() == ["CPUExecutionProvider"] and runtime.max_length == 256


@pytest.mark.slow
def test_local_model_through_the_llm_api(client: kb.EmbeddedClient) -> None:
    project = client.get_default_project()
    items = {item.id: item for item in project.list_llms(purpose="TEXT_EMBEDDING_EXTRACTION")}
    assert items[LOCAL_MINILM_ID].type == "local" and "all-MiniLM-L6-v2" in items[LOCAL_MINILM_ID].description
    llm = project.get_llm(LOCAL_MINILM_ID)
    response = llm.new_embeddings().add_text("hello world").add_text("good morning").execute()
    assert response.success and [len(v) for v in response.get_embeddings()] == [384, 384]
    lc = llm.as_langchain_embeddings()
    assert np.allclose(lc.embed_query("hello world"), response.get_embeddings()[0], atol=1e-6)


def test_unknown_ids_name_the_id_and_what_exists() -> None:
    connections = {"corp": {"type": "openai-compatible", "base_url": "http://127.0.0.1:9/v1", "models": ["e1", "e2"]},
                   "chromadb": {"type": "chroma", "host": "x"}}
    assert [i for i, _ in list_model_ids(connections)] == [LOCAL_MINILM_ID, LOCAL_MINILM_INT8_ID, "openai:corp:e1",
                                                           "openai:corp:e2"]
    with pytest.raises(kb.UnknownModelError, match=r"'nope'.*local:all-MiniLM-L6-v2.*openai:corp:e1"):
        build_model("nope", connections)
    with pytest.raises(kb.UnknownModelError, match=r"no openai-compatible connection named 'other'.*\['corp'\]"):
        build_model("openai:other:e1", connections)
    with pytest.raises(kb.UnknownModelError, match=r"no openai-compatible connection named 'chromadb'"):
        build_model("openai:chromadb:e1", connections)
    with pytest.raises(kb.UnknownModelError, match=r"'corp' offers \['e1', 'e2'\]"):
        build_model("openai:corp:e3", connections)
    assert isinstance(build_model("openai:corp:e2", connections), OpenAICompatibleModel)
    for bad in ({"batch_size": 0}, {"max_retries": "many"}, {"timeout": "soon"}, {"base_url": "ftp://x"}):
        with pytest.raises(kb.InvalidInputError, match="must"):
            build_model("openai:corp:e1", {"corp": {**connections["corp"], **bad}})


# --- OpenAI-compatible endpoint over real HTTP -------------------------------------------------


def test_openai_compatible_batches_orders_and_sends_the_wire_format(server: StubServer) -> None:
    server.script()
    model = _model(server)
    assert model.embed([]).shape == (0, 0) and server.requests == []  # nothing sent for nothing
    texts = [f"text {i}" for i in range(10)]
    vectors = model.embed(texts)
    assert vectors.shape == (10, DIM) and vectors.dtype == np.float32 and model.dimension == DIM
    assert np.allclose(vectors, np.array([vector_for(t) for t in texts]), atol=1e-6)  # the stub answers reversed
    sent = server.requests
    assert [len(r.body["input"]) for r in sent] == [4, 4, 2]
    assert sent[0].body == {"model": "emb", "input": texts[:4], "encoding_format": "float"}
    assert sent[0].headers["authorization"] == f"Bearer {API_KEY}"


def test_openai_python_client_request_is_what_the_stub_and_kb_speak(server: StubServer) -> None:
    openai = pytest.importorskip("openai")
    server.script()
    with openai.OpenAI(base_url=server.url, api_key=API_KEY, max_retries=0) as official:
        answer = official.embeddings.create(model="emb", input=["alpha", "beta"])
    theirs = server.requests[0]
    _model(server).embed(["alpha", "beta"])
    ours = server.requests[1]
    assert set(theirs.body) == set(ours.body) == {"model", "input", "encoding_format"}
    assert theirs.body["input"] == ours.body["input"]
    assert theirs.headers["authorization"] == ours.headers["authorization"]
    assert np.allclose([d.embedding for d in sorted(answer.data, key=lambda d: d.index)],
                       _model(server).embed(["alpha", "beta"]), atol=1e-6)


def test_openai_compatible_retries_and_honours_retry_after(server: StubServer) -> None:
    server.script("status:429:0.6", "status:503")
    started = time.monotonic()
    assert _model(server).embed(["x"]).shape == (1, DIM)
    assert len(server.requests) == 3 and time.monotonic() - started >= 0.6
    model = _model(server, max_retries=1)
    model.MAX_RETRY_AFTER = 0.1  # a server asking for an hour is waited for only up to the cap
    server.script("status:429:3600")
    started = time.monotonic()
    assert model.embed(["x"]).shape == (1, DIM) and time.monotonic() - started < 2


def test_openai_compatible_gives_up_with_a_clear_error_without_the_key(server: StubServer) -> None:
    server.script("status:500", "status:500", "status:500")
    with pytest.raises(kb.EmbeddingError) as info:
        _model(server).embed(["x"])
    message = str(info.value)
    for part in ("HTTP 500", "scripted failure 500", "openai:test:emb", "'emb'", server.url, "3 attempt"):
        assert part in message
    assert API_KEY not in message and len(server.requests) == 3
    server.script("status:429", "status:429", "status:429")
    with pytest.raises(kb.EmbeddingError, match="HTTP 429"):
        _model(server).embed(["x"])


def test_openai_compatible_auth_errors_are_not_retried_and_never_show_the_key(server: StubServer) -> None:
    server.script()
    model = OpenAICompatibleModel("openai:test:emb", server.url, "sk-wrong", "emb", max_retries=3)
    with pytest.raises(kb.EmbeddingError, match="HTTP 401.*Incorrect API key"):
        model.embed(["x"])
    assert len(server.requests) == 1
    server.script("echokey")  # OpenAI quotes the key it was given: kb must not pass it on
    with pytest.raises(kb.EmbeddingError) as info:
        _model(server).embed(["x"])
    assert "HTTP 401" in str(info.value) and "***" in str(info.value) and API_KEY not in str(info.value)
    with pytest.raises(kb.InvalidInputError) as bad_key:
        OpenAICompatibleModel("openai:test:emb", server.url, "sk-ünïcode-secret", "emb")
    assert "ünïcode" not in str(bad_key.value)


def test_openai_compatible_timeouts_and_unreachable_servers(server: StubServer) -> None:
    server.script("sleep:1.5", "sleep:1.5")
    with pytest.raises(kb.EmbeddingError, match="timed out"):
        _model(server, timeout=0.3, max_retries=1).embed(["x"])
    assert len(server.requests) == 2
    server.script("sleep:1.5")
    assert _model(server, timeout=0.3, max_retries=1).embed(["x"]).shape == (1, DIM)  # the retry gets through
    closed = StubServer()  # never started: a port nothing listens on
    model = OpenAICompatibleModel("openai:down:emb", closed.url, API_KEY, "emb", max_retries=1, timeout=1.0)
    with pytest.raises(kb.EmbeddingError, match=r"could not connect.*2 attempt|2 attempt.*could not connect"):
        model.embed(["x"])


@pytest.mark.parametrize(("action", "expected"), [
    ("short", "1 embeddings for 2 inputs"),
    ("nonnumeric", "non-numeric"),
    ("ragged", "inconsistent"),
    ("dupindex", "indexes"),
    ("html", "malformed body"),
])
def test_openai_compatible_malformed_answers(server: StubServer, action: str, expected: str) -> None:
    server.script(action)
    with pytest.raises(kb.EmbeddingError, match=expected) as info:
        _model(server, max_retries=0).embed(["a", "b"])
    assert "openai:test:emb" in str(info.value) and API_KEY not in str(info.value)


def test_openai_compatible_dimension_must_stay_consistent(server: StubServer) -> None:
    server.script()
    with pytest.raises(kb.EmbeddingError, match=f"returned {DIM} dimensions, expected 8"):
        _model(server, dimensions=8).embed(["a"])
    assert server.requests[0].body["dimensions"] == 8


def test_openai_compatible_model_is_shared_by_threads(server: StubServer) -> None:
    server.script()
    model = _model(server, batch_size=3)
    results: dict[int, np.ndarray] = {}

    def worker(n: int) -> None:
        results[n] = model.embed([f"thread {n} text {i}" for i in range(7)])

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for n in range(4):
        assert np.allclose(results[n], [vector_for(f"thread {n} text {i}") for i in range(7)], atol=1e-6)
    assert len(server.requests) == 4 * 3


def test_connection_makes_the_model_usable_in_a_knowledge_bank(server: StubServer, tmp_path: Path) -> None:
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
    inputs = server.state.inputs
    store.add_texts([f"doc {i}" for i in range(5)], ids=[str(i) for i in range(5)])  # cached: nothing sent
    store.similarity_search("doc 3", k=1)
    assert server.state.inputs == inputs
    with pytest.raises(kb.UnknownModelError, match="offers"):
        project.get_llm("openai:myopenai:other")
    client.close()


# --- the cache ---------------------------------------------------------------------------------


def test_cache_persists_dedups_and_counts(tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite"
    model = CountingModel()
    first = CachedEmbedder(model, EmbeddingCache(path))
    assert first.embed_documents([]).shape == (0, 4) and model.calls == []
    first.embed_documents(["a", "bb", "a"])
    assert model.calls == [["a", "bb"]]  # duplicates in one call are embedded once
    assert (first.hits, first.misses) == (1, 2)
    second = CachedEmbedder(model, EmbeddingCache(path))  # another instance, same file: a restart
    assert np.allclose(second.embed_documents(["bb", "a", "ccc"]), [[2, 1, 2, 3], [1, 1, 2, 3], [3, 1, 2, 3]])
    assert model.calls[1:] == [["ccc"]] and (second.hits, second.misses) == (2, 1)
    other = CachedEmbedder(CountingModel(), EmbeddingCache(path))
    other.model.id = "custom:other"  # the key includes the model: another model misses
    other.embed_documents(["a"])
    assert other.misses == 1
    with pytest.raises(kb.InvalidInputError, match="#1 .* int"):
        second.embed_documents(["fine", 7])  # type: ignore[list-item]


def test_cache_batches_large_lookups(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path / "cache.sqlite")
    texts = [f"text {i}" for i in range(1234)]
    vectors = np.arange(1234 * 3, dtype=np.float32).reshape(1234, 3)
    cache.put_many("m", texts, vectors)
    found = cache.get_many("m", [*texts, "unknown", texts[0]])
    assert found[-2] is None and np.array_equal(found[-1], vectors[0])
    assert np.array_equal(np.stack(found[:-2]), vectors)  # type: ignore[arg-type]
    assert cache.get_many("other-model", texts[:2]) == [None, None]


def test_query_lru_serves_repeats_and_hands_out_copies(tmp_path: Path) -> None:
    model = CountingModel()
    embedder = CachedEmbedder(model, EmbeddingCache(tmp_path / "cache.sqlite"), lru_size=2)
    vector = embedder.embed_query("hello")
    vector *= 0  # a caller normalising in place must not damage the LRU
    assert np.array_equal(embedder.embed_query("hello"), [5, 1, 2, 3]) and model.embedded == ["hello"]
    embedder.embed_query("x")
    embedder.embed_query("y")  # evicts "hello" from the LRU; the SQLite cache still has it
    embedder.embed_query("hello")
    assert model.embedded == ["hello", "x", "y"] and embedder.misses == 3


def test_threads_writing_the_same_texts_call_the_model_once_per_text(tmp_path: Path) -> None:
    model = CountingModel(delay=0.05)
    embedder = CachedEmbedder(model, EmbeddingCache(tmp_path / "cache.sqlite"))
    shared = [f"shared {i}" for i in range(30)]
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(10):
                out = embedder.embed_documents([*shared[i : i + 10], f"own {n}-{i}"])
                assert out.shape == (11, 4) and out[-1, 0] == len(f"own {n}-{i}")
                embedder.embed_query(f"q{i}")
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    embedded = model.embedded
    assert len(embedded) == len(set(embedded))  # no text ever went to the model twice
    assert set(embedded) == {*(shared[:19]), *(f"own {n}-{i}" for n in range(4) for i in range(10)),
                             *(f"q{i}" for i in range(10))}


def test_cache_is_shared_by_processes(tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite"
    script = textwrap.dedent("""
        import sys
        import numpy as np
        from kb.embedding_cache import EmbeddingCache
        cache, n = EmbeddingCache(sys.argv[1]), int(sys.argv[2])
        for round in range(20):
            texts = [f"p{n}-{round}-{i}" for i in range(20)] + [f"shared-{i}" for i in range(20)]
            cache.put_many("m", texts, np.full((40, 8), n, dtype=np.float32))
            assert all(v is not None for v in cache.get_many("m", texts))
    """)
    workers = [subprocess.Popen([sys.executable, "-c", script, str(path), str(n)], cwd=ROOT, stderr=subprocess.PIPE)
               for n in range(3)]
    for worker in workers:
        _, stderr = worker.communicate(timeout=120)
        assert worker.returncode == 0, stderr.decode()
    found = EmbeddingCache(path).get_many("m", [f"p{n}-19-{i}" for n in range(3) for i in range(20)])
    assert all(v is not None and v.shape == (8,) for v in found)


# --- the LLM API -------------------------------------------------------------------------------


def test_embedding_query_api(client: kb.EmbeddedClient, tmp_path: Path) -> None:
    query = client.get_default_project().get_llm("custom:fake6").new_embeddings()
    with pytest.raises(kb.InvalidInputError, match="string"):
        query.add_text(42)  # type: ignore[arg-type]
    assert query.execute().get_embeddings() == []
    handle = LLMHandle("custom:counting", CachedEmbedder(CountingModel(), EmbeddingCache(tmp_path / "c.sqlite")))
    response = handle.new_embeddings().add_text("ab").add_text("abc").execute()
    assert response.success and response.get_embeddings() == [[2.0, 1.0, 2.0, 3.0], [3.0, 1.0, 2.0, 3.0]]
    lc = handle.as_langchain_embeddings()
    assert isinstance(lc, KBEmbeddings) and handle.id == "custom:counting"
    assert lc.embed_documents(["ab"]) == [[2.0, 1.0, 2.0, 3.0]] and lc.embed_documents([]) == []
    assert lc.embed_query("abcd") == [4.0, 1.0, 2.0, 3.0]


async def test_langchain_async_embeddings(tmp_path: Path) -> None:
    lc = KBEmbeddings(CachedEmbedder(CountingModel(), EmbeddingCache(tmp_path / "c.sqlite")))
    assert await lc.aembed_query("abc") == [3.0, 1.0, 2.0, 3.0]
    assert await lc.aembed_documents(["a", "ab"]) == [[1.0, 1.0, 2.0, 3.0], [2.0, 1.0, 2.0, 3.0]]

"""Shared fixtures: a fresh kb home per test, the embedded client, a fake embedding model for fast tests, the
run's shared Elasticsearch node, and per test module a real Chroma server and an Azure AI Search emulator.

The suite runs under pytest-xdist (``make test``: docs/tests.md): every fixture here must hold in several
worker processes at once. A fresh kb home is a temporary folder; servers listen on free ports; the shared
node is started once per run across the workers (tests/support/shared_elasticsearch.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import httpx  # noqa: E402

import kb  # noqa: E402

# httpx's one-shot calls (httpx.get, httpx.post, ...) time out after 5 s by default: on a loaded 2-core machine a
# real server's first answer can take longer, and the suite's flakes were such timeouts. Tests that mean to test a
# timeout pass their own; the remote client sets its own on its httpx.Client and is not affected by this.
TEST_HTTP_TIMEOUT = httpx.Timeout(60.0, connect=10.0)
for _call in (httpx.get, httpx.post, httpx.put, httpx.patch, httpx.delete, httpx.head, httpx.options,
              httpx.request, httpx.stream):
    getattr(_call, "__wrapped__", _call).__kwdefaults__["timeout"] = TEST_HTTP_TIMEOUT  # stream: a contextmanager
from kb.client import EmbeddedClient  # noqa: E402
from tests.support.azure_search_emulator import AzureSearchEmulator  # noqa: E402
from tests.support.chroma_server import ChromaServer  # noqa: E402
from tests.support.shared_elasticsearch import SharedElasticsearch, SharedNode, reap  # noqa: E402

# The files that take minutes (per-file test time of a full xdist run), longest first. Under xdist a file is the unit of
# work and files go out in collection order (pyproject: --no-loadscope-reorder), so these go out first and the short
# files fill in around them; left to the end, one of them would keep a worker busy alone while the other sat idle.
# Order only: a file missing here still runs, after them.
LONG_FILES = ("test_ray_sync.py", "test_retrieval_real_docs.py", "test_crash_safety_stores.py", "test_kill_loop.py",
              "test_multi_server.py", "test_jobs_across_servers.py", "test_faiss_compressed.py",
              "test_embed_batching.py", "test_documents_screenshots.py", "test_jobs_restart.py",
              "test_fenced_writers_es.py", "test_onnx_model.py",
              "test_failed_commit_release.py", "test_store_elasticsearch.py", "test_cli_kb.py", "test_onnx_int8.py",
              "test_chroma_recovery.py", "test_store_chroma.py", "test_chroma_shared.py", "test_exact_match.py",
              "test_layering.py",
              "test_crash_safety.py")

FAKE_MODEL_NAME = "fake6"
FAKE_MODEL_ID = f"custom:{FAKE_MODEL_NAME}"


@pytest.fixture
def kb_home(tmp_path: Path) -> Path:
    return tmp_path / "kb-home"


@pytest.fixture
def client(kb_home: Path) -> Iterator[EmbeddedClient]:
    """An embedded client with LangChain's deterministic fake embeddings registered as ``custom:fake6``."""
    from langchain_core.embeddings import DeterministicFakeEmbedding

    from kb.custom_models import LangChainEmbeddingModel

    c = kb.api_client(home=kb_home)
    c.register_embedding_model(LangChainEmbeddingModel(FAKE_MODEL_NAME, DeterministicFakeEmbedding(size=6)))
    yield c
    c.close()


def _run_folder(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Path:
    """The temporary folder every process of this run shares: under xdist the parent of each worker's own."""
    base = tmp_path_factory.getbasetemp()
    return base if worker_id == "master" else base.parent


@pytest.fixture(scope="session")
def shared_elasticsearch(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Iterator[SharedElasticsearch]:
    """The run's shared Elasticsearch node, started by the first test that asks for it (``es_node``)."""
    shared = SharedElasticsearch(_run_folder(tmp_path_factory, worker_id), worker_id)
    yield shared
    shared.release()


@pytest.fixture(scope="module")
def es_node(shared_elasticsearch: SharedElasticsearch, request: pytest.FixtureRequest) -> SharedNode:
    """The shared node with an index prefix of this module's own: pass ``index_prefix`` in connections (or use
    knowledge bank ids no other module uses). A test that stops, kills or pauses a node starts its own."""
    return shared_elasticsearch.node(f"{request.module.__name__.rsplit('.', 1)[-1].lower()}-")


@pytest.fixture(scope="module")
def chroma_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChromaServer]:
    """A real Chroma server (its own process and data folder) for the tests of one module."""
    server = ChromaServer(tmp_path_factory.mktemp("chroma-server") / "data").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AzureSearchEmulator]:
    """The Azure AI Search emulator for the tests of one module; at the end, every request and response it saw
    must have matched Microsoft's published schemas."""
    server = AzureSearchEmulator(tmp_path_factory.mktemp("azure-emulator")).start()
    yield server
    violations = server.violations()
    server.stop()
    assert violations == [], violations


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Once the whole run is over (the xdist controller, or the only process): stop a shared node that a
    crashed worker left running."""
    factory = getattr(session.config, "_tmp_path_factory", None)  # pytest's own; xdist reads it the same way
    if not hasattr(session.config, "workerinput") and factory is not None:
        reap(factory.getbasetemp())


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The long files first (stable: every file's tests stay together and in their order)."""
    rank = {name: i for i, name in enumerate(LONG_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONG_FILES)))

"""A knowledge bank's search settings (``default_k``, ``default_search_type``) apply to every search that does
not name its own, from Python (embedded and remote) as over REST; what a search names wins."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.documents import Document

import kb
from tests.conftest import FAKE_MODEL_ID
from tests.support.server import ADMIN_KEY, KBServer

TEXTS = ["alpha beta", "alpha gamma", "alpha delta", "epsilon zeta", "eta theta"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KBServer]:
    process = KBServer(tmp_path_factory.mktemp("search-defaults-home")).start()
    yield process
    process.stop()


@pytest.fixture(params=["embedded", "remote"])
def core(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    if request.param == "embedded":
        from langchain_core.embeddings import DeterministicFakeEmbedding

        from kb.custom_models import LangChainEmbeddingModel

        client = kb.api_client(home=tmp_path / "home")
        client.register_embedding_model(LangChainEmbeddingModel("fake6", DeterministicFakeEmbedding(size=6)))
    else:
        client = kb.api_client(url=request.getfixturevalue("server").url, api_key=ADMIN_KEY)
    handle = client.get_default_project().create_knowledge_bank(
        f"defaults-{request.node.name[-10:-1]}", embedding_llm_id=FAKE_MODEL_ID,
        settings={"search": {"default_k": 2, "default_search_type": "keyword"}})
    core = handle.as_core_knowledge_bank()
    with core.get_writer() as writer:
        writer.add_documents([Document(page_content=t) for t in TEXTS], ids=[f"d{i}" for i in range(len(TEXTS))])
    yield core
    handle.delete()
    client.close()


def test_a_search_naming_neither_gets_the_knowledge_banks_defaults(core: Any) -> None:
    results = core.search(query="alpha")
    assert len(results) == 2  # default_k, not SearchRequest's 4
    assert {r.id for r in results} <= {"d0", "d1", "d2"}  # keyword search: only documents holding the term
    assert all(set(r.scores) == {"keyword"} for r in results), [r.scores for r in results]


def test_what_a_search_names_wins(core: Any) -> None:
    results = core.search(query="alpha", k=5, search_type="similarity")
    assert len(results) == 5 and all("keyword" not in r.scores for r in results)
    assert len(core.search(query="alpha", k=3)) == 3  # k named, search type from the settings
    assert {r.id for r in core.search(query="alpha", k=3)} == {"d0", "d1", "d2"}

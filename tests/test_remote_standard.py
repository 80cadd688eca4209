"""langchain-tests' standard suites against the remote vector store and retriever, over real HTTP."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from langchain_core.vectorstores import VectorStore
from langchain_tests.integration_tests import RetrieversIntegrationTests, VectorStoreIntegrationTests

import kb
from tests.support.server import ADMIN_KEY, KBServer

_names = itertools.count()


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    server = KBServer(tmp_path_factory.mktemp("remote-std")).start()
    yield kb.api_client(url=server.url, api_key=ADMIN_KEY)
    server.stop()


class TestRemoteVectorStoreStandard(VectorStoreIntegrationTests):
    @pytest.fixture
    def vectorstore(self, remote: Any) -> Iterator[VectorStore]:
        handle = remote.get_default_project().create_knowledge_bank(f"std-{next(_names)}",
                                                                    embedding_llm_id="custom:fake6")
        yield handle.as_core_knowledge_bank().as_langchain_vectorstore()
        handle.delete()


_TEXTS = ["Photosynthesis turns light into chemical energy.", "The mitochondria powers the cell.",
          "Black holes bend light.", "Vaccines train the immune system.", "DNA stores genetic information.",
          "Enzymes speed up chemical reactions in cells."]


@pytest.fixture(scope="module")
def filled(remote: Any) -> Any:
    core = remote.get_default_project().create_knowledge_bank("retrieval", embedding_llm_id="custom:fake6") \
        .as_core_knowledge_bank()
    with core.get_writer() as writer:
        writer.as_langchain_vectorstore().add_documents([Document(page_content=t) for t in _TEXTS])
    return core


class _RemoteRetrieverStandard(RetrieversIntegrationTests):
    search_type = "similarity"

    @pytest.fixture(autouse=True)
    def _core(self, filled: Any) -> None:
        def build(k: int = 4) -> BaseRetriever:
            return filled.as_langchain_retriever(search_type=self.search_type, search_kwargs={"k": k})

        self._factory: Callable[..., BaseRetriever] = build

    @property
    def retriever_constructor(self) -> type[BaseRetriever]:
        return self._factory  # type: ignore[return-value]

    @property
    def retriever_query_example(self) -> str:
        return "light chemical cells energy system information reactions powers"


class TestRemoteSimilarityRetriever(_RemoteRetrieverStandard):
    search_type = "similarity"


class TestRemoteHybridRetriever(_RemoteRetrieverStandard):
    search_type = "hybrid"


class TestRemoteMmrRetriever(_RemoteRetrieverStandard):
    search_type = "mmr"

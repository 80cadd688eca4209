"""LangChain's own standard suites (langchain-tests) against kb's vector stores and retrievers.

Conformance is measured by someone else's tests: the writer's vector store
(staged writes, read-your-writes inside the ``with`` block), the committed
core vector store (one atomic commit per call) and the KB retriever for
every search type.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from langchain_community.vectorstores import FAISS
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from langchain_core.vectorstores import VectorStore
from langchain_tests.integration_tests import RetrieversIntegrationTests, VectorStoreIntegrationTests

from kb.client import EmbeddedClient
from tests.conftest import FAKE_MODEL_ID


def _new_core(client: EmbeddedClient, name: str = "standard") -> Any:
    handle = client.get_default_project().create_knowledge_bank(name, embedding_llm_id=FAKE_MODEL_ID)
    return handle.as_core_knowledge_bank()


class TestWriterVectorStoreStandard(VectorStoreIntegrationTests):
    """The vector store handed out by ``core.get_writer()``, used inside the writer's block."""

    @pytest.fixture
    def vectorstore(self, client: EmbeddedClient) -> Iterator[VectorStore]:
        core = _new_core(client)
        with core.get_writer() as writer:
            store = writer.as_langchain_vectorstore()
            assert isinstance(store, FAISS)
            yield store


class TestCoreVectorStoreStandard(VectorStoreIntegrationTests):
    """``core.as_langchain_vectorstore()``: every write is its own atomic commit."""

    @pytest.fixture
    def vectorstore(self, client: EmbeddedClient) -> Iterator[VectorStore]:
        store = _new_core(client).as_langchain_vectorstore()
        assert isinstance(store, FAISS)
        yield store


class TestCoreVectorStoreHnswStandard(VectorStoreIntegrationTests):
    """The same suite on an approximate (HNSW) FAISS index."""

    @pytest.fixture
    def vectorstore(self, client: EmbeddedClient) -> Iterator[VectorStore]:
        handle = client.get_default_project().create_knowledge_bank(
            "hnsw", embedding_llm_id=FAKE_MODEL_ID, settings={"store": {"index": {"type": "HNSW"}}}
        )
        yield handle.as_core_knowledge_bank().as_langchain_vectorstore()


_TEXTS = [
    "Photosynthesis turns light into chemical energy in plants.",
    "The mitochondria is the powerhouse of the cell.",
    "Black holes bend light with their gravity.",
    "Vaccines train the immune system to recognise pathogens.",
    "Plate tectonics explains earthquakes and mountains.",
    "DNA stores genetic information in a double helix.",
    "Neurons communicate through synapses.",
    "Enzymes speed up chemical reactions in cells.",
]


@pytest.fixture(scope="class")
def filled_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedClient]:
    from langchain_core.embeddings import DeterministicFakeEmbedding

    import kb
    from kb.custom_models import LangChainEmbeddingModel

    client = kb.api_client(home=tmp_path_factory.mktemp("retriever-home"))
    client.register_embedding_model(LangChainEmbeddingModel("fake6", DeterministicFakeEmbedding(size=6)))
    core = _new_core(client, "retrieval")
    with core.get_writer() as writer:
        writer.as_langchain_vectorstore().add_documents(
            [Document(page_content=t, metadata={"n": i}) for i, t in enumerate(_TEXTS)]
        )
    yield client
    client.close()


def _retriever_factory(client: EmbeddedClient, search_type: str) -> Callable[..., BaseRetriever]:
    core = client.get_default_project().list_knowledge_banks()[0].to_knowledge_bank().as_core_knowledge_bank()

    def build(k: int = 4, **search_kwargs: Any) -> BaseRetriever:
        return core.as_langchain_retriever(search_type=search_type, search_kwargs={"k": k, **search_kwargs})

    return build


class _KBRetrieverStandard(RetrieversIntegrationTests):
    search_type = "similarity"

    @pytest.fixture(autouse=True)
    def _client(self, filled_client: EmbeddedClient) -> None:
        self._factory = _retriever_factory(filled_client, self.search_type)

    @property
    def retriever_constructor(self) -> type[BaseRetriever]:
        return self._factory  # type: ignore[return-value]

    @property
    def retriever_query_example(self) -> str:
        return "chemical energy in cells"


class TestSimilarityRetrieverStandard(_KBRetrieverStandard):
    search_type = "similarity"


class TestMmrRetrieverStandard(_KBRetrieverStandard):
    search_type = "mmr"


class TestHybridRetrieverStandard(_KBRetrieverStandard):
    search_type = "hybrid"


class TestKeywordRetrieverStandard(_KBRetrieverStandard):
    search_type = "keyword"

    @property
    def retriever_query_example(self) -> str:
        # every fixture text shares a word with this query, so keyword search can return k=3 documents
        return "the in of light cells chemical information system synapses earthquakes"

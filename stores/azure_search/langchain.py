"""An Azure AI Search knowledge bank as an instance of langchain-community's ``AzureSearch`` class.

Every call goes through the knowledge bank (generations, the writer's transaction, kb's filter language),
so the reference's calls behave as documented: ``similarity_search`` (vector), ``hybrid_search`` (the
service's own hybrid query), ``semantic_hybrid_search`` (the service's semantic ranker, captions and answers
in the documents' metadata) and ``as_retriever(search_type="similarity" | "hybrid" | "semantic_hybrid" | ...)``.
AzureSearch's own ``search_type`` (the default of ``similarity_search``) is kept, defaulting to similarity
as in the reference. Filters use kb's language (``filter={...}``); AzureSearch's raw OData ``filters``
string would bypass the generation scheme and is refused, as is mmr with a hybrid search type.
"""

from __future__ import annotations

from typing import Any

from langchain_community.vectorstores.azuresearch import AzureSearch
from langchain_core.documents import Document
from langchain_core.runnables.config import run_in_executor
from langchain_core.vectorstores import VectorStore

from kb_base.errors import InvalidInputError, UnsupportedSearchError
from stores.azure_search.client import SEMANTIC_CONFIGURATION
from stores.langchain import KBVectorStoreMixin, to_document

AZURE_SEARCH_TYPES = ("similarity", "hybrid", "semantic_hybrid")


def _no_odata(kwargs: dict[str, Any]) -> dict[str, Any]:
    if kwargs.get("filters"):
        raise InvalidInputError("raw OData 'filters' are not accepted on a knowledge bank: use filter={...} in kb's "
                                "filter language, which keeps the knowledge bank's generations and semantics")
    kwargs.pop("filters", None)
    return kwargs


class KBAzureSearch(KBVectorStoreMixin, AzureSearch):
    def __init__(self, kb: Any, tx: Any = None, search_type: str = "similarity", **kwargs: Any) -> None:
        # AzureSearch.__init__ would build SDK clients and an index of its own: the knowledge bank has both.
        if kwargs:
            raise InvalidInputError(f"unexpected vector store options: {', '.join(sorted(kwargs))}")
        if search_type not in AZURE_SEARCH_TYPES:
            raise UnsupportedSearchError(f"AzureSearch search_type must be one of {', '.join(AZURE_SEARCH_TYPES)}, "
                                         f"got {search_type!r}")
        self._bind(kb, tx)
        self.embedding_function = kb.langchain_embeddings()
        self.search_type = search_type
        self.semantic_configuration_name = SEMANTIC_CONFIGURATION
        self.index_name = kb.driver.index
        self.fields = None
        self.client = None  # AzureSearch.__del__ closes these when set
        self.async_client = None
        self.override_relevance_score_fn = None

    def similarity_search_with_score(self, query: str, k: int = 4, filter: dict | None = None,
                                     **kwargs: Any) -> list[tuple[Document, float]]:
        kwargs = _no_odata(kwargs)
        search_type = kwargs.pop("search_type", None) or self.search_type
        if search_type == "similarity":
            return super().similarity_search_with_score(query, k, filter, **kwargs)
        return self._with_scores(query=query, k=k, filter=filter, search_type=search_type)

    def similarity_search(self, query: str, k: int = 4, filter: dict | None = None, **kwargs: Any) -> list[Document]:
        return [d for d, _ in self.similarity_search_with_score(query, k, filter, **kwargs)]

    def vector_search_with_score(self, query: str, k: int = 4, filters: str | None = None,
                                 **kwargs: Any) -> list[tuple[Document, float]]:
        _no_odata({"filters": filters})
        return self._with_scores(query=query, k=k, filter=kwargs.get("filter"), search_type="similarity")

    def vector_search(self, query: str, k: int = 4, **kwargs: Any) -> list[Document]:
        return [d for d, _ in self.vector_search_with_score(query, k, **kwargs)]

    def hybrid_search_with_score(self, query: str, k: int = 4, filter: dict | None = None,  # type: ignore[override]
                                 **kwargs: Any) -> list[tuple[Document, float]]:
        _no_odata(kwargs)
        return self._with_scores(query=query, k=k, filter=filter, search_type="hybrid")

    def hybrid_search(self, query: str, k: int = 4, filter: dict | None = None, **kwargs: Any) -> list[Document]:
        return [d for d, _ in self.hybrid_search_with_score(query, k, filter, **kwargs)]

    def semantic_hybrid_search_with_score_and_rerank(  # type: ignore[override]
            self, query: str, k: int = 4, filter: dict | None = None, **kwargs: Any
    ) -> list[tuple[Document, float, float]]:
        """(document, the service's hybrid score, the semantic reranker's score), as AzureSearch returns them."""
        _no_odata(kwargs)
        results = self._search(query=query, k=k, filter=filter, search_type="semantic_hybrid")
        return [(to_document(r), r.scores.get("fused", 0.0), r.scores.get("rerank", r.score)) for r in results]

    def semantic_hybrid_search_with_score(self, query: str, k: int = 4,  # type: ignore[override]
                                          score_type: str = "score", filter: dict | None = None,
                                          **kwargs: Any) -> list[tuple[Document, float]]:
        triples = self.semantic_hybrid_search_with_score_and_rerank(query, k, filter, **kwargs)
        return [(d, rerank if score_type == "reranker_score" else score) for d, score, rerank in triples]

    def semantic_hybrid_search(self, query: str, k: int = 4, filter: dict | None = None,
                               **kwargs: Any) -> list[Document]:
        return [d for d, _, _ in self.semantic_hybrid_search_with_score_and_rerank(query, k, filter, **kwargs)]

    def hybrid_max_marginal_relevance_search_with_score(self, *args: Any, **kwargs: Any) -> Any:
        raise UnsupportedSearchError("the diversity option (mmr) cannot combine with hybrid search; "
                                     "use search_type='mmr' or plain hybrid")

    # --- the rest of AzureSearch's API, through kb (async variants run the sync call in an executor) -----------

    def similarity_search_with_relevance_scores(self, query: str, k: int = 4,  # type: ignore[override]
                                                **kwargs: Any) -> list[tuple[Document, float]]:
        return VectorStore.similarity_search_with_relevance_scores(self, query, k, **_no_odata(kwargs))

    def max_marginal_relevance_search_with_score(self, query: str, k: int = 4, fetch_k: int = 20,
                                                 lambda_mult: float = 0.5, filter: dict | None = None,
                                                 **kwargs: Any) -> list[tuple[Document, float]]:
        _no_odata(kwargs)
        return self._with_scores(query=query, k=k, fetch_k=fetch_k, lambda_mult=lambda_mult, filter=filter,
                                 search_type="mmr")

    def hybrid_search_with_relevance_scores(self, query: str, k: int = 4,  # type: ignore[override]
                                            score_threshold: float | None = None, filter: dict | None = None,
                                            **kwargs: Any) -> list[tuple[Document, float]]:
        pairs = self.hybrid_search_with_score(query, k, filter, **kwargs)
        return [(d, s) for d, s in pairs if score_threshold is None or s >= score_threshold]

    def _simple_search(self, *args: Any, **kwargs: Any) -> Any:
        raise UnsupportedSearchError("raw Azure AI Search queries would bypass the knowledge bank; use kb's search "
                                     "types")

    _asimple_search = _simple_search

    async def aadd_embeddings(self, text_embeddings: Any, metadatas: list[dict] | None = None,  # type: ignore[override]
                              ids: list[str] | None = None, **kwargs: Any) -> list[str]:
        return await run_in_executor(None, self.add_embeddings, list(text_embeddings), metadatas, ids)

    async def asimilarity_search_with_relevance_scores(self, query: str, k: int = 4,  # type: ignore[override]
                                                       **kwargs: Any) -> list[tuple[Document, float]]:
        return await run_in_executor(None, self.similarity_search_with_relevance_scores, query, k, **kwargs)

    async def avector_search(self, query: str, k: int = 4, **kwargs: Any) -> list[Document]:
        return await run_in_executor(None, self.vector_search, query, k, **kwargs)

    async def avector_search_with_score(self, query: str, k: int = 4,  # type: ignore[override]
                                        **kwargs: Any) -> list[tuple[Document, float]]:
        return await run_in_executor(None, self.vector_search_with_score, query, k, **kwargs)

    async def amax_marginal_relevance_search_with_score(self, query: str, k: int = 4,  # type: ignore[override]
                                                        **kwargs: Any) -> list[tuple[Document, float]]:
        return await run_in_executor(None, self.max_marginal_relevance_search_with_score, query, k, **kwargs)

    async def ahybrid_search_with_score(self, query: str, k: int = 4,  # type: ignore[override]
                                        **kwargs: Any) -> list[tuple[Document, float]]:
        return await run_in_executor(None, self.hybrid_search_with_score, query, k, **kwargs)

    async def ahybrid_search_with_relevance_scores(self, query: str, k: int = 4,  # type: ignore[override]
                                                   **kwargs: Any) -> list[tuple[Document, float]]:
        return await run_in_executor(None, self.hybrid_search_with_relevance_scores, query, k, **kwargs)

    async def ahybrid_max_marginal_relevance_search_with_score(self, *args: Any, **kwargs: Any) -> Any:
        return self.hybrid_max_marginal_relevance_search_with_score(*args, **kwargs)

    async def asemantic_hybrid_search_with_score(self, query: str, k: int = 4,  # type: ignore[override]
                                                 **kwargs: Any) -> list[tuple[Document, float]]:
        return await run_in_executor(None, self.semantic_hybrid_search_with_score, query, k, **kwargs)

    async def asemantic_hybrid_search_with_score_and_rerank(  # type: ignore[override]
            self, query: str, k: int = 4, **kwargs: Any) -> list[tuple[Document, float, float]]:
        return await run_in_executor(None, self.semantic_hybrid_search_with_score_and_rerank, query, k, **kwargs)

    @classmethod
    def from_embeddings(cls, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        raise InvalidInputError("create an AZURE_AI_SEARCH knowledge bank and use its as_langchain_vectorstore()")

    afrom_texts = from_embeddings  # type: ignore[assignment]
    afrom_embeddings = from_embeddings  # type: ignore[assignment]

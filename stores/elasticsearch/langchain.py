"""An Elasticsearch knowledge bank as an instance of langchain-elasticsearch's ``ElasticsearchStore``.

Calls go through the knowledge bank (generations, the writer's transaction, kb's filters). The
reference's ``strategy`` keyword passes through: with ``DenseVectorStrategy(hybrid=True)`` the
``similarity`` search type becomes kb's hybrid search (``rrf=True`` → reciprocal rank fusion,
otherwise the KB's default fusion), and, as in the reference, every other search type is refused.
"""

from __future__ import annotations

from typing import Any

from langchain_core.documents import Document
from langchain_elasticsearch import ElasticsearchStore

from kb_base.errors import InvalidInputError, UnsupportedSearchError
from stores.langchain import KBRetriever, KBVectorStoreMixin


class KBElasticsearchStore(KBVectorStoreMixin, ElasticsearchStore):
    def __init__(self, kb: Any, tx: Any = None, strategy: Any = None, **kwargs: Any) -> None:
        if kwargs:
            raise InvalidInputError(f"unexpected vector store options: {', '.join(sorted(kwargs))}")
        self._bind(kb, tx)
        self.embedding = kb.langchain_embeddings()
        self.strategy = strategy
        self.hybrid = bool(getattr(strategy, "hybrid", False))
        self.rrf = getattr(strategy, "rrf", False)
        self.index_name = kb.driver.index

    def _hybrid_options(self) -> dict[str, Any]:
        return {"search_type": "hybrid", **({"fusion": "rrf"} if self.rrf else {})}

    def similarity_search_with_score(self, query: str, k: int = 4, filter: dict | None = None,
                                     **kwargs: Any) -> list[tuple[Document, float]]:
        if self.hybrid:
            return self._with_scores(query=query, k=k, filter=filter, **self._hybrid_options())
        return super().similarity_search_with_score(query, k, filter, **kwargs)

    def _refuse_under_hybrid(self, search_type: str) -> None:
        if self.hybrid:
            raise UnsupportedSearchError(f"only the similarity search type is allowed with a hybrid strategy, "
                                         f"not {search_type}")

    def max_marginal_relevance_search(self, query: str, k: int = 4, fetch_k: int = 20, lambda_mult: float = 0.5,
                                      filter: dict | None = None, **kwargs: Any) -> list[Document]:
        self._refuse_under_hybrid("mmr")
        return super().max_marginal_relevance_search(query, k, fetch_k, lambda_mult, filter, **kwargs)

    def search(self, query: str, search_type: str, **kwargs: Any) -> list[Document]:
        if self.hybrid and search_type != "similarity":
            self._refuse_under_hybrid(search_type)
        return super().search(query, search_type, **kwargs)

    def as_retriever(self, **kwargs: Any) -> KBRetriever:
        search_type = kwargs.get("search_type", "similarity")
        if self.hybrid and search_type != "similarity":
            self._refuse_under_hybrid(search_type)
        return super().as_retriever(**kwargs)

"""LangChain vector stores over a knowledge bank.

``KBVectorStoreMixin`` implements LangChain's ``VectorStore`` interface on a
knowledge bank: reads go to the committed store (or, for a writer's vector
store, to the open transaction, which reads its own writes); writes go to
the writer's transaction, or are one atomic commit each when there is no
writer. Each store package mixes it into its LangChain counterpart
(``stores.faiss.langchain``: langchain-community's ``FAISS``; Chroma,
Elasticsearch and Azure AI Search likewise), so a knowledge bank hands out a
genuine instance of that class, as the reference API promises.

The mixin talks to the knowledge bank through ``LangChainKnowledgeBank``, a
protocol that ``kb.core.LangChainKnowledgeBank`` (embedded) and the remote client's
knowledge bank satisfy: the stores layer never imports the facade above it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar, Protocol

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.runnables.config import run_in_executor
from langchain_core.vectorstores import VectorStore, VectorStoreRetriever

from kb_base.documents import document_of, new_ids
from kb_base.errors import InvalidInputError, UnsupportedSearchError
from kb_base.filters import Filter
from kb_base.search import SEARCH_TYPES, SearchRequest, SearchResult
from stores.base import StoreReader, StoreTransaction


class LangChainKnowledgeBank(Protocol):
    """What the LangChain classes need of a knowledge bank (``kb.core.CoreKnowledgeBank`` has it all)."""

    driver: Any

    def langchain_embeddings(self) -> Embeddings: ...

    def check_filter(self, flt: Filter | None) -> Filter | None: ...

    def write_texts(self, texts: Sequence[str], metadatas: Sequence[Mapping[str, Any] | None], ids: Sequence[str],
                    vectors: Sequence[Sequence[float]] | None = None, tx: StoreTransaction | None = None) -> None: ...

    def delete_documents(self, ids: Sequence[str], tx: StoreTransaction | None = None) -> int: ...

    def get_documents(self, ids: Sequence[str], tx: StoreTransaction | None = None) -> list[Document]: ...

    def search(self, request: SearchRequest | None = None, reader: StoreReader | None = None,
               **kwargs: Any) -> list[SearchResult]: ...

    def similarity_documents(self, vector: Sequence[float], k: int, filter: Mapping[str, Any] | None = None,
                             reader: StoreReader | None = None) -> list[tuple[Document, float]]: ...


def to_document(result: SearchResult) -> Document:
    return document_of(result.text, dict(result.metadata), result.id)


class KBVectorStoreMixin:
    """The LangChain VectorStore API on a knowledge bank (see module docstring)."""

    _kb: LangChainKnowledgeBank
    _tx: StoreTransaction | None

    def _bind(self, kb: LangChainKnowledgeBank, tx: StoreTransaction | None) -> None:
        self._kb, self._tx = kb, tx

    # --- properties ---------------------------------------------------------------------------

    @property
    def embeddings(self) -> Embeddings:
        return self._kb.langchain_embeddings()

    # --- writes -------------------------------------------------------------------------------

    def add_texts(self, texts: Iterable[str], metadatas: list[dict] | None = None,
                  ids: list[str] | None = None, **kwargs: Any) -> list[str]:
        texts = list(texts)
        metadatas = list(metadatas) if metadatas is not None else [{} for _ in texts]
        if len(metadatas) != len(texts):
            raise InvalidInputError(f"got {len(texts)} texts but {len(metadatas)} metadata dicts")
        if ids is None:
            ids = new_ids(len(texts))
        else:
            ids = list(ids)
            missing = [n for n, i in enumerate(ids) if not i]
            for n, new_id in zip(missing, new_ids(len(missing)), strict=True):
                ids[n] = new_id
        if len(ids) != len(texts):
            raise InvalidInputError(f"got {len(texts)} texts but {len(ids)} ids")
        self._kb.write_texts(texts, metadatas, ids, tx=self._tx)
        return ids

    def add_embeddings(self, text_embeddings: Iterable[tuple[str, list[float]]], metadatas: list[dict] | None = None,
                       ids: list[str] | None = None, **kwargs: Any) -> list[str]:
        pairs = list(text_embeddings)
        texts = [t for t, _ in pairs]
        ids = list(ids) if ids is not None else new_ids(len(pairs))
        metadatas = list(metadatas) if metadatas is not None else [{} for _ in pairs]
        self._kb.write_texts(texts, metadatas, ids, vectors=[v for _, v in pairs], tx=self._tx)
        return ids

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        if ids is None:
            raise InvalidInputError("delete needs a list of ids (use the writer's clear() to empty the knowledge bank)")
        self._kb.delete_documents(list(ids), tx=self._tx)
        return True

    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        return self._kb.get_documents(list(ids), tx=self._tx)

    # --- searches -----------------------------------------------------------------------------

    def _search(self, **kwargs: Any) -> list[SearchResult]:
        unknown = kwargs.keys() - SearchRequest.__dataclass_fields__.keys()
        if unknown:
            raise InvalidInputError(f"unknown search options: {', '.join(sorted(unknown))}")
        return self._kb.search(SearchRequest(**kwargs), reader=self._tx)

    def _with_scores(self, **kwargs: Any) -> list[tuple[Document, float]]:
        return [(to_document(r), r.score) for r in self._search(**kwargs)]

    def similarity_search_with_score(self, query: str, k: int = 4, filter: dict | None = None,
                                     **kwargs: Any) -> list[tuple[Document, float]]:
        return self._with_scores(query=query, k=k, filter=filter, **_search_kwargs(kwargs))

    def similarity_search(self, query: str, k: int = 4, filter: dict | None = None, **kwargs: Any) -> list[Document]:
        return [d for d, _ in self.similarity_search_with_score(query, k, filter, **kwargs)]

    def similarity_search_with_score_by_vector(self, embedding: list[float], k: int = 4, filter: dict | None = None,
                                               **kwargs: Any) -> list[tuple[Document, float]]:
        options = _search_kwargs(kwargs)
        if options:
            return self._with_scores(vector=embedding, k=k, filter=filter, **options)
        return self._kb.similarity_documents(embedding, k, filter, reader=self._tx)

    def similarity_search_by_vector(self, embedding: list[float], k: int = 4, filter: dict | None = None,
                                    **kwargs: Any) -> list[Document]:
        return [d for d, _ in self.similarity_search_with_score_by_vector(embedding, k, filter, **kwargs)]

    def max_marginal_relevance_search_with_score_by_vector(
        self, embedding: list[float], *, k: int = 4, fetch_k: int = 20, lambda_mult: float = 0.5,
        filter: dict | None = None, **kwargs: Any,
    ) -> list[tuple[Document, float]]:
        return self._with_scores(vector=embedding, k=k, fetch_k=fetch_k, lambda_mult=lambda_mult, filter=filter,
                                 search_type="mmr")

    def max_marginal_relevance_search_by_vector(self, embedding: list[float], k: int = 4, fetch_k: int = 20,
                                                lambda_mult: float = 0.5, filter: dict | None = None,
                                                **kwargs: Any) -> list[Document]:
        return [d for d, _ in self.max_marginal_relevance_search_with_score_by_vector(
            embedding, k=k, fetch_k=fetch_k, lambda_mult=lambda_mult, filter=filter)]

    def max_marginal_relevance_search(self, query: str, k: int = 4, fetch_k: int = 20, lambda_mult: float = 0.5,
                                      filter: dict | None = None, **kwargs: Any) -> list[Document]:
        results = self._search(query=query, k=k, fetch_k=fetch_k, lambda_mult=lambda_mult, filter=filter,
                               search_type="mmr")
        return [to_document(r) for r in results]

    def keyword_search_with_score(self, query: str, k: int = 4, filter: dict | None = None,
                                  **kwargs: Any) -> list[tuple[Document, float]]:
        return self._with_scores(query=query, k=k, filter=filter, search_type="keyword", **_search_kwargs(kwargs))

    def keyword_search(self, query: str, k: int = 4, filter: dict | None = None, **kwargs: Any) -> list[Document]:
        return [d for d, _ in self.keyword_search_with_score(query, k, filter, **kwargs)]

    def hybrid_search_with_score(self, query: str, k: int = 4, filter: dict | None = None,
                                 **kwargs: Any) -> list[tuple[Document, float]]:
        return self._with_scores(query=query, k=k, filter=filter, search_type="hybrid", **_search_kwargs(kwargs))

    def hybrid_search(self, query: str, k: int = 4, filter: dict | None = None, **kwargs: Any) -> list[Document]:
        return [d for d, _ in self.hybrid_search_with_score(query, k, filter, **kwargs)]

    def semantic_hybrid_search_with_score(self, query: str, k: int = 4, filter: dict | None = None,
                                          **kwargs: Any) -> list[tuple[Document, float]]:
        return self._with_scores(query=query, k=k, filter=filter, search_type="semantic_hybrid",
                                 **_search_kwargs(kwargs))

    def semantic_hybrid_search(self, query: str, k: int = 4, filter: dict | None = None,
                               **kwargs: Any) -> list[Document]:
        return [d for d, _ in self.semantic_hybrid_search_with_score(query, k, filter, **kwargs)]

    def search(self, query: str, search_type: str, **kwargs: Any) -> list[Document]:
        if search_type not in SEARCH_TYPES:
            raise UnsupportedSearchError(
                f"unknown search type {search_type!r}; choose one of {', '.join(SEARCH_TYPES)}"
            )
        if search_type == "similarity_score_threshold":
            threshold = kwargs.pop("score_threshold", None)
            docs = self.similarity_search_with_relevance_scores(query, score_threshold=threshold, **kwargs)
            return [d for d, _ in docs]
        return [to_document(r) for r in self._search(query=query, search_type=search_type, **kwargs)]

    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        # Scores are cosine similarities; LangChain's cosine convention maps them to relevance as they are,
        # clipped to [0, 1] so that opposite vectors do not produce negative "relevance".
        return lambda score: max(0.0, min(1.0, score))

    def _similarity_search_with_relevance_scores(self, query: str, k: int = 4,
                                                 **kwargs: Any) -> list[tuple[Document, float]]:
        relevance = self._select_relevance_score_fn()
        kwargs.pop("score_threshold", None)
        return [(d, relevance(s)) for d, s in self.similarity_search_with_score(query, k, **kwargs)]

    def as_retriever(self, **kwargs: Any) -> KBRetriever:
        tags = kwargs.pop("tags", None) or [*self._get_retriever_tags()]  # type: ignore[attr-defined]
        return KBRetriever(vectorstore=self, tags=tags, **kwargs)

    # --- async: run the sync implementations in an executor ---------------------------------

    async def aadd_texts(self, texts: Iterable[str], metadatas: list[dict] | None = None,
                         ids: list[str] | None = None, **kwargs: Any) -> list[str]:
        return await run_in_executor(None, self.add_texts, list(texts), metadatas, ids, **kwargs)

    async def aadd_documents(self, documents: list[Document], **kwargs: Any) -> list[str]:
        return await run_in_executor(None, self.add_documents, documents, **kwargs)  # type: ignore[attr-defined]

    async def adelete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        return await run_in_executor(None, self.delete, ids, **kwargs)

    async def aget_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        return await run_in_executor(None, self.get_by_ids, ids)

    async def asimilarity_search(self, query: str, k: int = 4, **kwargs: Any) -> list[Document]:
        return await run_in_executor(None, self.similarity_search, query, k, **kwargs)

    async def asimilarity_search_with_score(self, query: str, k: int = 4,
                                            **kwargs: Any) -> list[tuple[Document, float]]:
        return await run_in_executor(None, self.similarity_search_with_score, query, k, **kwargs)

    async def asimilarity_search_by_vector(self, embedding: list[float], k: int = 4, **kwargs: Any) -> list[Document]:
        return await run_in_executor(None, self.similarity_search_by_vector, embedding, k, **kwargs)

    async def asimilarity_search_with_score_by_vector(self, embedding: list[float], k: int = 4,
                                                      **kwargs: Any) -> list[tuple[Document, float]]:
        return await run_in_executor(None, self.similarity_search_with_score_by_vector, embedding, k, **kwargs)

    async def amax_marginal_relevance_search(self, query: str, k: int = 4, fetch_k: int = 20,
                                             lambda_mult: float = 0.5, **kwargs: Any) -> list[Document]:
        return await run_in_executor(None, self.max_marginal_relevance_search, query, k, fetch_k, lambda_mult,
                                     **kwargs)

    async def amax_marginal_relevance_search_by_vector(self, embedding: list[float], k: int = 4, fetch_k: int = 20,
                                                       lambda_mult: float = 0.5, **kwargs: Any) -> list[Document]:
        return await run_in_executor(None, self.max_marginal_relevance_search_by_vector, embedding, k, fetch_k,
                                     lambda_mult, **kwargs)

    async def amax_marginal_relevance_search_with_score_by_vector(
        self, embedding: list[float], *, k: int = 4, fetch_k: int = 20, lambda_mult: float = 0.5, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        return await run_in_executor(None, lambda: self.max_marginal_relevance_search_with_score_by_vector(
            embedding, k=k, fetch_k=fetch_k, lambda_mult=lambda_mult, **kwargs))

    async def _asimilarity_search_with_relevance_scores(self, query: str, k: int = 4,
                                                        **kwargs: Any) -> list[tuple[Document, float]]:
        return await run_in_executor(None, self._similarity_search_with_relevance_scores, query, k, **kwargs)

    async def ahybrid_search(self, query: str, k: int = 4, **kwargs: Any) -> list[Document]:
        return await run_in_executor(None, self.hybrid_search, query, k, **kwargs)

    async def asemantic_hybrid_search(self, query: str, k: int = 4, **kwargs: Any) -> list[Document]:
        return await run_in_executor(None, self.semantic_hybrid_search, query, k, **kwargs)

    # --- things a knowledge bank does not do through LangChain --------------------------------

    @classmethod
    def from_texts(cls, texts: list[str], embedding: Embeddings, metadatas: list[dict] | None = None,
                   **kwargs: Any) -> Any:
        raise UnsupportedSearchError(
            "a knowledge bank's vector store is created from the knowledge bank: use "
            "project.create_knowledge_bank(...) and core.get_writer().as_langchain_vectorstore()"
        )

    def save_local(self, folder_path: str, index_name: str = "index") -> None:
        raise UnsupportedSearchError("a knowledge bank persists itself on every commit; use `kb export` to copy it")

    def merge_from(self, target: Any) -> None:
        raise UnsupportedSearchError("merge_from is not supported on a knowledge bank; add its documents instead")


_PASSTHROUGH = ("fetch_k", "lambda_mult", "score_threshold", "fusion", "fusion_weight", "normalisation", "candidates",
               "diversity")


def _search_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Keep the search options kb understands; LangChain passes others (e.g. run managers)."""
    return {k: v for k, v in kwargs.items() if k in _PASSTHROUGH}


class KBVectorStore(KBVectorStoreMixin, VectorStore):
    """A knowledge bank as a plain LangChain VectorStore (stores without a LangChain class of their own)."""

    def __init__(self, kb: LangChainKnowledgeBank, tx: StoreTransaction | None = None) -> None:
        self._bind(kb, tx)


class KBRetriever(VectorStoreRetriever):
    """VectorStoreRetriever that also knows kb's keyword, hybrid and semantic_hybrid search types."""

    allowed_search_types: ClassVar[tuple[str, ...]] = SEARCH_TYPES  # type: ignore[misc]

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun,
                                **kwargs: Any) -> list[Document]:
        options = {**self.search_kwargs, **kwargs}
        if self.search_type in ("similarity", "similarity_score_threshold", "mmr"):
            return super()._get_relevant_documents(query, run_manager=run_manager, **kwargs)
        store = self.vectorstore
        assert isinstance(store, KBVectorStoreMixin)
        return store.search(query, self.search_type, **options)

    async def _aget_relevant_documents(self, query: str, *, run_manager: Any, **kwargs: Any) -> list[Document]:
        if self.search_type in ("similarity", "similarity_score_threshold", "mmr"):
            return await super()._aget_relevant_documents(query, run_manager=run_manager, **kwargs)
        options = {**self.search_kwargs, **kwargs}
        store = self.vectorstore
        assert isinstance(store, KBVectorStoreMixin)
        return await run_in_executor(None, store.search, query, self.search_type, **options)

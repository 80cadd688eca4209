"""A Chroma knowledge bank as an instance of langchain-chroma's ``Chroma`` class.

Like the FAISS adapter, every LangChain call goes through the knowledge bank
(so generations, the writer's transaction and kb's search types all apply);
the class is ``Chroma`` so code that checks for it, or passes it on, works.
It is wired to the KB's client, live collection (``_client``,
``_collection``) and embedding model. Chroma-specific methods that would
bypass kb (``get``, ``update_documents``) are answered by the knowledge bank;
those that cannot be (collection lifecycle, image search) are refused.
"""

from __future__ import annotations

from typing import Any

from langchain_chroma import Chroma
from langchain_core.documents import Document

from kb_base.errors import InvalidInputError, UnsupportedSearchError
from kb_base.filters import parse_filter
from stores.langchain import KBVectorStoreMixin

_GET_INCLUDE = {"documents", "metadatas", "embeddings"}


class KBChromaVectorStore(KBVectorStoreMixin, Chroma):
    def __init__(self, kb: Any, tx: Any = None) -> None:  # Chroma.__init__ would open a client of its own
        self._bind(kb, tx)
        self._embedding_function = kb.langchain_embeddings()
        self.override_relevance_score_fn = None
        self._collection_metadata = None
        self._collection_configuration = kb.driver.configuration

    @property
    def _client(self) -> Any:  # type: ignore[override]
        return self._kb.driver.chroma.client

    @property
    def _collection_name(self) -> str:  # type: ignore[override]
        collection = self._chroma_collection
        return collection.name if collection is not None else ""  # no collection before the first write

    @property
    def _chroma_collection(self) -> Any:  # type: ignore[override]
        """The physical collection of the committed state: records carry kb's generation fields."""
        return self._kb.driver.live_collection()

    def _reader(self) -> Any:
        return self._tx if self._tx is not None else self._kb.driver

    def get(self, ids: str | list[str] | None = None, where: dict[str, Any] | None = None, limit: int | None = None,
            offset: int | None = None, where_document: dict[str, Any] | None = None,
            include: list[str] | None = None) -> dict[str, Any]:
        """Chroma's ``get`` answered by the knowledge bank: kb ids, text and metadata, ordered by id."""
        if where_document:
            raise UnsupportedSearchError("where_document is not supported on a knowledge bank; use keyword search")
        wanted = set(include) if include is not None else {"documents", "metadatas"}
        if not wanted <= _GET_INCLUDE:
            raise InvalidInputError(f"include may hold {sorted(_GET_INCLUDE)}, got {sorted(wanted)}")
        reader = self._reader()
        selected = set(reader.ids_where(parse_filter(where)))
        if ids is not None:
            selected &= {ids} if isinstance(ids, str) else set(ids)
        chosen = sorted(selected)[offset or 0 :]
        chosen = chosen[:limit] if limit is not None else chosen
        records = reader.get(chosen, with_vectors="embeddings" in wanted)
        return {
            "ids": [r.id for r in records],
            "documents": [r.text for r in records] if "documents" in wanted else None,
            "metadatas": [r.metadata for r in records] if "metadatas" in wanted else None,
            "embeddings": [r.vector.tolist() for r in records] if "embeddings" in wanted else None,  # type: ignore[union-attr]
            "included": sorted(wanted),
        }

    def update_document(self, document_id: str, document: Document) -> None:
        self.update_documents([document_id], [document])

    def update_documents(self, ids: list[str], documents: list[Document]) -> None:
        if len(ids) != len(documents):
            raise InvalidInputError(f"got {len(ids)} ids but {len(documents)} documents")
        self.add_texts([d.page_content for d in documents], [dict(d.metadata) for d in documents], list(ids))

    def _refuse(self, what: str) -> UnsupportedSearchError:
        return UnsupportedSearchError(f"{what} is not available on a knowledge bank's Chroma vector store")

    def delete_collection(self) -> None:
        raise UnsupportedSearchError("a knowledge bank's collection is deleted with the knowledge bank "
                                     "(use the writer's clear() to empty it)")

    def reset_collection(self) -> None:
        raise UnsupportedSearchError("use the knowledge bank writer's clear() to empty a knowledge bank")

    def fork(self, new_name: str) -> Chroma:
        raise self._refuse("fork")

    def add_images(self, *args: Any, **kwargs: Any) -> list[str]:
        raise self._refuse("add_images (index images through the knowledge bank's multimodal ingestion)")

    def similarity_search_by_image(self, *args: Any, **kwargs: Any) -> list[Document]:
        raise self._refuse("image search")

    def similarity_search_by_image_with_relevance_score(self, *args: Any, **kwargs: Any) -> list[Any]:
        raise self._refuse("image search")

    def similarity_search_by_vector_with_relevance_scores(self, embedding: list[float], k: int = 4,
                                                         filter: dict[str, Any] | None = None,
                                                         where_document: dict[str, Any] | None = None,
                                                         **kwargs: Any) -> list[tuple[Document, float]]:
        if where_document:
            raise UnsupportedSearchError("where_document is not supported on a knowledge bank; use keyword search")
        return self.similarity_search_with_score_by_vector(embedding, k, filter)

    def similarity_search_with_vectors(self, query: str, k: int = 4, filter: dict[str, Any] | None = None,
                                       where_document: dict[str, Any] | None = None,
                                       **kwargs: Any) -> list[tuple[Document, Any]]:
        if where_document:
            raise UnsupportedSearchError("where_document is not supported on a knowledge bank; use keyword search")
        vector = self._embedding_function.embed_query(query)
        hits = self._reader().similarity(vector, k, self._kb.check_filter(parse_filter(filter)), with_vectors=True)
        return [(Document(page_content=h.record.text, metadata=dict(h.record.metadata), id=h.record.id),
                 h.record.vector) for h in hits]

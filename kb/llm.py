"""LLM handles as in the reference API: ``project.list_llms()`` items and ``project.get_llm(id)``.

kb serves embedding models only: ``new_embeddings()`` builds a query,
``execute()`` runs it through the cached embedder.
"""

from __future__ import annotations

from dataclasses import dataclass

from langchain_core.embeddings import Embeddings

from kb.embedding_cache import CachedEmbedder
from kb_base.errors import InvalidInputError

EMBEDDING_PURPOSE = "TEXT_EMBEDDING_EXTRACTION"


@dataclass
class LLMListItem:
    id: str
    description: str
    type: str
    purpose: str = EMBEDDING_PURPOSE

    def to_dict(self) -> dict[str, str]:
        return {"id": self.id, "description": self.description, "type": self.type, "purpose": self.purpose}


class EmbeddingResponse:
    def __init__(self, embeddings: list[list[float]]) -> None:
        self._embeddings = embeddings
        self.success = True

    def get_embeddings(self) -> list[list[float]]:
        return self._embeddings


class EmbeddingQuery:
    def __init__(self, embedder: CachedEmbedder) -> None:
        self._embedder = embedder
        self._texts: list[str] = []

    def add_text(self, text: str) -> EmbeddingQuery:
        if not isinstance(text, str):
            raise InvalidInputError(f"add_text expects a string, got {type(text).__name__}")
        self._texts.append(text)
        return self

    def execute(self) -> EmbeddingResponse:
        if not self._texts:
            return EmbeddingResponse([])
        return EmbeddingResponse(self._embedder.embed_documents(self._texts).tolist())


class KBEmbeddings(Embeddings):
    """A kb embedding model as LangChain ``Embeddings`` (through the cache)."""

    def __init__(self, embedder: CachedEmbedder) -> None:
        self.embedder = embedder

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.embedder.embed_documents(texts).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.embedder.embed_query(text).tolist()


class LLMHandle:
    def __init__(self, llm_id: str, embedder: CachedEmbedder) -> None:
        self.id = llm_id
        self.llm_id = llm_id
        self.embedder = embedder

    @property
    def description(self) -> str:
        return self.embedder.model.description

    def new_embeddings(self) -> EmbeddingQuery:
        return EmbeddingQuery(self.embedder)

    def as_langchain_embeddings(self) -> KBEmbeddings:
        return KBEmbeddings(self.embedder)

    def __repr__(self) -> str:
        return f"LLMHandle({self.id!r})"

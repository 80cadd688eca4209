"""In-process embedding models registered by the application (``client.register_embedding_model``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from langchain_core.embeddings import Embeddings

from kb.embeddings import EmbeddingModel
from kb_base.errors import EmbeddingError


class LangChainEmbeddingModel(EmbeddingModel):
    """Any LangChain ``Embeddings`` object as a kb embedding model, under the id ``custom:<name>``."""

    def __init__(self, name: str, embeddings: Embeddings, description: str | None = None) -> None:
        self.id = f"custom:{name}"
        self.description = description or f"{type(embeddings).__name__} (in-process LangChain embeddings)"
        self._embeddings = embeddings
        self._dimension: int | None = None

    @property
    def dimension(self) -> int | None:
        return self._dimension

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self._dimension or 0), dtype=np.float32)
        try:
            vectors = np.asarray(self._embeddings.embed_documents(list(texts)), dtype=np.float32)
        except Exception as exc:
            raise EmbeddingError(f"embedding model {self.id} failed: {exc}") from exc
        if vectors.ndim != 2 or vectors.shape[0] != len(texts):
            raise EmbeddingError(f"embedding model {self.id} returned {vectors.shape} for {len(texts)} texts")
        self._dimension = int(vectors.shape[1])
        return vectors

"""A Chroma knowledge bank as an instance of langchain-chroma's ``Chroma`` class.

Like the FAISS adapter, every call goes through the knowledge bank (so
generations, the writer's transaction and kb's search types all apply); the
class is ``Chroma`` so code that checks for it, or passes it on, works.
"""

from __future__ import annotations

from typing import Any

from langchain_chroma import Chroma

from kb.langchain_vectorstore import KBVectorStoreMixin


class KBChromaVectorStore(KBVectorStoreMixin, Chroma):
    def __init__(self, kb: Any, tx: Any = None) -> None:  # Chroma.__init__ would open a client of its own
        self._bind(kb, tx)
        self._embedding_function = kb.langchain_embeddings()
        self.override_relevance_score_fn = None
        self._collection_name = kb.driver.collection_name

"""A FAISS knowledge bank as an instance of langchain-community's ``FAISS`` class."""

from __future__ import annotations

from langchain_community.vectorstores import FAISS

from stores.base import StoreTransaction
from stores.langchain import KBVectorStoreMixin, LangChainKnowledgeBank


class KBFaissVectorStore(KBVectorStoreMixin, FAISS):
    """A FAISS knowledge bank as an instance of langchain-community's FAISS class.

    FAISS's own in-memory index and docstore are not used: every call goes to the
    knowledge bank, so the instance always sees the committed state.
    """

    def __init__(self, kb: LangChainKnowledgeBank, tx: StoreTransaction | None = None) -> None:
        self._bind(kb, tx)
        self.embedding_function = kb.langchain_embeddings()
        self.override_relevance_score_fn = None
        self._normalize_L2 = False

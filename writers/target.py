"""What the writers need of a knowledge bank: the protocol ``kb.core.CoreKnowledgeBank`` satisfies.

The writer, row ingestion, folder sync and snapshots work on a knowledge bank, but the facade that
builds knowledge banks (``kb/``) sits above this layer and imports it. They take this protocol instead,
so ``writers/`` never imports ``kb/`` (``tests/test_layering.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

from langchain_core.vectorstores import VectorStore

from kb_base.folders import ManagedFolder
from stores.base import Record, StoreTransaction, VectorStoreDriver
from writers.sync_records import SyncRecordStore


class KnowledgeBankTarget(Protocol):
    id: str
    name: str
    project_key: str
    settings: dict[str, Any]

    @property
    def folder(self) -> Path:
        """The knowledge bank's own folder (its store, staging files, sync records)."""

    @property
    def driver(self) -> VectorStoreDriver: ...

    @property
    def schema(self) -> dict[str, str]: ...

    @property
    def embedding_llm_id(self) -> str: ...

    def refresh(self) -> None:
        """Re-read the settings (another handle may have saved new ones)."""

    def embedder(self) -> Any:
        """The embedding model, with ``embed_documents(texts) -> np.ndarray`` and ``embed_query``."""

    def prepare_records(self, texts: Sequence[str], metadatas: Sequence[Mapping[str, Any] | None],
                        ids: Sequence[str], vectors: Sequence[Sequence[float]] | None = None) -> Sequence[Record]:
        """Validate (schema included) and embed; nothing is written."""

    def delete_documents(self, ids: Sequence[str], tx: StoreTransaction | None = None) -> int: ...

    def langchain_vectorstore(self, tx: StoreTransaction | None, **kwargs: Any) -> VectorStore: ...

    def get_writer(self, timeout: float = 30.0) -> AbstractContextManager[Any]: ...

    def images_folder(self) -> ManagedFolder: ...

    def sync_records(self) -> SyncRecordStore:
        """Where folder sync records what it indexed (the KB folder's ``sync.sqlite``, or a shared catalog)."""

    def ensure_images_folder(self) -> ManagedFolder:
        """The images folder, created and saved in the settings if missing."""

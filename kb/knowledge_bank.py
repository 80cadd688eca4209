"""Knowledge bank handles and settings (the public, catalog-level API)."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kb.core import CoreKnowledgeBank
from kb_base.errors import InvalidInputError
from stores.factory import driver_class
from writers.schema import validate_schema_definition

if TYPE_CHECKING:  # the client imports this module to hand out handles
    from kb.client import EmbeddedClient


def default_settings(embedding_llm_id: str, vector_store_type: str) -> dict[str, Any]:
    return {
        "embedding_llm_id": embedding_llm_id,
        "vector_store_type": vector_store_type,
        "metadata_schema": {},
        "images_folder": None,
        "store": {},  # driver settings, e.g. {"index": {"type": "HNSW"}} for FAISS
        "connection": None,  # name of a store connection (Chroma server, Elasticsearch, ...)
        "keyword": {},  # {"analyzer": {...}, "index": true}; "index": false makes a vector-only KB (FAISS)
        "search": {},  # {"fusion": {...}, "reranker": {...}}
    }


@dataclass
class KnowledgeBankListItem:
    id: str
    name: str
    project_key: str
    vector_store_type: str
    embedding_llm_id: str
    _client: Any = None

    def to_knowledge_bank(self) -> KnowledgeBankHandle:
        return KnowledgeBankHandle(self._client, self.project_key, self.id)


class KnowledgeBankSettings:
    """Editable settings of a knowledge bank; nothing changes until ``save()``."""

    def __init__(self, handle: KnowledgeBankHandle, raw: dict[str, Any]) -> None:
        self._handle = handle
        self._raw = raw

    def get_raw(self) -> dict[str, Any]:
        return self._raw

    def get_metadata_schema(self) -> dict[str, str]:
        return dict(self._raw.get("metadata_schema") or {})

    def set_metadata_schema(self, schema: dict[str, str]) -> None:
        self._raw["metadata_schema"] = validate_schema_definition(schema)

    def get_images_folder(self) -> str | None:
        return self._raw.get("images_folder")

    def set_images_folder(self, folder_full_id: str | None) -> None:
        """``"<PROJECT>.<folder id>"`` (or a bare folder id of the same project); None unsets it."""
        if folder_full_id is not None:
            self._handle._client.resolve_folder(folder_full_id, default_project=self._handle.project_key)
        self._raw["images_folder"] = folder_full_id

    def get_store_settings(self) -> dict[str, Any]:
        return dict(self._raw.get("store") or {})

    def set_store_settings(self, store: dict[str, Any]) -> None:
        self._raw["store"] = dict(store)

    def set_search_settings(self, search: dict[str, Any]) -> None:
        self._raw["search"] = dict(search)

    def set_keyword_settings(self, keyword: dict[str, Any]) -> None:
        self._raw["keyword"] = dict(keyword)

    @property
    def embedding_llm_id(self) -> str:
        return str(self._raw["embedding_llm_id"])

    @property
    def vector_store_type(self) -> str:
        return str(self._raw["vector_store_type"])

    def save(self) -> None:
        self._handle._client.save_knowledge_bank_settings(self._handle.project_key, self._handle.id, self._raw)


class KnowledgeBankHandle:
    """``project.get_knowledge_bank(id)``: the catalog-level handle on one knowledge bank."""

    def __init__(self, client: EmbeddedClient, project_key: str, kb_id: str) -> None:
        self._client = client
        self.project_key = project_key
        self.id = kb_id
        client.catalog.knowledge_bank(project_key, kb_id)  # NotFoundError early, with the id in it

    @property
    def name(self) -> str:
        return str(self._client.catalog.knowledge_bank(self.project_key, self.id)["name"])

    def get_settings(self) -> KnowledgeBankSettings:
        raw = self._client.catalog.knowledge_bank(self.project_key, self.id)["settings"]
        return KnowledgeBankSettings(self, copy.deepcopy(raw))

    def as_core_knowledge_bank(self) -> CoreKnowledgeBank:
        return CoreKnowledgeBank(self._client, self.project_key, self.id)

    def delete(self) -> None:
        self._client.delete_knowledge_bank(self.project_key, self.id)

    def __repr__(self) -> str:
        return f"KnowledgeBankHandle({self.project_key}.{self.id})"


def check_store_type(value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidInputError(f"vector_store_type must be a string, got {type(value).__name__}")
    driver_class(value)  # UnknownStoreTypeError names the valid types
    return value.upper()


def keyword_index_enabled(settings: dict[str, Any]) -> bool:
    """Whether the knowledge bank keeps a keyword (BM25) index: ``settings["keyword"]["index"]``, default true."""
    value = (settings.get("keyword") or {}).get("index", True)
    if not isinstance(value, bool):
        raise InvalidInputError(f"keyword.index must be true or false, got {value!r}")
    return value

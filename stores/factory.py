"""Map a knowledge bank's ``vector_store_type`` to its driver class.

Drivers register lazily by import path so that a knowledge bank on FAISS
never imports chromadb or elasticsearch.
"""

from __future__ import annotations

import importlib

from kb_base.errors import UnknownStoreTypeError
from stores.base import StoreContext, VectorStoreDriver

DRIVERS: dict[str, str] = {
    "FAISS": "stores.faiss.store:FaissStore",
    "CHROMA": "stores.chroma.store:ChromaStore",
    "ELASTICSEARCH": "stores.elasticsearch.store:ElasticsearchStore",
    "AZURE_AI_SEARCH": "stores.azure_search.store:AzureSearchStore",
}


def store_types() -> list[str]:
    return sorted(DRIVERS)


def driver_class(store_type: str) -> type[VectorStoreDriver]:
    key = str(store_type).upper()
    if key not in DRIVERS:
        raise UnknownStoreTypeError(
            f"unknown vector store type {store_type!r}; available: {', '.join(store_types())}"
        )
    module_name, class_name = DRIVERS[key].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise UnknownStoreTypeError(f"vector store type {key} is not available in this build") from exc
        raise
    return getattr(module, class_name)


def open_store(store_type: str, context: StoreContext) -> VectorStoreDriver:
    return driver_class(store_type)(context)

"""Map a knowledge bank's ``vector_store_type`` to its driver class.

Drivers register lazily by import path so that a knowledge bank on FAISS
never imports chromadb or elasticsearch.

The factory is also where a deployment's shared database reaches the drivers (issue 28): ``open_store``
takes its URL (``KB_DATABASE_URL`` when the caller passes none) and hands it down in the ``StoreContext``;
the remote stores keep their commit point there, every other store ignores it.
"""

from __future__ import annotations

import dataclasses
import importlib
import os

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


def database_url_from_environment() -> str | None:
    """``KB_DATABASE_URL``: the database several kb servers share (empty or unset: none, one machine)."""
    return os.environ.get("KB_DATABASE_URL") or None


def open_store(store_type: str, context: StoreContext, database_url: str | None = None) -> VectorStoreDriver:
    """Open a knowledge bank's store; ``database_url`` (default: ``KB_DATABASE_URL``) is where Elasticsearch and
    Azure AI Search knowledge banks keep their commit point and writer lease, instead of the KB folder."""
    url = database_url or context.database_url or database_url_from_environment()
    if url != context.database_url:
        context = dataclasses.replace(context, database_url=url)
    return driver_class(store_type)(context)

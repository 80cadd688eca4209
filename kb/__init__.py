"""kb: knowledge banks of embedded text chunks, searchable from Python, LangChain and REST.

    import kb
    client = kb.api_client()                 # embedded, data under $KB_HOME
    project = client.get_default_project()
"""

from typing import TYPE_CHECKING, Any

from kb.errors import (
    AlreadyExistsError,
    EmbeddingError,
    FilterError,
    ImageNotFoundError,
    InvalidInputError,
    KBError,
    MissingExtraError,
    NotFoundError,
    PathError,
    SchemaError,
    StoreUnavailableError,
    UnknownModelError,
    UnknownStoreTypeError,
    UnsupportedSearchError,
    WriterBusyError,
)
from kb.folders import ManagedFolder, ManagedFolderDocumentRef

if TYPE_CHECKING:
    from kb.client import EmbeddedClient, Project, api_client
    from kb.search import SearchRequest, SearchResult

# The client and search types import the store drivers, which import kb.errors: loading them
# lazily keeps `import stores.base` (or any driver) free of import cycles.
_LAZY = {"EmbeddedClient": "kb.client", "Project": "kb.client", "api_client": "kb.client",
         "SearchRequest": "kb.search", "SearchResult": "kb.search"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'kb' has no attribute {name!r}")

__all__ = [
    "AlreadyExistsError",
    "EmbeddedClient",
    "EmbeddingError",
    "FilterError",
    "ImageNotFoundError",
    "InvalidInputError",
    "KBError",
    "ManagedFolder",
    "ManagedFolderDocumentRef",
    "MissingExtraError",
    "NotFoundError",
    "PathError",
    "Project",
    "SchemaError",
    "SearchRequest",
    "SearchResult",
    "StoreUnavailableError",
    "UnknownModelError",
    "UnknownStoreTypeError",
    "UnsupportedSearchError",
    "WriterBusyError",
    "api_client",
]

"""kb: knowledge banks of embedded text chunks, searchable from Python, LangChain and REST.

    import kb
    client = kb.api_client()                 # embedded, data under $KB_HOME
    project = client.get_default_project()
"""

from kb.client import EmbeddedClient, Project, api_client
from kb.engines import LocalEngine, RayEngine
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
from kb_base.folders import ManagedFolder, ManagedFolderDocumentRef
from kb_base.search import SearchRequest, SearchResult

__all__ = [
    "AlreadyExistsError",
    "EmbeddedClient",
    "EmbeddingError",
    "FilterError",
    "ImageNotFoundError",
    "InvalidInputError",
    "KBError",
    "LocalEngine",
    "ManagedFolder",
    "ManagedFolderDocumentRef",
    "MissingExtraError",
    "NotFoundError",
    "PathError",
    "Project",
    "RayEngine",
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

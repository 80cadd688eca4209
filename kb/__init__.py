"""kb: knowledge banks of embedded text chunks, searchable from Python, LangChain and REST.

    import kb
    client = kb.api_client()                 # embedded, data under $KB_HOME
    project = client.get_default_project()
"""

from kb.client import EmbeddedClient, Project, api_client
from kb.errors import (
    AlreadyExistsError,
    EmbeddingError,
    FilterError,
    ImageNotFoundError,
    InUseError,
    InvalidInputError,
    KBError,
    MissingExtraError,
    ModelNotInstalledError,
    NotFoundError,
    PathError,
    SchemaError,
    StoreUnavailableError,
    SyncBusyError,
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
    "InUseError",
    "InvalidInputError",
    "KBError",
    "LocalEngine",
    "ManagedFolder",
    "ManagedFolderDocumentRef",
    "MissingExtraError",
    "ModelNotInstalledError",
    "NotFoundError",
    "PathError",
    "Project",
    "RayEngine",
    "SchemaError",
    "SearchRequest",
    "SearchResult",
    "StoreUnavailableError",
    "SyncBusyError",
    "UnknownModelError",
    "UnknownStoreTypeError",
    "UnsupportedSearchError",
    "WriterBusyError",
    "api_client",
]


def __getattr__(name: str) -> object:
    # the engines load the row readers (pyarrow) and Ray's glue: `import kb` stays light until one is used
    if name in ("LocalEngine", "RayEngine"):
        from kb import engines

        return getattr(engines, name)
    raise AttributeError(f"module 'kb' has no attribute {name!r}")

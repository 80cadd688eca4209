"""kb's exceptions, as ``kb.errors`` (their home is ``kb_base.errors``, below every layer that raises them).

Every error kb raises on purpose is a ``KBError``; bad input is also a ``ValueError``, a missing thing a
``LookupError``. The REST service maps them to status codes (``api/app.py``), and the remote client raises
the same classes from a server's answers.
"""

from kb_base.errors import (
    AlreadyExistsError,
    AmbiguousNameError,
    ClusterError,
    DiskFullError,
    EmbeddingError,
    EmptyDocumentError,
    ExtractionError,
    FilterError,
    ImageNotFoundError,
    InvalidInputError,
    KBError,
    MissingExtraError,
    ModelNotInstalledError,
    NotFoundError,
    PathError,
    SchemaError,
    StoreError,
    StoreRecoveringError,
    StoreUnavailableError,
    SyncBusyError,
    UnknownModelError,
    UnknownStoreTypeError,
    UnsupportedSearchError,
    WriterBusyError,
    WriterClosedError,
    WriterFencedError,
)

__all__ = [
    "AlreadyExistsError",
    "AmbiguousNameError",
    "ClusterError",
    "DiskFullError",
    "EmbeddingError",
    "EmptyDocumentError",
    "ExtractionError",
    "FilterError",
    "ImageNotFoundError",
    "InvalidInputError",
    "KBError",
    "MissingExtraError",
    "ModelNotInstalledError",
    "NotFoundError",
    "PathError",
    "SchemaError",
    "StoreError",
    "StoreRecoveringError",
    "StoreUnavailableError",
    "SyncBusyError",
    "UnknownModelError",
    "UnknownStoreTypeError",
    "UnsupportedSearchError",
    "WriterBusyError",
    "WriterClosedError",
    "WriterFencedError",
]

"""Typed errors raised by kb.

Every error names what was wrong (the key, the id, the path) so that the
message alone is enough to act on. The REST layer maps each class to an HTTP
status through ``http_status``.
"""

from __future__ import annotations


class KBError(Exception):
    """Base class of every error kb raises on purpose."""

    http_status = 500
    code = "internal_error"


class InvalidInputError(KBError, ValueError):
    """The caller passed something kb cannot accept."""

    http_status = 422
    code = "invalid_input"


class NotFoundError(KBError, LookupError):
    """A project, knowledge bank, folder, file, model or document does not exist."""

    http_status = 404
    code = "not_found"


class AlreadyExistsError(KBError):
    """Creating something whose key or name is already taken."""

    http_status = 409
    code = "already_exists"


class InUseError(KBError):
    """Deleting something that others still use (a connection named by knowledge banks' settings)."""

    http_status = 409
    code = "in_use"


class JobFinishedError(KBError):
    """Cancelling a background job that already ended (succeeded or failed): nothing left to stop."""

    http_status = 409
    code = "job_finished"


class UnknownStoreTypeError(InvalidInputError):
    code = "unknown_store_type"


class UnknownModelError(NotFoundError):
    code = "unknown_model"


class SchemaError(InvalidInputError):
    """Document metadata breaks the knowledge bank's metadata schema."""

    code = "schema_violation"


class FilterError(InvalidInputError):
    """A metadata filter is malformed or does not fit the metadata schema."""

    code = "invalid_filter"


class UnsupportedSearchError(InvalidInputError):
    """A search type or option the knowledge bank cannot serve."""

    code = "unsupported_search"


class PathError(InvalidInputError):
    """A managed-folder path escapes its folder or is otherwise unsafe."""

    code = "invalid_path"


class WriterBusyError(KBError):
    """Another writer holds the knowledge bank and did not release it in time."""

    http_status = 409
    code = "writer_busy"


class WriterFencedError(WriterBusyError):
    """This writer's lease on the knowledge bank lapsed (a long pause, a lost database connection) and another
    writer took it over: the write was rolled back, nothing of it was committed, the successor's work stands."""

    code = "writer_fenced"


class WriterClosedError(KBError):
    """The writer was used outside of its ``with`` block."""

    http_status = 409
    code = "writer_closed"


class ImageNotFoundError(NotFoundError):
    """A search result points at an image that is not in the images folder."""

    code = "image_not_found"


class EmbeddingError(KBError):
    """The embedding model failed (remote endpoint down, bad answer, ...)."""

    http_status = 502
    code = "embedding_failed"


class StoreUnavailableError(KBError):
    """The vector store behind a knowledge bank cannot be reached."""

    http_status = 503
    code = "store_unavailable"


class StoreRecoveringError(StoreUnavailableError):
    """The store's index is being rebuilt after a crash damaged it: retry in a moment (nothing was lost)."""

    code = "store_recovering"


class StoreError(KBError):
    """The vector store answered with an error."""

    http_status = 502
    code = "store_error"


class ExtractionError(InvalidInputError):
    """A document could not be turned into text (corrupt, password-protected, unsupported, needs OCR)."""

    code = "extraction_failed"


class EmptyDocumentError(ExtractionError):
    """A readable document with nothing to index (a redirect page, an empty HTML shell, an image-only PDF
    with OCR off). A folder sync reports it as ``empty``, not failed. ``awaits_ocr``: an OCR engine would
    find text in it."""

    code = "empty_document"

    def __init__(self, message: str, awaits_ocr: bool = False) -> None:
        super().__init__(message)
        self.awaits_ocr = awaits_ocr


class SyncBusyError(WriterBusyError):
    """Another folder sync is running on the same knowledge bank."""

    code = "busy"


class AmbiguousNameError(InvalidInputError):
    """A name given where an id would do matches more than one object; the message lists the ids."""

    code = "ambiguous_name"


class MissingExtraError(KBError):
    """A feature needs an optional extra that this install lacks (e.g. ``pip install 'kb[torch]'``)."""

    http_status = 501
    code = "missing_extra"


class ModelNotInstalledError(MissingExtraError, EmbeddingError):
    """A local model's weights are not installed: a 501 naming the package, not a 502 as if a model had failed."""


class DiskFullError(StoreError):
    """The disk (or quota) under kb's files is full: the write failed whole and the previous state stands."""

    http_status = 507
    code = "insufficient_storage"


class ClusterError(KBError):
    """The compute cluster an engine runs on (Ray) cannot be reached, or failed the job past its retries."""

    http_status = 503
    code = "cluster_unavailable"

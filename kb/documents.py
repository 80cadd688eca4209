"""LangChain Documents from kb's records, built without re-validating fields kb already typed."""

from __future__ import annotations

from typing import Any

from langchain_core.documents import Document


def _assemble_document(text: str, metadata: dict[str, Any], doc_id: str) -> Document:
    """A Document from fields that are already typed, without pydantic's validation (5.6 us -> 1.9 us a hit).

    It sets exactly what ``BaseModel.model_construct`` sets (which is slower than validating here);
    ``FAST_DOCUMENTS`` checks once at import that the result equals a validated Document.
    """
    document = Document.__new__(Document)
    object.__setattr__(document, "__dict__", {"id": doc_id, "metadata": metadata, "page_content": text,
                                              "type": "Document"})
    object.__setattr__(document, "__pydantic_fields_set__", {"page_content", "metadata", "id"})
    object.__setattr__(document, "__pydantic_extra__", None)
    object.__setattr__(document, "__pydantic_private__", None)
    return document


def _fast_documents_work() -> bool:
    try:
        fast = _assemble_document("t", {"a": 1}, "x")
        slow = Document(page_content="t", metadata={"a": 1}, id="x")
        return fast == slow and fast.model_dump() == slow.model_dump() and repr(fast) == repr(slow)
    except Exception:  # noqa: BLE001 - any surprise from another pydantic/langchain version: use the slow path
        return False


FAST_DOCUMENTS = _fast_documents_work()


def document_of(text: str, metadata: dict[str, Any], doc_id: str) -> Document:
    """A Document holding ``metadata`` itself (pass a copy when the caller keeps the dict)."""
    if FAST_DOCUMENTS:
        return _assemble_document(text, metadata, doc_id)
    return Document(page_content=text, metadata=metadata, id=doc_id)

"""LangChain Documents from kb's records, built without re-validating fields kb already typed; new documents' ids."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from langchain_core.documents import Document

_new_document = Document.__new__
_set_attribute = object.__setattr__
# pydantic keeps these three in slots: their descriptors' __set__, bound once, is the cheapest way in
try:
    _set_fields_set = Document.__pydantic_fields_set__.__set__  # type: ignore[attr-defined]
    _set_extra = Document.__pydantic_extra__.__set__  # type: ignore[attr-defined]
    _set_private = Document.__pydantic_private__.__set__  # type: ignore[attr-defined]
except AttributeError:  # another pydantic: FAST_DOCUMENTS below finds the fast path broken and turns it off
    _set_fields_set = _set_extra = _set_private = None  # type: ignore[assignment]


def _assemble_document(text: str, metadata: dict[str, Any], doc_id: str) -> Document:
    """A Document from fields that are already typed, without pydantic's validation (5.6 us -> 0.65 us a hit).

    It sets exactly what ``BaseModel.model_construct`` sets (which is slower than validating here);
    ``FAST_DOCUMENTS`` checks once at import that the result equals a validated Document.
    """
    document = _new_document(Document)
    _set_attribute(document, "__dict__", {"id": doc_id, "metadata": metadata, "page_content": text,
                                          "type": "Document"})
    _set_fields_set(document, {"page_content", "metadata", "id"})
    _set_extra(document, None)
    _set_private(document, None)
    return document


def _fast_documents_work() -> bool:
    try:
        fast = _assemble_document("t", {"a": 1}, "x")
        slow = Document(page_content="t", metadata={"a": 1}, id="x")
        return fast == slow and fast.model_dump() == slow.model_dump() and repr(fast) == repr(slow)
    except Exception:  # noqa: BLE001 - any surprise from another pydantic/langchain version: use the slow path
        return False


FAST_DOCUMENTS = _fast_documents_work()


def _validated_document(text: str, metadata: dict[str, Any], doc_id: str) -> Document:
    return Document(page_content=text, metadata=metadata, id=doc_id)


# document_of(text, metadata, doc_id): a Document holding ``metadata`` itself (pass a copy when the caller keeps
# the dict). Bound once, not a branch per call: a search makes ten of them.
document_of = _assemble_document if FAST_DOCUMENTS else _validated_document


_HEX_DIGITS = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_DIGIT_COLUMNS = np.array([i for i in range(36) if i not in (8, 13, 18, 23)])  # the rest hold the dashes


def new_ids(count: int) -> list[str]:
    """``count`` random version-4 UUIDs as strings, exactly what ``str(uuid.uuid4())`` makes (the same 122 bits
    from ``os.urandom``), made as one array: ``uuid4()`` builds an object per id, 2-4 us each, which a 100k
    ``add_texts`` without ids paid before anything was written."""
    raw = np.frombuffer(os.urandom(16 * count), dtype=np.uint8).reshape(count, 16).copy()
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40  # version 4
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80  # the RFC 4122 variant
    nibbles = np.empty((count, 32), dtype=np.uint8)
    nibbles[:, 0::2], nibbles[:, 1::2] = raw >> 4, raw & 0x0F
    text = np.full((count, 37), ord("-"), dtype=np.uint8)
    text[:, _DIGIT_COLUMNS] = _HEX_DIGITS[nibbles]
    text[:, 36] = ord("\n")
    return text.tobytes().decode("ascii").split("\n")[:-1]

"""The metadata formatter: kb's own metadata keys for document references and retrieval content.

Each ``with_*`` call returns a new formatter, so one formatter can be reused
for many documents. ``format_metadata`` returns a new Document; the input is
never mutated. The keys it writes start with ``KB_`` (valid under any schema)
and hold JSON strings, so every store, even one that only keeps scalar
metadata, can hold them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

from langchain_core.documents import Document

from kb_base.errors import InvalidInputError
from kb_base.folders import ManagedFolderDocumentRef, normalise_path
from kb_base.search import DOCUMENT_INFO_KEY, MULTIMODAL_KEY


@dataclass(frozen=True)
class MetadataFormatter:
    document_ref: ManagedFolderDocumentRef | None = None
    page_range: tuple[int, int] | None = None
    image_paths: tuple[str, ...] | None = None
    retrieval_text: str | None = None

    def with_original_document_ref(self, ref: ManagedFolderDocumentRef) -> MetadataFormatter:
        if not isinstance(ref, ManagedFolderDocumentRef):
            raise InvalidInputError("with_original_document_ref expects a kb.ManagedFolderDocumentRef")
        return replace(self, document_ref=ref)

    def with_original_document_page_range(self, start: int, end: int) -> MetadataFormatter:
        for name, value in (("start", start), ("end", end)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidInputError(f"page range {name} must be a positive integer, got {value!r}")
        if end < start:
            raise InvalidInputError(f"page range end {end} is before its start {start}")
        return replace(self, page_range=(start, end))

    def with_retrieval_content(self, image_paths: list[str] | None = None,
                               text: str | None = None) -> MetadataFormatter:
        if image_paths is None and text is None:
            raise InvalidInputError("with_retrieval_content needs image_paths or text")
        paths = tuple(normalise_path(p) for p in image_paths) if image_paths is not None else None
        if text is not None and not isinstance(text, str):
            raise InvalidInputError("retrieval content text must be a string")
        return replace(self, image_paths=paths, retrieval_text=text)

    def metadata(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        info: dict[str, Any] = {}
        if self.document_ref is not None:
            info["document_ref"] = self.document_ref.to_dict()
        if self.page_range is not None:
            info["page_range"] = {"start": self.page_range[0], "end": self.page_range[1]}
        if info:
            out[DOCUMENT_INFO_KEY] = json.dumps(info, sort_keys=True)
        if self.image_paths is not None:
            out[MULTIMODAL_KEY] = json.dumps({"type": "images", "content": list(self.image_paths)})
        elif self.retrieval_text is not None:
            out[MULTIMODAL_KEY] = json.dumps({"type": "text", "content": self.retrieval_text})
        return out

    def format_metadata(self, document: Document) -> Document:
        if not isinstance(document, Document):
            raise InvalidInputError("format_metadata expects a langchain Document")
        return Document(page_content=document.page_content, metadata={**document.metadata, **self.metadata()},
                        id=document.id)

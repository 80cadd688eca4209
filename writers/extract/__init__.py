"""Document extraction: PDF, DOCX, PPTX, HTML, Markdown, plain text, and images through OCR.

``extract_document(path, data, mode)`` returns an ``ExtractedDocument``: text
sections with their heading path and page offsets (``raw``: one section per
page/slide/document; ``structured``: one per heading), warnings, and for PDFs
and images a page renderer for screenshots. A file kb cannot read raises
``kb_base.errors.ExtractionError`` with the reason; it never yields an empty document.
"""

from writers.extract.registry import KINDS, check_mode, detect_kind, extract_document
from writers.extract.types import EXTRACTION_MODES, ExtractedDocument, Section

__all__ = ["EXTRACTION_MODES", "KINDS", "ExtractedDocument", "Section", "check_mode", "detect_kind",
           "extract_document"]

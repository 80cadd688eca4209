"""Which extractor reads a file: magic bytes first (a PDF named .txt is still a PDF), then the extension."""

from __future__ import annotations

import io
import zipfile
from pathlib import PurePosixPath

from kb_base.errors import EmptyDocumentError, ExtractionError, InvalidInputError
from writers.extract.types import EXTRACTION_MODES, ExtractedDocument

EXTENSIONS = {
    ".pdf": "pdf", ".docx": "docx", ".pptx": "pptx", ".html": "html", ".htm": "html", ".xhtml": "html",
    ".md": "markdown", ".markdown": "markdown", ".txt": "text", ".text": "text", ".rst": "text",
    ".png": "image", ".jpg": "image", ".jpeg": "image",
}
KINDS = ("pdf", "docx", "pptx", "html", "markdown", "text", "image")


def detect_kind(path: str, data: bytes) -> str:
    """The format of ``data``; ExtractionError naming the extension when kb does not read it."""
    head = data[:1024]
    if head.startswith(b"%PDF-") or b"%PDF-" in head:
        return "pdf"
    if head.startswith(b"\x89PNG\r\n\x1a\n") or head.startswith(b"\xff\xd8\xff"):
        return "image"
    suffix = PurePosixPath(path).suffix.lower()
    if head.startswith(b"PK\x03\x04"):
        try:
            names = zipfile.ZipFile(io.BytesIO(data)).namelist()
        except zipfile.BadZipFile:
            names = []
        if any(n.startswith("word/") for n in names):
            return "docx"
        if any(n.startswith("ppt/") for n in names):
            return "pptx"
    kind = EXTENSIONS.get(suffix)
    if kind is None:
        known = ", ".join(sorted(EXTENSIONS))
        raise ExtractionError(f"unsupported file type {suffix or '(no extension)'!r}; kb reads {known}")
    return kind


def check_mode(mode: str) -> str:
    if mode not in EXTRACTION_MODES:
        raise InvalidInputError(f"unknown extraction mode {mode!r}; modes: {', '.join(EXTRACTION_MODES)}")
    return mode


def extract_document(path: str, data: bytes, mode: str = "raw", ocr: bool = True) -> ExtractedDocument:
    """Text sections of one file. ExtractionError (with the reason) when kb cannot read it;
    EmptyDocumentError, its subclass, when it is readable but holds nothing to index."""
    check_mode(mode)
    kind = detect_kind(path, data)
    if not data:
        raise EmptyDocumentError("the file is empty (0 bytes)")
    if kind == "pdf":
        from writers.extract.pdf import extract_pdf

        document = extract_pdf(data, mode, ocr)
    elif kind == "docx":
        from writers.extract.docx import extract_docx

        document = extract_docx(data, mode)
    elif kind == "pptx":
        from writers.extract.pptx import extract_pptx

        document = extract_pptx(data, mode)
    elif kind == "image":
        from writers.extract.image import extract_image

        document = extract_image(data, mode, ocr)
    else:
        from writers.extract.text import decode_text

        warnings: list[str] = []
        text = decode_text(data, warnings)
        if kind == "html":
            from writers.extract.html import extract_html

            warnings = []  # the HTML parser reads the page's own charset (<meta charset>, BOM) from the bytes
            document = extract_html(data, mode)
        elif kind == "markdown":
            from writers.extract.markdown import extract_markdown

            document = extract_markdown(text, mode)
        else:
            from writers.extract.types import Section

            document = ExtractedDocument("text", [Section(text)] if text.strip() else [])
        document.warnings.extend(warnings)
    if document.text_length == 0:
        raise EmptyDocumentError(f"no text found in this {kind} file")
    return document

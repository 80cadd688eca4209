"""DOCX through python-docx: paragraphs and tables in document order; Heading N / Title styles are sections."""

from __future__ import annotations

import io
import re
import zipfile

import docx
from docx.opc.exceptions import PackageNotFoundError
from docx.table import Table
from docx.text.paragraph import Paragraph

from kb_base.errors import ExtractionError
from writers.extract.types import ExtractedDocument, SectionBuilder

_HEADING_STYLE = re.compile(r"^heading\s*(\d)$", re.IGNORECASE)


def _heading_level(paragraph: Paragraph) -> int | None:
    name = (paragraph.style.name if paragraph.style is not None else "") or ""
    if name.lower() == "title":
        return 1
    match = _HEADING_STYLE.match(name.strip())
    return int(match.group(1)) if match else None


def extract_docx(data: bytes, mode: str) -> ExtractedDocument:
    try:
        document = docx.Document(io.BytesIO(data))
    except (PackageNotFoundError, zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise ExtractionError(f"not a readable DOCX file: {exc}") from exc
    builder = SectionBuilder()
    for block in document.iter_inner_content():
        if isinstance(block, Table):
            for row in block.rows:
                cells = list(dict.fromkeys(c.text.strip() for c in row.cells if c.text.strip()))
                builder.add(" | ".join(cells) + "\n" if cells else "")
            continue
        text = block.text.strip()
        if not text:
            continue
        level = _heading_level(block) if mode == "structured" else None
        if level is not None:
            builder.heading(level, text)
        builder.add(text + "\n")
    return ExtractedDocument("docx", builder.finish())

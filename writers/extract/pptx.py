"""PPTX through python-pptx: one page per slide; in structured mode each slide's title is its section."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterable

from pptx import Presentation
from pptx.exc import PackageNotFoundError
from pptx.shapes.base import BaseShape

from kb_base.errors import ExtractionError
from writers.extract.types import ExtractedDocument, SectionBuilder


def _shape_texts(shapes: Iterable[BaseShape], skip: BaseShape | None) -> list[str]:
    texts: list[str] = []
    for shape in shapes:
        if skip is not None and shape.shape_id == skip.shape_id:
            continue
        if getattr(shape, "shapes", None) is not None:  # a group
            texts.extend(_shape_texts(shape.shapes, skip))  # type: ignore[attr-defined]
        if getattr(shape, "has_text_frame", False) and shape.text_frame.text.strip():  # type: ignore[attr-defined]
            texts.append(shape.text_frame.text.strip())  # type: ignore[attr-defined]
        if getattr(shape, "has_table", False):
            for row in shape.table.rows:  # type: ignore[attr-defined]
                cells = [c.text.strip() for c in row.cells if c.text.strip()]
                if cells:
                    texts.append(" | ".join(cells))
    return texts


def extract_pptx(data: bytes, mode: str) -> ExtractedDocument:
    try:
        presentation = Presentation(io.BytesIO(data))
    except (PackageNotFoundError, zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise ExtractionError(f"not a readable PPTX file: {exc}") from exc
    builder = SectionBuilder()
    count = 0
    for count, slide in enumerate(presentation.slides, start=1):
        title_shape = slide.shapes.title
        title = title_shape.text_frame.text.strip() if title_shape is not None and title_shape.has_text_frame else ""
        if mode == "structured":
            builder.heading(1, title or f"Slide {count}")
        builder.page(count)
        body = _shape_texts(slide.shapes, title_shape)
        if slide.has_notes_slide and slide.notes_slide.notes_text_frame is not None:
            notes = slide.notes_slide.notes_text_frame.text.strip()
            body.extend([notes] if notes else [])
        builder.add("\n".join([title, *body] if title else body) + "\n")
        if mode == "raw":
            builder.flush()  # raw: one section per slide
    return ExtractedDocument("pptx", builder.finish(), count or None)

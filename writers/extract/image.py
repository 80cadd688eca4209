"""PNG and JPEG images: their text through OCR (tesseract); the image itself is the page's screenshot."""

from __future__ import annotations

import io
from collections.abc import Iterator

from PIL import Image, UnidentifiedImageError

from kb_base.errors import EmptyDocumentError, ExtractionError
from writers.extract.ocr import INSTALL_HINT, ocr_available, ocr_png
from writers.extract.types import ExtractedDocument, Section


def _as_png(data: bytes) -> bytes:
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            buffer = io.BytesIO()
            image.convert("RGB" if image.mode not in ("RGB", "L", "RGBA") else image.mode).save(buffer, "PNG")
            return buffer.getvalue()
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ExtractionError(f"not a readable image: {exc}") from exc


def extract_image(data: bytes, mode: str, ocr: bool = True) -> ExtractedDocument:
    png = _as_png(data)
    if not ocr:
        raise EmptyDocumentError("an image needs OCR to become text and OCR is off")
    if not ocr_available():
        raise EmptyDocumentError(f"an image needs OCR to become text and no OCR engine is installed: {INSTALL_HINT}",
                                 awaits_ocr=True)
    text = ocr_png(png, "the image")
    if not text.strip():
        raise EmptyDocumentError("OCR found no text in the image")

    def render(scale: float) -> Iterator[tuple[int, bytes]]:
        yield 1, png

    return ExtractedDocument("image", [Section(text, (), [(0, 1)])], 1, [], render)

"""PDF through pypdfium2: text per page, outlines or font sizes for sections, pages rendered to PNG.

Pages without a text layer (scans, pictures of text) are rendered and read by
OCR when tesseract is installed; otherwise the page is named in the file's
warnings, and a PDF with no text on any page is EmptyDocumentError with the reason.

PDFium is not thread-safe, not even across documents (pypdfium2's docs): every
call into it holds ``PDFIUM_LOCK``, one page at a time, and every PDFium object
is closed explicitly under it (never by a finalizer in another thread). PNG
encoding and OCR run outside the lock, so two syncs in one service (REST jobs
on two knowledge banks) interleave their pages instead of crashing.
"""

from __future__ import annotations

import io
import threading
from collections import Counter
from collections.abc import Iterator

import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_raw

from kb_base.errors import EmptyDocumentError, ExtractionError
from writers.extract.ocr import INSTALL_HINT, ocr_available, ocr_png
from writers.extract.types import ExtractedDocument, Section, SectionBuilder

OCR_SCALE = 300 / 72  # tesseract reads best around 300 dpi
HEADING_RATIO = 1.15  # a line this much larger than the body text is a heading
MAX_HEADING_CHARS = 150
FONT_SAMPLES = 6  # characters per line whose font size is read
PDFIUM_LOCK = threading.RLock()


def open_pdf(data: bytes) -> pdfium.PdfDocument:
    try:
        return pdfium.PdfDocument(data)
    except pdfium.PdfiumError as exc:
        if "password" in str(exc).lower():
            raise ExtractionError("the PDF is password-protected (encrypted); kb cannot open it without the "
                                  "password") from exc
        raise ExtractionError(f"not a readable PDF: {exc}") from exc


def _png(image: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=1)  # type: ignore[attr-defined]
    return buffer.getvalue()


def _render(page: pdfium.PdfPage, scale: float) -> object:
    """A PIL image of the page that owns its pixels (the bitmap is freed here, under the lock)."""
    bitmap = page.render(scale=scale)
    try:
        return bitmap.to_pil().copy()
    finally:
        bitmap.close()


def render_pdf_pages(data: bytes, scale: float) -> Iterator[tuple[int, bytes]]:
    with PDFIUM_LOCK:
        pdf = open_pdf(data)
        count = len(pdf)
    try:
        for index in range(count):
            with PDFIUM_LOCK:
                page = pdf[index]
                try:
                    image = _render(page, scale)
                finally:
                    page.close()
            yield index + 1, _png(image)
    finally:
        with PDFIUM_LOCK:
            pdf.close()


def pdf_page_texts(data: bytes) -> list[str]:
    """The text of each page, in order (what a page locator searches to place chunks of a converted file)."""
    texts = []
    with PDFIUM_LOCK:
        pdf = open_pdf(data)
        try:
            for index in range(len(pdf)):
                page = pdf[index]
                textpage = page.get_textpage()
                try:
                    texts.append(textpage.get_text_range())
                finally:
                    textpage.close()
                    page.close()
        finally:
            pdf.close()
    return texts


def _page_lines(textpage: pdfium.PdfTextPage, text: str) -> list[tuple[int, str, float]]:
    """(offset, line, largest font size) per line; pdfium's text indexes are its character indexes."""
    lines, offset = [], 0
    for line in text.split("\n"):
        visible = [i for i, ch in enumerate(line) if not ch.isspace()]
        # a few characters spread over the line tell its size: one call per character was most of the cost
        sample = visible[:: max(1, len(visible) // FONT_SAMPLES)] if visible else []
        sizes = [pdfium_raw.FPDFText_GetFontSize(textpage, offset + i) for i in sample]
        lines.append((offset, line, max(sizes) if sizes else 0.0))
        offset += len(line) + 1
    return lines


def _font_headings(pages: list[tuple[str, list[tuple[int, str, float]]]]) -> list[list[tuple[int, int, str]]]:
    """(offset, level, title) per page: lines set in a clearly larger font than the body text."""
    weights: Counter[float] = Counter()
    for _, lines in pages:
        for _, line, size in lines:
            weights[round(size, 1)] += len(line.strip())
    if not weights:
        return [[] for _ in pages]
    body = weights.most_common(1)[0][0]
    heading_sizes = sorted({round(s, 1) for _, lines in pages for _, line, s in lines
                            if s >= body * HEADING_RATIO and 0 < len(line.strip()) <= MAX_HEADING_CHARS},
                           reverse=True)
    level = {size: min(rank + 1, 6) for rank, size in enumerate(heading_sizes)}
    return [[(offset, level[round(size, 1)], line.strip()) for offset, line, size in lines
             if round(size, 1) in level and 0 < len(line.strip()) <= MAX_HEADING_CHARS] for _, lines in pages]


def _title_position(text: str, title: str, before: list[tuple[int, int, str]]) -> int:
    """Where an outline title stands on its page: at the start of a line, after the entries before it on the
    page (a word like "References" also occurs in the text above its heading)."""
    lower, wanted = text.lower(), title.lower()
    start = max((offset for offset, _, _ in before), default=0)
    for origin in (start, 0):
        position = lower.find(wanted, origin)
        while position > 0 and lower[position - 1] not in "\n\r":
            position = lower.find(wanted, position + 1)
        if position >= 0:
            return position
    return max(lower.find(wanted), 0)


def _outline_headings(pdf: pdfium.PdfDocument, texts: list[str]) -> list[list[tuple[int, int, str]]] | None:
    """(offset, level, title) per page from the PDF's outline (bookmarks), placed where the title appears."""
    per_page: list[list[tuple[int, int, str]]] = [[] for _ in texts]
    found = False
    for item in pdf.get_toc(max_depth=6):
        dest = item.get_dest()
        index = dest.get_index() if dest is not None else None
        title = " ".join(item.get_title().split())
        if index is None or not 0 <= index < len(texts) or not title:
            continue
        found = True
        per_page[index].append((_title_position(texts[index], title, per_page[index]), item.level + 1, title))
    return per_page if found else None


def extract_pdf(data: bytes, mode: str, ocr: bool = True) -> ExtractedDocument:
    with PDFIUM_LOCK:
        pdf = open_pdf(data)
    warnings: list[str] = []
    try:
        with PDFIUM_LOCK:
            page_count = len(pdf)
        if page_count == 0:
            raise ExtractionError("the PDF has no pages")
        use_ocr = ocr and ocr_available()
        texts: list[str] = []
        pages_lines: list[tuple[str, list[tuple[int, str, float]]]] = []
        no_text: list[int] = []
        for index in range(page_count):
            scan = None
            with PDFIUM_LOCK:
                page = pdf[index]
                textpage = page.get_textpage()
                try:
                    text = textpage.get_text_range().replace("\r\n", " \n")  # same length: offsets stay pdfium's
                    lines = _page_lines(textpage, text) if mode == "structured" and text.strip() else []
                    if not text.strip():
                        text = ""
                        scan = _render(page, OCR_SCALE) if use_ocr else None
                finally:
                    textpage.close()
                    page.close()
            if scan is not None:
                text = ocr_png(_png(scan), f"page {index + 1}")
            if not text.strip():
                no_text.append(index + 1)
            texts.append(text)
            pages_lines.append((text, lines))
        if len(no_text) == page_count:  # readable, nothing to index: empty, not failed
            if use_ocr:
                raise EmptyDocumentError("no page of the PDF has a text layer, and OCR found no text either")
            if not ocr:
                raise EmptyDocumentError("no page of the PDF has a text layer (image-only) and OCR is off")
            raise EmptyDocumentError(f"no page of the PDF has a text layer (image-only) and no OCR engine is "
                                     f"installed: {INSTALL_HINT}", awaits_ocr=True)
        if no_text:
            why = "OCR found no text" if use_ocr else f"no OCR engine is installed ({INSTALL_HINT})"
            warnings.append(f"pages {', '.join(map(str, no_text))} have no text layer and {why}; "
                            "they are left out")
        if mode == "raw":
            sections = [Section(t, (), [(0, i + 1)]) for i, t in enumerate(texts) if t.strip()]
        else:
            with PDFIUM_LOCK:
                outline = _outline_headings(pdf, texts)
            headings = outline or _font_headings(pages_lines)
            builder = SectionBuilder()
            for number, (text, marks) in enumerate(zip(texts, headings, strict=True), start=1):
                builder.page(number)
                position = 0
                for offset, level, title in sorted(marks):
                    builder.add(text[position:offset])
                    builder.heading(level, title)
                    position = offset
                builder.add(text[position:])
                builder.add("\n")
            sections = builder.finish()
    finally:
        with PDFIUM_LOCK:
            pdf.close()
    return ExtractedDocument("pdf", sections, page_count, warnings, lambda scale: render_pdf_pages(data, scale),
                             awaits_ocr=bool(no_text) and ocr and not use_ocr)

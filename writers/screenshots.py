"""Page screenshots of synced files (``--screenshots``): which pages a file has, as PNG, and which chunk is on which.

PDFs and images render themselves (``ExtractedDocument.render_pages``). DOCX and PPTX files are printed to PDF
by headless LibreOffice, HTML pages by headless Chromium (``writers.extract.to_pdf``), and that PDF's pages
are rendered as a PDF's are. A sync's Office files go to LibreOffice a few at a time: when the sync reaches
one that is not converted yet, it and the next ``OFFICE_BATCH - 1`` Office files of the sync are converted by
one process (its start costs seconds; each further file a fraction of that: ``benchmarks/page_screenshots.py``
measured 4.8x less time per file for batches of eight), fewer when they hold more than ``OFFICE_BATCH_BYTES``.

Which page a chunk is on: a slide is a page, so a PPTX chunk keeps its slide number. A DOCX or HTML file
has no pages of its own; its chunks are placed on the pages of the printed PDF by ``PageLocator``, which
looks for each chunk's first words in the PDF's text, forward from where the previous chunk was found,
and for its last words after that. The pages are LibreOffice's and Chromium's layout (Word may break pages
elsewhere), so for these formats the page numbers are approximate.

Without the tool (or when it fails or times out) the file's text is indexed as always and the file gets a
note in the report's warnings saying why it has no screenshots.
"""

from __future__ import annotations

import bisect
import hashlib
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from writers.extract import ExtractedDocument
from writers.extract.pdf import pdf_page_texts, render_pdf_pages
from writers.extract.to_pdf import (
    CHROMIUM_MISSING,
    OFFICE_MISSING,
    OfficeConverter,
    find_chromium,
    find_soffice,
    print_html_to_pdf,
)

OFFICE_KINDS = {"docx": ".docx", "pptx": ".pptx"}
OFFICE_BATCH = 8
OFFICE_BATCH_BYTES = 64 * 2**20  # files read ahead stay in memory until their turn: large decks go fewer at a time
AWAITS_SCREENSHOTS = "+awaits-screenshots"  # appended to a file's settings digest when the tool was missing
LEAD_WORDS = (8, 4, 2)  # how many of a chunk's first words are looked for, longest first
_WORD = re.compile(r"\w+")

Locate = Callable[[str], tuple[int, int] | None]


@dataclass
class PageImages:
    """What a file's screenshots are: (page, PNG) in order, how its chunks find their pages when its
    sections do not say (DOCX, HTML), and why there are none when there are none."""

    pages: Iterator[tuple[int, bytes]] = field(default_factory=lambda: iter(()))
    locate: Locate | None = None
    note: str | None = None
    tool_missing: bool = False  # installing the tool would change the result: re-synced once it is there


class PageLocator:
    """Pages of a document's chunks, found in the text of the PDF it was printed to (see the module doc)."""

    def __init__(self, page_texts: list[str]) -> None:
        parts: list[str] = []
        self._starts: list[int] = []  # where each page's words start in self._text
        self._pages: list[int] = []
        length = 1
        for page, text in enumerate(page_texts, start=1):
            words = _WORD.findall(text.lower())
            if words:
                piece = " ".join(words) + " "
                self._starts.append(length)
                self._pages.append(page)
                parts.append(piece)
                length += len(piece)
        # words only, lower case, one space apart: the PDF's line breaks, hyphens and table rules do not matter
        self._text = " " + "".join(parts)
        self._cursor = 0

    def _page_at(self, offset: int) -> int:
        return self._pages[max(0, bisect.bisect_right(self._starts, offset) - 1)]

    def _find(self, words: list[str], origin: int) -> int:
        needle = " " + " ".join(words) + " "
        position = self._text.find(needle, origin)
        if position < 0 and origin:
            position = self._text.find(needle)
        return position

    def locate(self, text: str) -> tuple[int, int] | None:
        """First and last page of a chunk; None when its words are not in the PDF."""
        words = _WORD.findall(text.lower())
        if not words or not self._pages:
            return None
        for count in LEAD_WORDS:
            start = self._find(words[:count], self._cursor)
            if start >= 0:
                break
        else:
            return None
        self._cursor = start  # chunks overlap: the next one starts before this one ends
        end = self._find(words[-count:], start)
        first = self._page_at(start + 1)
        return first, max(first, self._page_at(end + 1) if end >= 0 else first)


class PageRenderer:
    """The screenshots of one sync's files; ``read`` gives a file's content for a batch converted ahead (None
    when it cannot be read: its own turn reports why), ``local_file`` the file on disk (an HTML page is printed
    in place, so its stylesheets and images load). ``close()`` removes LibreOffice's temporary directory."""

    def __init__(self, scale: float, timeout: float, read: Callable[[str], bytes | None],
                 local_file: Callable[[str], Path | None]) -> None:
        self.scale, self.timeout = scale, timeout
        self._read, self._local_file = read, local_file
        self._soffice, self._chromium = find_soffice(), find_chromium()
        self._office: OfficeConverter | None = None
        self._planned: list[str] = []
        self._position: dict[str, int] = {}
        self._converted: dict[str, tuple[str, bytes | str]] = {}  # path -> (content sha256, PDF or reason)

    def close(self) -> None:
        if self._office is not None:
            self._office.close()
            self._office = None
        self._converted.clear()

    def plan(self, paths: list[str]) -> None:
        """The files this sync will extract, in order: the Office ones are converted in batches."""
        self._planned = [p for p in paths if PurePosixPath(p).suffix.lower() in OFFICE_KINDS.values()]
        self._position = {p: i for i, p in enumerate(self._planned)}

    def tool_available(self, kind: str) -> bool:
        """Whether the tool that renders ``kind`` is installed (a file synced without it is done again)."""
        if kind in OFFICE_KINDS:
            return self._soffice is not None
        return self._chromium is not None if kind == "html" else True

    def render(self, path: str, data: bytes, document: ExtractedDocument) -> PageImages:
        if document.render_pages is not None:  # PDF, image
            return PageImages(document.render_pages(self.scale))
        if document.kind in OFFICE_KINDS:
            if self._soffice is None:
                return PageImages(note=OFFICE_MISSING, tool_missing=True)
            pdf = self._office_pdf(path, data, document.kind)
        elif document.kind == "html":
            if self._chromium is None:
                return PageImages(note=CHROMIUM_MISSING, tool_missing=True)
            pdf = self._html_pdf(path, data)
        else:  # Markdown and text have no pages to show
            return PageImages()
        if isinstance(pdf, str):
            return PageImages(note=f"screenshots skipped: {pdf}; the text is indexed")
        texts = pdf_page_texts(pdf)
        if document.kind == "pptx":  # a slide is a page: the chunks carry their slide numbers already
            if len(texts) != document.page_count:
                return PageImages(note=f"screenshots skipped: LibreOffice printed {len(texts)} pages for "
                                       f"{document.page_count} slides (hidden slides?), so pages and slides "
                                       "cannot be matched; the text is indexed")
            return PageImages(render_pdf_pages(pdf, self.scale))
        return PageImages(render_pdf_pages(pdf, self.scale), PageLocator(texts).locate)

    def _office_pdf(self, path: str, data: bytes, kind: str) -> bytes | str:
        sha = hashlib.sha256(data).hexdigest()
        ahead = self._converted.pop(path, None)
        if ahead is not None and ahead[0] == sha:  # converted with an earlier file's batch, same content
            return ahead[1]
        batch = [(path, OFFICE_KINDS[kind], data)]
        size = len(data)
        index = self._position.get(path)
        for other in self._planned[index + 1:] if index is not None else []:
            if len(batch) >= OFFICE_BATCH or size >= OFFICE_BATCH_BYTES:
                break
            if other in self._converted:
                continue
            content = self._read(other)
            if content is not None:
                batch.append((other, PurePosixPath(other).suffix.lower(), content))
                size += len(content)
        if self._office is None:
            assert self._soffice is not None  # checked by render
            self._office = OfficeConverter(self._soffice, self.timeout)
        results = self._office.convert(batch)
        for other, _, content in batch[1:]:
            self._converted[other] = (hashlib.sha256(content).hexdigest(), results[other])
        return results[path]

    def _html_pdf(self, path: str, data: bytes) -> bytes | str:
        assert self._chromium is not None  # checked by render
        local = self._local_file(path)
        if local is not None and local.is_file() and local.read_bytes() == data:
            return print_html_to_pdf(self._chromium, local, self.timeout)
        # not on disk as read (changed since): print the content read, without its relative resources
        with tempfile.TemporaryDirectory(prefix="kb-page-") as workdir:
            page = Path(workdir) / "page.html"
            page.write_bytes(data)
            return print_html_to_pdf(self._chromium, page, self.timeout)

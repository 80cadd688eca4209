"""What extraction makes of a file: sections of text, each with its heading path and the pages it covers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

EXTRACTION_MODES = ("raw", "structured")


@dataclass
class Section:
    """A run of text under one heading path. ``pages`` lists (character offset, page number) where each
    page starts inside ``text``, in order; it is empty for formats without pages (DOCX, HTML, Markdown, text)."""

    text: str
    path: tuple[str, ...] = ()
    pages: list[tuple[int, int]] = field(default_factory=list)

    def page_range(self, start: int, end: int) -> tuple[int, int] | None:
        """First and last page the characters ``text[start:end]`` lie on."""
        if not self.pages:
            return None
        first = last = self.pages[0][1]
        for offset, page in self.pages:
            if offset <= start:
                first = page
            if offset < max(end, start + 1):
                last = page
        return first, max(first, last)


@dataclass
class ExtractedDocument:
    kind: str  # pdf, docx, pptx, html, markdown, text, image
    sections: list[Section]
    page_count: int | None = None  # pages (PDF), slides (PPTX) or 1 (image); None when the format has no pages
    warnings: list[str] = field(default_factory=list)  # what a reader of the report should know (pages left out)
    render_pages: Callable[[float], Iterator[tuple[int, bytes]]] | None = None  # (page, PNG) for screenshots
    awaits_ocr: bool = False  # pages were left out for want of an OCR engine: installing one changes the result
    title: str | None = None  # the document's own title (HTML <title>), when it has one

    @property
    def text_length(self) -> int:
        return sum(len(s.text.strip()) for s in self.sections)


class SectionBuilder:
    """Accumulates text in document order; ``heading`` starts a new section under a new heading path.

    A section holding nothing but its own heading (a chapter title straight followed by its first
    sub-heading) is not kept on its own: its text opens the next section, so no chunk is a bare title.
    """

    def __init__(self) -> None:
        self.sections: list[Section] = []
        self._path: tuple[str, ...] = ()
        self._levels: list[int] = []  # the level of each heading in _path
        self._parts: list[str] = []
        self._pages: list[tuple[int, int]] = []
        self._length = 0
        self._page: int | None = None

    def heading(self, level: int, title: str) -> None:
        carried = self.flush(carry_bare_heading=True)
        title = " ".join(title.split())
        level = max(1, min(level, 6))
        # a heading closes the open ones of its level and deeper: a page that starts at <h2> and skips
        # levels (h2 then h4) still nests each heading under the last shallower one
        while self._levels and self._levels[-1] >= level:
            self._levels.pop()
        self._path = (*self._path[: len(self._levels)], title)
        self._levels.append(level)
        if carried is not None:
            text, pages = carried
            self._parts, self._pages, self._length = [text], list(pages), len(text)
        if self._page is not None:
            self.page(self._page)

    def page(self, number: int) -> None:
        """The text added from now on lies on page ``number``."""
        self._page = number
        if not self._pages or self._pages[-1][1] != number:
            if self._pages and self._pages[-1][0] == self._length:
                self._pages[-1] = (self._length, number)  # nothing was added on the previous page
            else:
                self._pages.append((self._length, number))

    def add(self, text: str) -> None:
        if not text:
            return
        if self._page is not None and not self._pages:
            self._pages.append((0, self._page))
        self._parts.append(text)
        self._length += len(text)

    def _bare_heading(self, text: str) -> bool:
        return bool(self._path) and " ".join(text.replace("#", " ").split()) == self._path[-1]

    def flush(self, carry_bare_heading: bool = False) -> tuple[str, list[tuple[int, int]]] | None:
        text = "".join(self._parts)
        carried = None
        if text.strip():
            # a page mark at the very end belongs to the next section (its text starts on that page)
            pages = [mark for mark in self._pages if mark[0] < len(text)]
            if carry_bare_heading and self._bare_heading(text):
                carried = (text, pages)
            else:
                self.sections.append(Section(text, self._path, pages))
        self._parts, self._pages, self._length = [], [], 0
        return carried

    def finish(self) -> list[Section]:
        self.flush()
        return self.sections

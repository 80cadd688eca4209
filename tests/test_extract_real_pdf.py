"""PDF extraction on the real manuals Debian documentation packages install (read in place under /usr/share/doc):
every PDF extracts in both modes, page numbers are right, and structured sections follow the PDF's outline."""

from __future__ import annotations

import pytest

from tests.support.real_corpora import real_pdfs
from writers.extract import extract_document
from writers.extract.pdf import PDFIUM_LOCK, open_pdf


def _outline(data: bytes) -> list[tuple[int, str]]:
    with PDFIUM_LOCK:
        pdf = open_pdf(data)
        try:
            return [(item.level, " ".join(item.get_title().split())) for item in pdf.get_toc(max_depth=6)]
        finally:
            pdf.close()


@pytest.fixture(scope="module")
def manuals() -> list[tuple[str, bytes]]:
    return [(str(path), path.read_bytes()) for path in real_pdfs()[:8]]


def test_every_real_pdf_extracts_page_by_page(manuals: list[tuple[str, bytes]]) -> None:
    for path, data in manuals:
        raw = extract_document(path, data, "raw")
        assert raw.kind == "pdf" and raw.page_count and raw.page_count >= 2, path
        pages = [s.pages[0][1] for s in raw.sections]
        assert pages == sorted(pages) and set(pages) <= set(range(1, raw.page_count + 1)), path
        assert len(pages) >= 0.8 * raw.page_count, f"{path}: most pages of a text manual have text"
        assert sum(len(s.text.split()) for s in raw.sections) >= 100 * raw.page_count // 2, path


def test_structured_sections_follow_the_outline(manuals: list[tuple[str, bytes]]) -> None:
    checked = 0
    for path, data in manuals:
        outline = _outline(data)
        if not outline:
            continue
        document = extract_document(path, data, "structured")
        titles = [s.path[-1] for s in document.sections if s.path]
        in_paths = {title for s in document.sections for title in s.path}
        missing = [title for _, title in outline if title not in in_paths]
        assert len(missing) <= 0.1 * len(outline), f"{path}: outline entries not sections: {missing}"
        order = [title for _, title in outline if title in titles and titles.count(title) == 1]
        assert order == sorted(order, key=titles.index), f"{path}: sections out of the outline's order"
        # a section's heading path is its outline path: a level-2 entry sits under its level-1 parent
        parents = {}
        current: list[str] = []
        for level, title in outline:
            current = [*current[:level], title]
            parents[title] = tuple(current)
        nested = [s.path for s in document.sections if s.path and s.path[-1] in parents and len(s.path) > 1]
        assert nested and all(p == parents[p[-1]] for p in nested), path
        checked += 1
    assert checked >= 1, "no real PDF with an outline: install libtasn1-doc (tests/support/real_corpora.py)"

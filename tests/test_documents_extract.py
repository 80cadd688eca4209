"""Document extraction: every format in both modes, page and section metadata, OCR, and every bad-file case."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest

from kb_base.errors import EmptyDocumentError, ExtractionError, InvalidInputError
from kb_base.folders import ManagedFolderDocumentRef
from kb_base.search import image_paths_of
from tests.support.document_files import (
    NESTED_MARKDOWN,
    NOISY_HTML,
    PAGE_FACTS,
    SCANNED_TEXT,
    corrupt_pdf,
    deck_pptx,
    encrypted_pdf,
    guide_docx,
    manual_pdf,
    png_bytes,
    text_image,
)
from writers.document_chunks import PAGE_END_KEY, PAGE_START_KEY, SECTION_KEY, chunk_records
from writers.extract import detect_kind, extract_document
from writers.extract.ocr import ocr_available


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("documents")
    manual = manual_pdf(folder / "manual.pdf")
    return {
        "manual.pdf": manual.read_bytes(),
        "plain.pdf": manual_pdf(folder / "plain.pdf", with_scanned_page=False, outline=False).read_bytes(),
        "locked.pdf": encrypted_pdf(folder / "locked.pdf", manual).read_bytes(),
        "broken.pdf": corrupt_pdf(folder / "broken.pdf").read_bytes(),
        "guide.docx": guide_docx(folder / "guide.docx").read_bytes(),
        "deck.pptx": deck_pptx(folder / "deck.pptx").read_bytes(),
    }


@pytest.fixture
def no_ocr(monkeypatch: pytest.MonkeyPatch) -> None:
    """As on a machine without tesseract: KB_TESSERACT names no binary."""
    monkeypatch.setenv("KB_TESSERACT", "")


def paths_and_texts(document) -> list[tuple[tuple[str, ...], str]]:
    return [(s.path, s.text) for s in document.sections]


def test_pdf_raw_has_one_section_per_page_with_its_own_text(files: dict[str, bytes]) -> None:
    assert ocr_available(), "tesseract-ocr must be installed for the tests (tests/support/system-packages.txt)"
    document = extract_document("/manual.pdf", files["manual.pdf"], "raw")
    assert (document.kind, document.page_count, document.warnings) == ("pdf", 5, [])
    assert [s.pages for s in document.sections] == [[(0, n)] for n in range(1, 6)]
    for number, fact in PAGE_FACTS.items():
        assert fact in document.sections[number - 1].text
        assert all(fact not in s.text for i, s in enumerate(document.sections) if i != number - 1)
    # page 5 is only a picture of text: OCR read it
    assert SCANNED_TEXT.split()[-1] in document.sections[4].text.upper()


def test_pdf_structured_follows_the_outline(files: dict[str, bytes]) -> None:
    document = extract_document("/manual.pdf", files["manual.pdf"], "structured")
    by_path = {s.path: s for s in document.sections}
    # chapter 3's title is straight followed by its sub-heading: no bare-title section, it opens the next one
    assert list(by_path) == [("Chapter 1 Introduction",), ("Chapter 2 Updates",),
                             ("Chapter 3 Troubleshooting", "Resetting"), ("Chapter 4 Warranty",)]
    reset = by_path[("Chapter 3 Troubleshooting", "Resetting")]
    assert reset.text.startswith("Chapter 3 Troubleshooting \nResetting")
    assert PAGE_FACTS[3] in reset.text and reset.page_range(0, len(reset.text)) == (3, 3)
    # the scanned page 5 has no heading of its own: it continues chapter 4, which spans pages 4-5
    warranty = by_path[("Chapter 4 Warranty",)]
    assert warranty.page_range(0, len(warranty.text)) == (4, 5)
    assert warranty.page_range(0, 10) == (4, 4)


def test_pdf_structured_without_outline_uses_font_sizes(files: dict[str, bytes]) -> None:
    document = extract_document("/plain.pdf", files["plain.pdf"], "structured")
    paths = [s.path for s in document.sections]
    # 20pt chapter titles are level 1, the 14pt "Resetting" level 2, the 11pt body text no heading
    assert paths == [("Chapter 1 Introduction",), ("Chapter 2 Updates",), ("Chapter 3 Troubleshooting", "Resetting"),
                     ("Chapter 4 Warranty",)]


def test_chunks_carry_page_range_section_path_and_screenshots(files: dict[str, bytes]) -> None:
    document = extract_document("/manual.pdf", files["manual.pdf"], "structured")
    ref = ManagedFolderDocumentRef("/manuals/manual.pdf", "F1")
    shots = {n: f"/shots/page-{n}.png" for n in range(1, 6)}
    records = chunk_records(document, ref, "ab" * 32, 1000, 100, shots)
    reset = next(r for r in records if PAGE_FACTS[3] in r.text)
    assert json.loads(reset.metadata[SECTION_KEY]) == ["Chapter 3 Troubleshooting", "Resetting"]
    assert (reset.metadata[PAGE_START_KEY], reset.metadata[PAGE_END_KEY]) == (3, 3)
    info = json.loads(reset.metadata["KB_DOCUMENT_INFO"])
    assert info == {"document_ref": {"type": "managed_folder", "folder_id": "F1", "path": "/manuals/manual.pdf"},
                    "page_range": {"start": 3, "end": 3}}
    assert image_paths_of(reset.metadata) == ["/shots/page-3.png"]
    warranty = next(r for r in records if PAGE_FACTS[4] in r.text)
    assert image_paths_of(warranty.metadata) == ["/shots/page-4.png", "/shots/page-5.png"]
    assert len({r.id for r in records}) == len(records) and records[0].id.endswith("#0")


def test_small_chunks_never_cross_a_section_and_know_their_pages(files: dict[str, bytes]) -> None:
    document = extract_document("/manual.pdf", files["manual.pdf"], "raw")
    records = chunk_records(document, ManagedFolderDocumentRef("/m.pdf", "F"), "0" * 64, 40, 0)
    assert len(records) > 10
    for record in records:
        page = record.metadata[PAGE_START_KEY]
        assert page == record.metadata[PAGE_END_KEY]
        assert record.text in document.sections[page - 1].text


def test_without_ocr_an_image_only_page_is_named_and_left_out(files: dict[str, bytes], no_ocr: None) -> None:
    document = extract_document("/manual.pdf", files["manual.pdf"], "raw")
    assert len(document.sections) == 4
    assert len(document.warnings) == 1 and "pages 5 have no text layer" in document.warnings[0]
    assert "tesseract-ocr" in document.warnings[0]


def test_image_only_pdf_and_images_without_ocr_are_empty_with_the_reason(tmp_path: Path, no_ocr: None) -> None:
    """Readable files with nothing to index without OCR: empty (not failed), and awaiting OCR when it is on."""
    from reportlab.lib.utils import ImageReader
    from reportlab.pdfgen import canvas

    pdf = canvas.Canvas(str(tmp_path / "scan.pdf"))
    pdf.drawImage(ImageReader(text_image("HELLO")), 50, 500, width=400, height=100)
    pdf.showPage()
    pdf.save()
    scan = (tmp_path / "scan.pdf").read_bytes()
    with pytest.raises(EmptyDocumentError, match="no page of the PDF has a text layer.*tesseract-ocr") as caught:
        extract_document("/scan.pdf", scan)
    assert caught.value.awaits_ocr
    with pytest.raises(EmptyDocumentError, match="image-only\\) and OCR is off") as caught:
        extract_document("/scan.pdf", scan, ocr=False)
    assert not caught.value.awaits_ocr
    with pytest.raises(EmptyDocumentError, match="needs OCR.*no OCR engine is installed") as caught:
        extract_document("/photo.png", png_bytes(text_image("HELLO")))
    assert caught.value.awaits_ocr
    with pytest.raises(EmptyDocumentError, match="needs OCR to become text and OCR is off"):
        extract_document("/photo.png", png_bytes(text_image("HELLO")), ocr=False)


def test_png_is_read_by_ocr() -> None:
    document = extract_document("/sign.png", png_bytes(text_image("OPEN SUNDAY")), "raw")
    assert document.kind == "image" and document.page_count == 1
    assert "SUNDAY" in document.sections[0].text.upper()
    assert next(document.render_pages(1.0))[1].startswith(b"\x89PNG")


def test_docx_headings_are_nested_sections(files: dict[str, bytes]) -> None:
    structured = extract_document("/guide.docx", files["guide.docx"], "structured")
    assert [s.path for s in structured.sections] == [
        ("Installation guide",), ("Installation guide", "Wiring"), ("Installation guide", "Wiring", "Safety"),
        ("Maintenance",)]
    assert "amber cable" in structured.sections[1].text and "AF-220" in structured.sections[3].text
    assert structured.page_count is None and all(not s.pages for s in structured.sections)
    raw = extract_document("/guide.docx", files["guide.docx"], "raw")
    assert len(raw.sections) == 1 and raw.sections[0].path == () and "Never open the casing" in raw.sections[0].text


def test_pptx_slides_are_pages_and_titles_are_sections(files: dict[str, bytes]) -> None:
    structured = extract_document("/deck.pptx", files["deck.pptx"], "structured")
    assert structured.page_count == 4
    assert [(s.path, s.pages) for s in structured.sections] == [
        (("Quarterly results",), [(0, 1)]), (("Roadmap",), [(0, 2)]), (("Hiring",), [(0, 3)]),
        (("Slide 4",), [(0, 4)])]
    assert "Lisbon" in structured.sections[2].text and "penguins" in structured.sections[3].text
    raw = extract_document("/deck.pptx", files["deck.pptx"], "raw")
    assert [s.pages for s in raw.sections] == [[(0, n)] for n in range(1, 5)] and raw.sections[0].path == ()
    assert structured.render_pages is None  # no renderer for slides: they get no screenshots


def test_html_loses_its_navigation_noise() -> None:
    for mode in ("raw", "structured"):
        document = extract_document("/help.html", NOISY_HTML.encode(), mode)
        text = "".join(s.text for s in document.sections)
        assert "eighty percent" in text and "collection point" in text
        for noise in ("tracking", "color: red", "Shop", "Products", "cookies", "sponsored", "Copyright"):
            assert noise not in text, (mode, noise)
    structured = extract_document("/help.html", NOISY_HTML.encode(), "structured")
    assert [s.path for s in structured.sections] == [
        ("Battery care",), ("Battery care", "Cold weather"), ("Battery care", "Cold weather", "Storage"),
        ("Battery care", "Recycling")]
    assert "a third of its range" in structured.sections[1].text


@pytest.mark.parametrize(("page", "title", "text"), [
    # real sites put noise-like class names on their outermost elements (issue 36): none of them may cost the text
    ('<html><body class="wy-body-for-nav"><div class="document"><h1>Install</h1><p>Run pip install foo.</p>'
     '</div></body></html>', "Install", "Run pip install foo."),
    ('<html><body class="has-navbar-fixed-top"><main><h1>Guide</h1><p>Real content here.</p></main></body></html>',
     "Guide", "Real content here."),
    ('<html><body><div class="container-with-sidebar"><article><h1>T</h1><p>Text of the article.</p></article>'
     '</div></body></html>', "T", "Text of the article."),
    ('<html class="light sidebar-visible"><body><nav id="sidebar">Chapters</nav><div id="content"><main>'
     '<h2>Ownership</h2><p>Each value has an owner.</p></main></div></body></html>', "Ownership",
     "Each value has an owner."),
    # the only text of the page is in a <nav>: it is the page's text, kept (a rule never removes the main text)
    ("<html><body><nav><a href='a.html'>Alpha release notes</a> <a href='b.html'>Beta notes</a></nav></body></html>",
     None, "Alpha release notes"),
])
def test_html_main_text_survives_noise_like_names(page: str, title: str | None, text: str) -> None:
    document = extract_document("/page.html", page.encode(), "structured")
    assert text in "".join(s.text for s in document.sections)
    assert document.sections[0].path == ((title,) if title else ())
    if title == "Ownership":
        assert "Chapters" not in document.sections[0].text


def test_html_keeps_code_blocks_tables_and_link_text() -> None:
    page = """<html><head><title>Config</title></head><body><nav><a href="/">Home</a></nav><main>
<h1>Configuration</h1><p>Set <code>max_wal_size</code> as in the <a href="wal.html">WAL chapter</a>.</p>
<h2>Example</h2><pre><code>def connect(dsn):
    conn = open(dsn)
    return conn</code></pre>
<h2>Limits</h2><table><tr><th>Parameter</th><th>Default</th></tr><tr><td>max_connections</td><td>100</td></tr>
</table><ul><li>first point</li><li>second <code>point</code></li></ul></main></body></html>"""
    document = extract_document("/config.html", page.encode(), "structured")
    sections = {s.path: s.text for s in document.sections}
    assert list(sections) == [("Configuration",), ("Configuration", "Example"), ("Configuration", "Limits")]
    assert "Set max_wal_size as in the WAL chapter." in sections[("Configuration",)]
    assert "def connect(dsn):\n    conn = open(dsn)\n    return conn" in sections[("Configuration", "Example")]
    limits = sections[("Configuration", "Limits")]
    assert "Parameter | Default\nmax_connections | 100" in limits and "- second point" in limits
    assert "Home" not in "".join(sections.values())


@pytest.mark.parametrize(("head", "encoding"), [
    ('<meta charset="windows-1252">', "cp1252"),
    ('<meta http-equiv="Content-Type" content="text/html; charset=ISO-8859-15">', "iso-8859-15"),
    ("", "utf-8"),  # nothing declared: UTF-8 bytes are UTF-8
    ("", "utf-8-sig"),  # a byte order mark
])
def test_html_in_its_declared_charset(head: str, encoding: str) -> None:
    text = "Café crème € 5" if encoding != "iso-8859-15" else "Café crème € 5 (Latin-9)"
    page = f"<html><head>{head}</head><body><main><p>{text}</p></main></body></html>"
    document = extract_document("/menu.html", page.encode(encoding), "raw")
    assert document.sections[0].text.strip() == text and document.warnings == []


def test_html_form_controls_are_not_text() -> None:
    """Buttons and inputs are page furniture (Node.js docs put a "copy" button after every code block)."""
    page = (b"<html><body><main><h1>Install</h1><p>Run the installer.</p><pre>npm install kb</pre>"
            b"<button>copy</button><select><option>v20</option></select><textarea>notes</textarea></main></body></html>")
    text = extract_document("/install.html", page, "raw").sections[0].text
    assert "npm install kb" in text and "Run the installer." in text
    for furniture in ("copy", "v20", "notes"):
        assert furniture not in text


def test_markdown_nested_headings_but_not_hashes_in_code() -> None:
    document = extract_document("/cookbook.md", NESTED_MARKDOWN.encode(), "structured")
    assert [s.path for s in document.sections] == [
        ("Cookbook",), ("Cookbook", "Breads", "Sourdough"), ("Cookbook", "Breads", "Flatbread"), ("Cookbook", "Soups")]
    assert document.sections[1].text.startswith("## Breads\n\n### Sourdough")  # a bare heading opens the next
    assert "# this is code" in document.sections[1].text
    raw = extract_document("/cookbook.md", NESTED_MARKDOWN.encode(), "raw")
    assert [s.text for s in raw.sections] == [NESTED_MARKDOWN]


def test_a_bare_heading_carries_its_page_into_the_next_section() -> None:
    from writers.extract.types import SectionBuilder

    builder = SectionBuilder()
    builder.page(1)
    builder.heading(1, "Part One")
    builder.add("Part One\n")
    builder.page(2)
    builder.heading(2, "Details")
    builder.add("Details\nbody text\n")
    builder.heading(1, "Appendix")
    builder.add("Appendix\n")  # last in the document: kept, even though bare
    (details, appendix) = builder.finish()
    assert details.path == ("Part One", "Details") and details.text == "Part One\nDetails\nbody text\n"
    assert details.pages == [(0, 1), (9, 2)] and details.page_range(0, len(details.text)) == (1, 2)
    assert details.page_range(9, 20) == (2, 2)
    assert appendix.path == ("Appendix",) and appendix.pages == [(0, 2)]


def test_plain_text_and_latin1_fallback() -> None:
    assert extract_document("/a.txt", "café\nline two".encode()).sections[0].text == "café\nline two"
    document = extract_document("/b.txt", "caf\xe9 au lait".encode("latin-1"))
    assert document.sections[0].text == "café au lait" and "Latin-1" in document.warnings[0]


def test_magic_bytes_win_over_the_extension(files: dict[str, bytes]) -> None:
    assert detect_kind("/report.txt", files["manual.pdf"]) == "pdf"
    assert detect_kind("/slides.zip.docx", files["deck.pptx"]) == "pptx"
    assert detect_kind("/notes.md", b"# hi") == "markdown"


@pytest.mark.parametrize(("name", "make", "message"), [
    ("locked.pdf", lambda f: f["locked.pdf"], "password-protected"),
    ("broken.pdf", lambda f: f["broken.pdf"], "not a readable PDF"),
    ("archive.xyz", lambda f: b"whatever", "unsupported file type '.xyz'"),
    ("noext", lambda f: b"whatever", "unsupported file type '\\(no extension\\)'"),
    ("binary.txt", lambda f: b"\x00\x01\x02binary", "binary data"),
    ("fake.docx", lambda f: b"PK\x03\x04 not really a zip", "not a readable DOCX"),
    ("fake.pptx", lambda f: b"this is not a presentation", "not a readable PPTX"),
    ("bad.png", lambda f: b"\x89PNG\r\n\x1a\n truncated", "not a readable image"),
])
def test_every_bad_file_fails_with_its_reason(files: dict[str, bytes], name: str, make, message: str) -> None:
    with pytest.raises(ExtractionError, match=message) as caught:
        extract_document("/" + name, make(files), "structured")
    assert not isinstance(caught.value, EmptyDocumentError), "a file kb cannot read is failed, not empty"


@pytest.mark.parametrize(("name", "data", "message"), [
    ("empty.pdf", b"", "the file is empty \\(0 bytes\\)"),
    ("blank.txt", b"  \n\n ", "no text found in this text file"),
    ("redirect.html", b'<html><head><meta http-equiv="Refresh" content="0; URL=../install/index.html"></head>'
                      b"<body></body></html>", "a redirect page \\(to ../install/index.html\\)"),
    ("shell.html", b'<html><head><script src="app.js"></script></head><body><div id="app"></div></body></html>',
     "empty page shell"),
    ("markup.html", b"<html><body><div><span> </span></div></body></html>", "no visible text"),
])
def test_a_readable_file_with_nothing_to_index_is_empty(name: str, data: bytes, message: str) -> None:
    with pytest.raises(EmptyDocumentError, match=message):
        extract_document("/" + name, data, "structured")


def test_a_docx_zip_without_a_document_part_fails_cleanly() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("word/other.xml", "<x/>")
    with pytest.raises(ExtractionError, match="not a readable DOCX"):
        extract_document("/odd.docx", buffer.getvalue())


def test_unknown_mode_is_refused(files: dict[str, bytes]) -> None:
    with pytest.raises(InvalidInputError, match="unknown extraction mode 'fancy'"):
        extract_document("/manual.pdf", files["manual.pdf"], "fancy")


def test_pdfs_in_parallel_threads_match_sequential_results(files: dict[str, bytes]) -> None:
    """PDFium is not thread-safe: concurrent syncs (REST jobs) must go through kb's lock, one call at a time."""
    from concurrent.futures import ThreadPoolExecutor

    def work(name: str) -> tuple[list[str], list[int]]:
        document = extract_document("/" + name, files[name], "structured")
        return [s.text for s in document.sections], [len(png) for _, png in document.render_pages(0.5)]

    names = ["manual.pdf", "plain.pdf"] * 6
    expected = {name: work(name) for name in set(names)}
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(work, names))
    assert results == [expected[name] for name in names]


def test_html_page_is_read_whole_when_trafilatura_keeps_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """A page with visible text never fails for the main-content extractor's sake: nothing kept (or the library
    raising on an odd page) means the cleaned content, whole, with its headings."""
    import writers.extract.html as html

    page = (b"<html><body><nav>Home</nav><div><h1>Install</h1><p>Run the installer.</p><pre>setup --all\n"
            b"  --quiet</pre></div></body></html>")
    for behaviour in (lambda *a, **k: None, lambda *a, **k: (_ for _ in ()).throw(RuntimeError("odd page"))):
        monkeypatch.setattr(html, "bare_extraction", behaviour)
        document = extract_document("/install.html", page, "structured")
        assert [s.path for s in document.sections] == [("Install",)]
        text = document.sections[0].text
        assert "Run the installer." in text and "setup --all\n  --quiet" in text and "Home" not in text

"""Page screenshots of DOCX, PPTX and HTML files: the real headless LibreOffice and Chromium print them to PDF.

One sync of a folder (a DOCX with page breaks where the test put them, a PPTX, a real page of Python's
documentation) is shared by the module: LibreOffice starts in seconds. Then: the tools taken away
(``KB_SOFFICE``/``KB_CHROMIUM`` naming missing files) leave the text indexed with a note per file, and
bring the screenshots once they are back; the converter's per-file timeout and a file LibreOffice cannot
open; Chromium's page reaches no server.
"""

from __future__ import annotations

import io
import json
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

import kb
from api.cli_sync import _print_report
from kb.core import CoreKnowledgeBank
from kb_base.errors import InvalidInputError
from kb_base.search import image_paths_of
from stores.base import Record
from tests.conftest import FAKE_MODEL_ID, FAKE_MODEL_NAME
from tests.support.document_files import deck_pptx, guide_docx, manual_pdf
from writers.document_chunks import PAGE_END_KEY, PAGE_START_KEY, SOURCE_KEY, document_id
from writers.extract import extract_document
from writers.extract.to_pdf import OfficeConverter, find_chromium, find_soffice, print_html_to_pdf
from writers.screenshots import PageRenderer
from writers.sync import SyncOptions, SyncReport, sync_folder

REAL_PAGE = Path("/usr/share/doc/python3.11/html/library/bisect.html")  # Debian's python3.11-doc
# the documents only: the page's stylesheets sit beside it, for Chromium, as in a real Sphinx build
OPTIONS = SyncOptions(extraction="structured", screenshots=True, chunk_size=400, chunk_overlap=40,
                      include=("*.docx", "*.pptx", "*.html", "*.pdf"))


def paged_docx(path: Path) -> Path:
    """Three pages, each fact on the page the test says (explicit page breaks, so no layout guesswork)."""
    import docx

    document = docx.Document()
    document.add_heading("Installation guide", level=1)
    document.add_paragraph("Unpack the box and place the unit on a flat surface.")
    document.add_page_break()
    document.add_heading("Wiring", level=1)
    document.add_paragraph("Connect the amber cable to port seven before switching on.")
    document.add_page_break()
    document.add_heading("Maintenance", level=1)
    document.add_paragraph("Clean the air filter every six months.")
    table = document.add_table(rows=1, cols=2)
    table.rows[0].cells[0].text = "Filter model"
    table.rows[0].cells[1].text = "AF-220"
    document.save(str(path))
    return path


def new_client(home: Path) -> kb.EmbeddedClient:
    from langchain_core.embeddings import DeterministicFakeEmbedding

    from kb.custom_models import LangChainEmbeddingModel

    client = kb.api_client(home=home)
    client.register_embedding_model(LangChainEmbeddingModel(FAKE_MODEL_NAME, DeterministicFakeEmbedding(size=6)))
    return client


def records_of(core: CoreKnowledgeBank, source: str) -> list[Record]:
    records = [r for batch in core.driver.iter_records() for r in batch if r.metadata[SOURCE_KEY] == source]
    return sorted(records, key=lambda r: int(r.id.rsplit("#", 1)[1]))


def chunk_with(records: list[Record], words: str) -> Record:
    (record,) = [r for r in records if words in r.text]
    return record


def png_size(data: bytes) -> tuple[int, int]:
    image = Image.open(io.BytesIO(data))
    image.load()  # decodes every pixel: a truncated file fails here
    assert image.format == "PNG"
    return image.size


@dataclass
class Synced:
    core: CoreKnowledgeBank
    docs: Path
    report: SyncReport
    shots: dict[str, list[str]]  # source path -> its screenshots, in page order


@pytest.fixture(scope="module")
def synced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Synced]:
    assert find_soffice() and find_chromium(), "these tests need LibreOffice and Chromium: `make test` installs them"
    root = tmp_path_factory.mktemp("screenshots")
    docs = root / "docs"
    (docs / "library").mkdir(parents=True)
    paged_docx(docs / "manual.docx")
    deck_pptx(docs / "deck.pptx")
    # a temporary copy of the page with its stylesheets (the site's layout, as printed from the real site)
    shutil.copy(REAL_PAGE, docs / "library" / REAL_PAGE.name)
    shutil.copytree(REAL_PAGE.parent.parent / "_static", docs / "_static")
    client = new_client(root / "home")
    try:
        core = client.get_default_project().create_knowledge_bank("shots", embedding_llm_id=FAKE_MODEL_ID) \
            .as_core_knowledge_bank()
        report = sync_folder(core, docs, OPTIONS)
        core.refresh()
        written = core.images_folder().list_paths()
        shots = {source: sorted(p for p in written if f"/{document_id(report.folder_id, source)[4:]}/" in p)
                 for source in report.added}
        yield Synced(core, docs, report, shots)
    finally:
        client.close()


def test_office_and_html_files_get_page_screenshots(synced: Synced) -> None:
    report = synced.report
    assert sorted(report.added) == ["/deck.pptx", "/library/bisect.html", "/manual.docx"]
    assert not report.failed and not report.warnings and not report.empty
    assert [p.rsplit("/", 1)[1] for p in synced.shots["/manual.docx"]] == [f"page-000{n}.png" for n in (1, 2, 3)]
    assert [p.rsplit("/", 1)[1] for p in synced.shots["/deck.pptx"]] == [f"page-000{n}.png" for n in (1, 2, 3, 4)]
    html_pages = len(synced.shots["/library/bisect.html"])
    assert html_pages >= 3  # a long reference page prints on several pages
    referenced = {p for source in synced.shots for r in records_of(synced.core, source)
                  for p in image_paths_of(r.metadata)}
    assert referenced == {p for paths in synced.shots.values() for p in paths}  # every page holds a chunk
    images = synced.core.images_folder()
    assert report.screenshots_written == 3 + 4 + html_pages == len(images.list_paths())
    # every image decodes, at the size of its page at 72 dpi: Letter or A4 portrait, a 4:3 slide
    for source, paths in synced.shots.items():
        for path in paths:
            width, height = png_size(images.read(path))
            if source == "/deck.pptx":
                assert (width, height) == pytest.approx((720, 540), abs=2)
            else:
                assert 590 <= width <= 615 and 790 <= height <= 845, (source, path, width, height)


def test_docx_chunks_link_to_the_page_their_text_is_on(synced: Synced) -> None:
    records = records_of(synced.core, "/manual.docx")
    for words, page in (("Unpack the box", 1), ("amber cable", 2), ("air filter", 3), ("AF-220", 3)):
        record = chunk_with(records, words)
        assert (record.metadata[PAGE_START_KEY], record.metadata[PAGE_END_KEY]) == (page, page), words
        assert image_paths_of(record.metadata) == [synced.shots["/manual.docx"][page - 1]]
        info = json.loads(record.metadata["KB_DOCUMENT_INFO"])
        assert info["page_range"] == {"start": page, "end": page}


def test_slides_are_pages(synced: Synced) -> None:
    records = records_of(synced.core, "/deck.pptx")
    for words, slide in (("Revenue grew", 1), ("Lisbon", 3), ("penguins", 4)):
        record = chunk_with(records, words)
        assert record.metadata[PAGE_START_KEY] == slide
        assert image_paths_of(record.metadata) == [synced.shots["/deck.pptx"][slide - 1]]


def test_html_chunks_follow_the_printed_pages(synced: Synced) -> None:
    records = records_of(synced.core, "/library/bisect.html")
    pages = len(synced.shots["/library/bisect.html"])
    starts = [r.metadata[PAGE_START_KEY] for r in records]
    # every chunk was found on the printed pages, in reading order, from the first page to the last
    assert all(PAGE_START_KEY in r.metadata and image_paths_of(r.metadata) for r in records)
    assert starts == sorted(starts) and starts[0] == 1 and records[-1].metadata[PAGE_END_KEY] == pages
    for record in records:
        start, end = record.metadata[PAGE_START_KEY], record.metadata[PAGE_END_KEY]
        assert image_paths_of(record.metadata) == synced.shots["/library/bisect.html"][start - 1:end]
    # the functions' reference comes before the examples at the end of the page
    reference = chunk_with(records, "bisect.insort_left(").metadata[PAGE_START_KEY]
    examples = [r.metadata[PAGE_START_KEY] for r in records if "grade(" in r.text]
    assert examples and reference < examples[0]


def test_an_unchanged_folder_renders_nothing_again(synced: Synced) -> None:
    """The sync records say the files were done with screenshots: nothing is converted or rendered again."""
    again = sync_folder(synced.core, synced.docs, OPTIONS)
    assert len(again.unchanged) == 3 and again.screenshots_written == 0 and not again.warnings


def test_without_the_tools_the_text_is_indexed_with_a_note(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    paged_docx(docs / "manual.docx")
    shutil.copy(REAL_PAGE, docs / "bisect.html")
    manual_pdf(docs / "guide.pdf", with_scanned_page=False)
    monkeypatch.setenv("KB_SOFFICE", str(tmp_path / "missing" / "soffice"))
    monkeypatch.setenv("KB_CHROMIUM", str(tmp_path / "missing" / "chromium"))
    client = new_client(tmp_path / "home")
    try:
        core = client.get_default_project().create_knowledge_bank("bare", embedding_llm_id=FAKE_MODEL_ID) \
            .as_core_knowledge_bank()
        report = sync_folder(core, docs, OPTIONS)
        assert sorted(report.added) == ["/bisect.html", "/guide.pdf", "/manual.docx"]
        assert report.exit_status == 0 and not report.failed
        notes = {w["path"]: w["message"] for w in report.warnings}
        assert set(notes) == {"/bisect.html", "/manual.docx"}
        assert notes["/manual.docx"].startswith("screenshots skipped: LibreOffice not found")
        assert "libreoffice-core-nogui" in notes["/manual.docx"] and "KB_SOFFICE" in notes["/manual.docx"]
        assert notes["/bisect.html"].startswith("screenshots skipped: Chromium not found")
        # the text is all there, without pages or images; the PDF still has its screenshots
        for source in ("/manual.docx", "/bisect.html"):
            records = records_of(core, source)
            assert records and not any(image_paths_of(r.metadata) or PAGE_START_KEY in r.metadata for r in records)
        assert any("amber cable" in r.text for r in records_of(core, "/manual.docx"))
        assert report.screenshots_written == len(core.images_folder().list_paths()) == 4  # the PDF's pages
        _print_report(report, None)  # what `kb sync` prints
        assert "warning: /manual.docx: screenshots skipped: LibreOffice not found" in capsys.readouterr().err

        # without the tools still: nothing to do again
        assert len(sync_folder(core, docs, OPTIONS).unchanged) == 3
        # the tools installed: the files that waited for them are done again, and get their screenshots
        monkeypatch.delenv("KB_SOFFICE")
        monkeypatch.delenv("KB_CHROMIUM")
        later = sync_folder(core, docs, OPTIONS)
        assert sorted(later.updated) == ["/bisect.html", "/manual.docx"] and later.unchanged == ["/guide.pdf"]
        assert not later.warnings and later.screenshots_written >= 3 + 3
        assert image_paths_of(chunk_with(records_of(core, "/manual.docx"), "amber cable").metadata)[0] \
            .endswith("/page-0002.png")
    finally:
        client.close()


def test_a_tool_that_fails_leaves_a_note_and_the_text(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """LibreOffice or Chromium there but failing (here: programs that exit 1 at once): the reason per file."""
    docs = tmp_path / "docs"
    docs.mkdir()
    paged_docx(docs / "manual.docx")
    (docs / "page.html").write_text("<html><body><h1>Kettle</h1><p>Descale it once a month.</p></body></html>")
    monkeypatch.setenv("KB_SOFFICE", "false")
    monkeypatch.setenv("KB_CHROMIUM", "false")
    client = new_client(tmp_path / "home")
    try:
        core = client.get_default_project().create_knowledge_bank("failing", embedding_llm_id=FAKE_MODEL_ID) \
            .as_core_knowledge_bank()
        report = sync_folder(core, docs, OPTIONS)
        assert sorted(report.added) == ["/manual.docx", "/page.html"] and not report.failed
        notes = {w["path"]: w["message"] for w in report.warnings}
        assert notes["/manual.docx"].startswith("screenshots skipped: LibreOffice could not convert it")
        assert notes["/page.html"].startswith("screenshots skipped: Chromium could not print the page (exit "
                                              "status 1)")
        assert all(n.endswith("the text is indexed") for n in notes.values())
        assert report.screenshots_written == 0 and any("Descale" in r.text for r in records_of(core, "/page.html"))
        # the tool is there: a failure is the file's, not retried on every sync
        assert len(sync_folder(core, docs, OPTIONS).unchanged) == 2
    finally:
        client.close()


def test_a_sync_s_office_files_share_one_libreoffice_process(tmp_path: Path) -> None:
    """The first Office file's turn converts the next ones too; their turns take the PDFs already made (and a
    file changed since it was read ahead is converted again)."""
    files = {"/a.docx": paged_docx(tmp_path / "a.docx").read_bytes(), "/b.pptx": deck_pptx(tmp_path / "b.pptx")
             .read_bytes(), "/notes.md": b"# Notes", "/c.docx": paged_docx(tmp_path / "c.docx").read_bytes()}
    renderer = PageRenderer(1.0, 60, files.get, lambda path: None)
    try:
        renderer.plan(list(files))
        pages = {}
        for path in ("/a.docx", "/b.pptx", "/c.docx"):
            data = files[path] if path != "/c.docx" else guide_docx(tmp_path / "c2.docx").read_bytes()
            shots = renderer.render(path, data, extract_document(path, data))
            pages[path] = [png_size(png) for _, png in shots.pages]
            assert shots.note is None
        assert renderer._office is not None
        runs = renderer._office._runs
    finally:
        renderer.close()
    assert [len(p) for p in pages.values()] == [3, 4, 1]  # /c.docx as it is now: one page
    # /a.docx, /b.pptx (and /c.docx as read ahead) in one process; /c.docx, rewritten since, in a second
    assert runs == 2


def _soffice_processes(marker: str) -> list[int]:
    """Processes whose command line holds ``marker`` (the converter's private directory)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def test_a_file_libreoffice_cannot_open_is_reported_and_the_batch_goes_on(tmp_path: Path) -> None:
    soffice = find_soffice()
    assert soffice
    good = paged_docx(tmp_path / "good.docx").read_bytes()
    converter = OfficeConverter(soffice, timeout=60)
    try:
        results = converter.convert([("bad", ".docx", b"PK\x03\x04 this is no zip archive"), ("good", ".docx", good)])
    finally:
        converter.close()
    assert isinstance(results["good"], bytes) and results["good"].startswith(b"%PDF-")
    assert isinstance(results["bad"], str) and results["bad"].startswith("LibreOffice could not convert it")
    assert not converter.workdir.exists()


def test_a_file_over_its_timeout_is_stopped_with_its_process_tree(tmp_path: Path) -> None:
    soffice = find_soffice()
    assert soffice
    deck = deck_pptx(tmp_path / "deck.pptx").read_bytes()
    converter = OfficeConverter(soffice, timeout=0.3, startup=0.0)  # LibreOffice cannot even start in that time
    started = time.monotonic()
    try:
        results = converter.convert([("one", ".pptx", deck), ("two", ".pptx", deck)])
        assert _soffice_processes(str(converter.workdir)) == []  # soffice.bin too, not only the script
    finally:
        converter.close()
    # each file had its own process, stopped after its own timeout
    assert results == {key: "LibreOffice took more than 0.3s to convert it (stopped)" for key in ("one", "two")}
    assert time.monotonic() - started < 20


class _Counting(BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self) -> None:  # noqa: N802  (the standard library's name)
        type(self).hits.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.write(b"fetched")

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


def test_a_printed_page_reaches_no_server(tmp_path: Path) -> None:
    chromium = find_chromium()
    assert chromium
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Counting)
    _Counting.hits = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        page = tmp_path / "page.html"
        page.write_text(f"""<html><head><link rel="stylesheet" href="http://127.0.0.1:{port}/style.css">
<script src="http://localhost:{port}/app.js"></script></head><body><h1>Offline</h1>
<p>Printed without the network.</p><img src="http://127.0.0.1:{port}/pixel.png">
<script>fetch("http://127.0.0.1:{port}/beacon")</script></body></html>""")
        pdf = print_html_to_pdf(chromium, page, timeout=60)
        assert isinstance(pdf, bytes) and pdf.startswith(b"%PDF-"), pdf
        assert _Counting.hits == []
        # the server does answer whoever asks: the page did not ask
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/direct", timeout=10) as answer:
            assert answer.read() == b"fetched"
        assert _Counting.hits == ["/direct"]
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("value", [0, -1, 3601, True, "60"])
def test_a_bad_screenshot_timeout_is_refused(value: object) -> None:
    with pytest.raises(InvalidInputError, match="screenshot_timeout must be a number of seconds"):
        SyncOptions.from_mapping({"screenshots": True, "screenshot_timeout": value})

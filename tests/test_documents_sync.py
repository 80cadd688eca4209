"""Folder sync: the add/change/remove cycle, screenshots, bad files, the sync lock, kill and resume."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from langchain_core.embeddings import DeterministicFakeEmbedding, Embeddings

import kb
from kb.core import CoreKnowledgeBank
from kb.custom_models import LangChainEmbeddingModel
from kb_base.errors import InvalidInputError, SyncBusyError
from kb_base.folders import ManagedFolder
from kb_base.search import image_paths_of
from tests.support.document_files import (
    NESTED_MARKDOWN,
    NOISY_HTML,
    PAGE_FACTS,
    corrupt_pdf,
    deck_pptx,
    encrypted_pdf,
    guide_docx,
    manual_pdf,
)
from writers.document_chunks import SECTION_KEY, SOURCE_KEY
from writers.sync import SyncOptions, SyncReport, sync_folder

ROOT = Path(__file__).resolve().parent.parent


class CountingEmbeddings(Embeddings):
    """The fake model, counting the texts it is asked to embed (what re-embedding would cost)."""

    def __init__(self) -> None:
        self.inner = DeterministicFakeEmbedding(size=6)
        self.texts = 0

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        self.texts += len(texts)
        return self.inner.embed_documents(texts)

    def embed_query(self, text: str) -> list[float]:
        return self.inner.embed_query(text)


@pytest.fixture
def counting(client: kb.EmbeddedClient) -> CountingEmbeddings:
    embeddings = CountingEmbeddings()
    client.register_embedding_model(LangChainEmbeddingModel("count6", embeddings))
    return embeddings


def make_core(client: kb.EmbeddedClient, name: str = "docs", model: str = "custom:count6") -> CoreKnowledgeBank:
    return client.get_default_project().create_knowledge_bank(name, embedding_llm_id=model).as_core_knowledge_bank()


def fill_folder(folder: ManagedFolder, scratch: Path) -> None:
    scratch.mkdir(parents=True, exist_ok=True)
    manual = manual_pdf(scratch / "manual.pdf")
    folder.upload_file("/manuals/manual.pdf", manual)
    folder.upload_file("/guide.docx", guide_docx(scratch / "guide.docx"))
    folder.upload_file("/deck.pptx", deck_pptx(scratch / "deck.pptx"))
    folder.upload_data("/web/help.html", NOISY_HTML.encode())
    folder.upload_data("/cookbook.md", NESTED_MARKDOWN.encode())
    folder.upload_data("/notes.txt", b"The spare key is under the third flower pot.")
    folder.upload_file("/broken.pdf", corrupt_pdf(scratch / "broken.pdf"))
    folder.upload_file("/locked.pdf", encrypted_pdf(scratch / "locked.pdf", manual))
    folder.upload_data("/table.xlsx", b"PK\x03\x04 spreadsheet")


def chunk_sources(core: CoreKnowledgeBank) -> dict[str, int]:
    counts: dict[str, int] = {}
    for batch in core.driver.iter_records():
        for record in batch:
            counts[record.metadata[SOURCE_KEY]] = counts.get(record.metadata[SOURCE_KEY], 0) + 1
    return counts


def image_files(core: CoreKnowledgeBank) -> set[str]:
    return set(core.images_folder().list_paths())


def referenced_images(core: CoreKnowledgeBank) -> set[str]:
    return {p for batch in core.driver.iter_records() for r in batch for p in image_paths_of(r.metadata)}


def test_add_change_remove_cycle(client: kb.EmbeddedClient, counting: CountingEmbeddings, tmp_path: Path) -> None:
    project = client.get_default_project()
    folder = project.create_managed_folder("manuals")
    fill_folder(folder, tmp_path / "src")
    core = make_core(client)
    assert not core.settings.get("images_folder")

    first = core.sync_folder(folder, extraction="structured", screenshots=True)
    assert sorted(first.added) == ["/cookbook.md", "/deck.pptx", "/guide.docx", "/manuals/manual.pdf",
                                   "/notes.txt", "/web/help.html"]
    assert (first.updated, first.unchanged, first.removed) == ([], [], [])
    reasons = {f["path"]: f["reason"] for f in first.failed}
    assert set(reasons) == {"/broken.pdf", "/locked.pdf", "/table.xlsx"}
    assert "password-protected" in reasons["/locked.pdf"] and "not a readable PDF" in reasons["/broken.pdf"]
    assert "unsupported file type '.xlsx'" in reasons["/table.xlsx"]
    assert first.exit_status == 1 and first.pages == 5 + 4  # the PDF's pages and the deck's slides
    sources = chunk_sources(core)
    assert set(sources) == set(first.added) and sum(sources.values()) == first.chunks_written == core.count()
    assert counting.texts == first.texts_embedded == first.chunks_written
    # the images folder was created and saved in the settings; every PDF page and slide has one screenshot, and
    # the DOCX and the HTML page have theirs, printed by LibreOffice and Chromium (tests/test_documents_screenshots.py)
    core.refresh()
    assert core.settings["images_folder"]
    shots = image_files(core)
    printed = first.screenshots_written - 5 - 4
    assert printed >= 2 and len(shots) == first.screenshots_written and shots == referenced_images(core)

    # the same folder again: no extraction, no embedding, no writes
    calls = counting.texts
    again = core.sync_folder(folder, extraction="structured", screenshots=True)
    assert len(again.unchanged) == 6 and (again.added, again.updated, again.removed) == ([], [], [])
    assert (again.chunks_written, again.texts_embedded, again.embedding_cache_hits, again.commits) == (0, 0, 0, 0)
    assert again.pages == 0 and again.screenshots_written == 0 and counting.texts == calls
    assert len(again.failed) == 3  # bad files are tried again, and still fail

    # change the PDF (page 3 gets a new fact) and the notes, remove the deck, add a file
    facts = {**PAGE_FACTS, 3: "To reset the device, unplug it for one full minute."}
    folder.upload_file("/manuals/manual.pdf", manual_pdf(tmp_path / "v2.pdf", facts=facts))
    folder.upload_data("/notes.txt", b"The spare key is now with the neighbour.")
    folder.delete_path("/deck.pptx")
    folder.upload_data("/new.md", b"# New\n\nA brand new page about kayaks.")
    third = core.sync_folder(folder, extraction="structured", screenshots=True)
    assert sorted(third.updated) == ["/manuals/manual.pdf", "/notes.txt"]
    assert third.added == ["/new.md"] and third.removed == ["/deck.pptx"] and len(third.unchanged) == 3
    sources = chunk_sources(core)
    assert "/deck.pptx" not in sources and sources["/new.md"] == 1
    texts = [r.text for batch in core.driver.iter_records() for r in batch]
    assert any("unplug it for one full minute" in t for t in texts)
    assert not any("pinhole" in t for t in texts) and not any("third flower pot" in t for t in texts)
    # only the texts that changed reached the model; the unchanged pages of the PDF came from the cache
    assert counting.texts - calls == third.texts_embedded < third.chunks_written
    # old screenshots replaced, none left over
    shots = image_files(core)
    assert len(shots) == 5 + printed and shots == referenced_images(core)
    assert third.screenshots_written == 5 and third.screenshots_removed == 5 + 4  # the PDF's old pages, the deck

    # remove everything: no chunk and no screenshot remains
    for path in folder.list_paths():
        folder.delete_path(path)
    last = core.sync_folder(folder, extraction="structured", screenshots=True)
    assert len(last.removed) == 6 and core.count() == 0 and image_files(core) == set()


def test_a_file_that_now_fails_keeps_its_old_chunks(client: kb.EmbeddedClient, counting: CountingEmbeddings,
                                                     tmp_path: Path) -> None:
    folder = client.get_default_project().create_managed_folder("f")
    folder.upload_file("/manual.pdf", manual_pdf(tmp_path / "m.pdf"))
    core = make_core(client)
    first = core.sync_folder(folder)
    assert first.added == ["/manual.pdf"] and not first.failed
    before = core.count()
    folder.upload_file("/manual.pdf", corrupt_pdf(tmp_path / "bad.pdf"))
    second = core.sync_folder(folder)
    assert second.failed[0]["path"] == "/manual.pdf" and "not a readable PDF" in second.failed[0]["reason"]
    assert second.updated == [] and core.count() == before
    hit = core.search(query="pinhole button", k=1, search_type="keyword")[0]
    assert PAGE_FACTS[3] in hit.text


def test_changed_extraction_settings_re_extract_every_file(client: kb.EmbeddedClient, counting: CountingEmbeddings,
                                                            tmp_path: Path) -> None:
    folder = client.get_default_project().create_managed_folder("f")
    folder.upload_data("/cookbook.md", NESTED_MARKDOWN.encode())
    core = make_core(client)
    raw = core.sync_folder(folder, extraction="raw")
    assert {json.loads(r.metadata[SECTION_KEY]) == [] for b in core.driver.iter_records() for r in b} == {True}
    structured = core.sync_folder(folder, extraction="structured")
    assert structured.updated == ["/cookbook.md"] and raw.added == ["/cookbook.md"]
    paths = {tuple(json.loads(r.metadata[SECTION_KEY])) for b in core.driver.iter_records() for r in b}
    assert ("Cookbook", "Breads", "Sourdough") in paths and () not in paths
    assert core.count() == structured.chunks_written  # the raw chunks beyond the new count were removed


def test_a_local_directory_syncs_like_a_folder(client: kb.EmbeddedClient, counting: CountingEmbeddings,
                                               tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "sub" / "a.md").write_text("# A\n\nalpha text")
    (docs / "b.txt").write_text("beta text")
    core = make_core(client)
    report = sync_folder(core, docs)
    assert sorted(report.added) == ["/b.txt", "/sub/a.md"]
    hit = core.search(query="alpha", k=1, search_type="keyword")[0]
    info = json.loads(hit.metadata["KB_DOCUMENT_INFO"])
    assert info["document_ref"] == {"type": "managed_folder", "folder_id": f"local:{docs.resolve()}",
                                    "path": "/sub/a.md"}
    (docs / "b.txt").unlink()
    assert sync_folder(core, docs).removed == ["/b.txt"] and core.count() == 1
    # hidden files and folders are not documents; a file over max_file_bytes fails with the reason
    (docs / ".git").mkdir()
    (docs / ".git" / "HEAD").write_text("ref: refs/heads/main")
    (docs / ".notes.md.swp").write_bytes(b"\x00swap")
    (docs / "big.txt").write_text("x" * 5000)
    report = sync_folder(core, docs, SyncOptions(max_file_bytes=4096))
    assert report.files_total == 2 and report.unchanged == ["/sub/a.md"]
    assert report.failed == [{"path": "/big.txt", "reason": "the file has 5,000 bytes, more than max_file_bytes "
                                                            "(4,096)"}]


def test_bad_options_are_refused(client: kb.EmbeddedClient, counting: CountingEmbeddings, tmp_path: Path) -> None:
    core = make_core(client)
    with pytest.raises(InvalidInputError, match="unknown extraction mode 'fancy'"):
        core.sync_folder(tmp_path, extraction="fancy")
    with pytest.raises(InvalidInputError, match="unknown sync options: colour"):
        core.sync_folder(tmp_path, colour="red")
    with pytest.raises(InvalidInputError, match="chunk_overlap"):
        core.sync_folder(tmp_path, chunk_size=100, chunk_overlap=100)
    with pytest.raises(kb.errors.NotFoundError, match="is not a directory"):
        core.sync_folder(tmp_path / "missing")


def test_two_syncs_never_interleave(client: kb.EmbeddedClient, counting: CountingEmbeddings, tmp_path: Path) -> None:
    folder = client.get_default_project().create_managed_folder("f")
    for n in range(4):
        folder.upload_data(f"/n{n}.txt", f"note number {n}".encode())
    core = make_core(client)
    inside, release = threading.Event(), threading.Event()

    def hold(report: SyncReport) -> None:
        inside.set()
        release.wait(30)

    result: list[SyncReport] = []
    first = threading.Thread(target=lambda: result.append(
        sync_folder(core, folder, SyncOptions(batch_files=1), on_progress=hold)))
    first.start()
    try:
        assert inside.wait(30)
        with pytest.raises(SyncBusyError, match="busy: another folder sync is running") as caught:
            core.sync_folder(folder)
        assert caught.value.http_status == 409 and caught.value.code == "busy"
    finally:
        release.set()
        first.join(30)
    assert len(result[0].added) == 4 and core.count() == 4
    assert core.sync_folder(folder).unchanged == [f"/n{n}.txt" for n in range(4)]  # the lock was released


def test_killed_sync_leaves_whole_files_and_the_rerun_finishes(client: kb.EmbeddedClient, tmp_path: Path) -> None:
    core = make_core(client, model="custom:fake6")
    docs = tmp_path / "docs"
    docs.mkdir()
    manual_pdf(docs / "manual.pdf")
    for n in range(9):
        (docs / f"note{n}.md").write_text(f"# Note {n}\n\n" + f"Paragraph {n} about item {n}. " * 30)
    worker = [sys.executable, "-m", "tests.support.sync_worker", str(client.home), core.id, str(docs)]
    crashed = subprocess.run([*worker, "2"], cwd=ROOT, capture_output=True, text=True)
    assert crashed.returncode == 137, crashed.stderr[-2000:]
    records = [r for batch in core.driver.iter_records() for r in batch]
    by_file: dict[str, list] = {}
    for record in records:
        by_file.setdefault(record.metadata[SOURCE_KEY], []).append(record)
    assert len(by_file) == 4  # two commits of two files each
    for chunks in by_file.values():  # whole files only
        assert len(chunks) == chunks[0].metadata["KB_CHUNKS"]
    after_crash = len(records)
    # what a kill between rendering a file's pages and its commit leaves: screenshots nothing points at
    core.refresh()
    orphan = f"/kb-pages/{core.id}/0123abcd/ffff/page-0001.png"
    core.images_folder().upload_data(orphan, b"\x89PNG orphan")
    finished = json.loads(subprocess.run(worker, cwd=ROOT, capture_output=True, text=True, check=True)
                          .stdout.strip().splitlines()[-1])
    assert len(finished["unchanged"]) == 4 and len(finished["added"]) == 6 and not finished["failed"]
    total = core.count()
    assert finished["chunks_written"] == total - after_crash
    assert finished["texts_embedded"] + finished["embedding_cache_hits"] == total - after_crash
    ids = core.driver.ids_where(None)
    assert len(ids) == len(set(ids)) == total
    images = core.images_folder()
    assert set(images.list_paths()) == referenced_images(core) and len(images.list_paths()) == 5
    assert not images.exists(orphan)
    rerun = json.loads(subprocess.run(worker, cwd=ROOT, capture_output=True, text=True, check=True)
                       .stdout.strip().splitlines()[-1])
    assert len(rerun["unchanged"]) == 10 and rerun["chunks_written"] == rerun["texts_embedded"] == 0


def test_commit_without_its_record_row_is_repaired_without_embedding(
        client: kb.EmbeddedClient, counting: CountingEmbeddings, tmp_path: Path) -> None:
    """A kill between the store commit and the record-manager rows: the next sync re-extracts the file,
    finds its chunks stored, embeds and writes nothing, and records the row."""
    docs = tmp_path / "docs"
    docs.mkdir()
    manual_pdf(docs / "manual.pdf")
    (docs / "a.md").write_text("# A\n\nalpha")
    core = make_core(client)
    first = sync_folder(core, docs, SyncOptions(screenshots=True))
    stored = core.count()
    with sqlite3.connect(core.folder / "sync.sqlite") as conn:
        conn.execute("DELETE FROM synced_files WHERE path = '/manual.pdf'")
    calls = counting.texts
    repaired = sync_folder(core, docs, SyncOptions(screenshots=True))
    assert repaired.added == ["/manual.pdf"] and repaired.unchanged == ["/a.md"]
    assert repaired.chunks_written == 0 and repaired.chunks_skipped == first.chunks_written - 1
    assert counting.texts == calls and core.count() == stored
    assert set(core.images_folder().list_paths()) == referenced_images(core)
    assert sync_folder(core, docs, SyncOptions(screenshots=True)).unchanged == ["/a.md", "/manual.pdf"]


@pytest.mark.slow
def test_a_fact_on_page_three_comes_back_with_page_three_screenshot(tmp_path: Path) -> None:
    """End to end with the real all-MiniLM-L6-v2 model, as the issue's example reads."""
    client = kb.api_client(home=tmp_path / "home")
    try:
        project = client.get_default_project()
        folder = project.create_managed_folder("manuals")
        folder.upload_file("/guide.pdf", manual_pdf(tmp_path / "guide.pdf"))
        folder.upload_file("/other.docx", guide_docx(tmp_path / "other.docx"))
        core = project.create_knowledge_bank("manuals-kb", embedding_llm_id="local:all-MiniLM-L6-v2") \
            .as_core_knowledge_bank()
        report = core.sync_folder(folder, extraction="structured", screenshots=True)
        assert sorted(report.added) == ["/guide.pdf", "/other.docx"] and not report.failed
        for search_type in ("similarity", "hybrid"):
            hit = core.search(query="how do I reset the device?", k=4, search_type=search_type)[0]
            info = json.loads(hit.metadata["KB_DOCUMENT_INFO"])
            assert info["document_ref"] == {"type": "managed_folder", "folder_id": folder.id, "path": "/guide.pdf"}
            assert info["page_range"]["start"] <= 3 <= info["page_range"]["end"]
            assert json.loads(hit.metadata[SECTION_KEY]) == ["Chapter 3 Troubleshooting", "Resetting"]
            images = core.get_images(hit)
            page3 = core.images_folder().read(image_paths_of(hit.metadata)[0])
            assert images == [page3] and image_paths_of(hit.metadata)[0].endswith("/page-0003.png")
            assert images[0].startswith(b"\x89PNG")
    finally:
        client.close()
        shutil.rmtree(tmp_path / "home", ignore_errors=True)


def test_the_readme_rag_chain_cites_document_and_page(client: kb.EmbeddedClient, counting: CountingEmbeddings,
                                                      tmp_path: Path) -> None:
    """The README's LangChain RAG example, run as written; its "llm" echoes the prompt it is given."""
    from langchain_core.messages import AIMessage
    from langchain_core.runnables import RunnableLambda

    readme = (ROOT / "README.md").read_text()
    start = readme.index("import json\n\nfrom langchain_core.output_parsers")
    code = readme[start:readme.index("```", start)]
    folder = client.get_default_project().create_managed_folder("manuals")
    folder.upload_file("/guide.pdf", manual_pdf(tmp_path / "guide.pdf"))
    core = make_core(client)
    core.sync_folder(folder, extraction="structured")
    printed: list[str] = []
    echo = RunnableLambda(lambda prompt: AIMessage(content=prompt.to_string()))
    exec(code, {"core": core, "llm": echo, "print": printed.append})  # noqa: S102 - our own README
    (answer,) = printed
    assert "[/guide.pdf, p. 3 - Chapter 3 Troubleshooting > Resetting]\nChapter 3 Troubleshooting" in answer
    assert PAGE_FACTS[3] in answer and "Question: How do I reset the device?" in answer


@pytest.mark.parametrize("store_type", ["FAISS", "CHROMA"])
def test_sync_on_other_stores_with_filters_on_the_chunk_metadata(client: kb.EmbeddedClient,
                                                                 counting: CountingEmbeddings, tmp_path: Path,
                                                                 store_type: str) -> None:
    folder = client.get_default_project().create_managed_folder("f")
    folder.upload_file("/manual.pdf", manual_pdf(tmp_path / "m.pdf", with_scanned_page=False))
    folder.upload_data("/cookbook.md", NESTED_MARKDOWN.encode())
    core = client.get_default_project().create_knowledge_bank(
        f"docs-{store_type}", embedding_llm_id="custom:count6", vector_store_type=store_type).as_core_knowledge_bank()
    first = core.sync_folder(folder, extraction="structured", chunk_size=200, chunk_overlap=20)
    assert sorted(first.added) == ["/cookbook.md", "/manual.pdf"] and core.count() == first.chunks_written
    on_page_3 = core.search(query="reset", k=10, search_type="similarity",
                            filter={"$and": [{"KB_SOURCE": "/manual.pdf"}, {"KB_PAGE_START": {"$lte": 3}},
                                             {"KB_PAGE_END": {"$gte": 3}}]})
    expected = {r.id for b in core.driver.iter_records() for r in b
                if r.metadata[SOURCE_KEY] == "/manual.pdf" and r.metadata["KB_PAGE_START"] <= 3
                <= r.metadata["KB_PAGE_END"]}
    assert expected and {h.id for h in on_page_3} == expected
    assert any(PAGE_FACTS[3][:30] in h.text for h in on_page_3)
    assert core.count({"KB_DOCUMENT_KIND": "markdown"}) == sum(
        1 for b in core.driver.iter_records() for r in b if r.metadata[SOURCE_KEY] == "/cookbook.md")
    folder.delete_path("/cookbook.md")
    second = core.sync_folder(folder, extraction="structured", chunk_size=200, chunk_overlap=20)
    assert second.removed == ["/cookbook.md"] and second.unchanged == ["/manual.pdf"]
    assert core.count({"KB_DOCUMENT_KIND": "markdown"}) == 0
    assert core.count() == core.count({"KB_SOURCE": "/manual.pdf"}) > 0


def test_pages_left_out_for_want_of_ocr_are_read_once_tesseract_is_there(
        client: kb.EmbeddedClient, counting: CountingEmbeddings, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    folder = client.get_default_project().create_managed_folder("f")
    folder.upload_file("/manual.pdf", manual_pdf(tmp_path / "m.pdf"))
    folder.upload_data("/notes.txt", b"plain notes")
    core = make_core(client)
    monkeypatch.setenv("KB_TESSERACT", "")  # no OCR engine
    first = core.sync_folder(folder)
    assert first.warnings == [{"path": "/manual.pdf", "message": first.warnings[0]["message"]}]
    assert "pages 5 have no text layer" in first.warnings[0]["message"] and not first.failed
    assert core.count({"KB_PAGE_START": 5}) == 0
    assert sorted(core.sync_folder(folder).unchanged) == ["/manual.pdf", "/notes.txt"]  # still no engine
    monkeypatch.delenv("KB_TESSERACT")  # tesseract from PATH
    third = core.sync_folder(folder)
    assert third.updated == ["/manual.pdf"] and third.unchanged == ["/notes.txt"] and third.warnings == []
    (scanned,) = [h for h in core.search(query="OXYGEN", k=3, search_type="keyword")
                  if h.metadata["KB_PAGE_START"] == 5]
    assert "OXYGEN" in scanned.text.upper()
    # the chunk count in every chunk's metadata changed (4 -> 5): all are rewritten, only the new page is embedded
    assert third.chunks_written == 5 and third.texts_embedded == 1 and third.embedding_cache_hits == 4
    assert core.sync_folder(folder).unchanged == ["/manual.pdf", "/notes.txt"]

"""Empty is not failed: a readable file with nothing to index is reported as ``empty`` with its reason, synced
with no chunks, and does not make the sync's exit status 1; an unreadable file stays ``failed``."""

from __future__ import annotations

from pathlib import Path

import pytest
from langchain_core.embeddings import DeterministicFakeEmbedding

import kb
from kb.custom_models import LangChainEmbeddingModel
from tests.support.document_files import corrupt_pdf, text_image

REDIRECT = b'<html><head><meta http-equiv="refresh" content="0; url=guide/index.html"></head><body></body></html>'
SHELL = b'<!doctype html><html><head><script src="/app.js"></script></head><body><div id="root"></div></body></html>'


def image_only_pdf(path: Path) -> bytes:
    from reportlab.lib.utils import ImageReader
    from reportlab.pdfgen import canvas

    pdf = canvas.Canvas(str(path))
    pdf.drawImage(ImageReader(text_image("HELLO")), 50, 500, width=400, height=100)
    pdf.showPage()
    pdf.save()
    return path.read_bytes()


@pytest.fixture
def core(client: kb.EmbeddedClient):
    client.register_embedding_model(LangChainEmbeddingModel("fake6", DeterministicFakeEmbedding(size=6)))
    return client.get_default_project().create_knowledge_bank("docs", embedding_llm_id="custom:fake6") \
        .as_core_knowledge_bank()


def test_empty_files_are_reported_apart_from_failures(core, client: kb.EmbeddedClient, tmp_path: Path) -> None:
    folder = client.get_default_project().create_managed_folder("site")
    folder.upload_data("/index.html", b"<html><body><main><h1>Guide</h1><p>Real content here.</p></main></body></html>")
    folder.upload_data("/old.html", REDIRECT)
    folder.upload_data("/app.html", SHELL)
    folder.upload_data("/scan.pdf", image_only_pdf(tmp_path / "scan.pdf"))
    folder.upload_data("/blank.txt", b"")
    folder.upload_data("/spaces.html", b"\xef\xbb\xbf  \n<!-- generated: nothing to show -->\n")

    first = core.sync_folder(folder, ocr=False)
    reasons = {e["path"]: e["reason"] for e in first.empty}
    assert set(reasons) == {"/old.html", "/app.html", "/scan.pdf", "/blank.txt", "/spaces.html"}
    assert "nothing but whitespace and comments" in reasons["/spaces.html"]
    assert "redirect page (to guide/index.html)" in reasons["/old.html"]
    assert "built by JavaScript" in reasons["/app.html"]
    assert "image-only) and OCR is off" in reasons["/scan.pdf"] and "0 bytes" in reasons["/blank.txt"]
    assert first.added == ["/index.html"] and first.failed == [] and first.exit_status == 0
    assert "1 added, 0 updated, 0 unchanged, 0 removed, 5 empty, 0 failed" in first.summary()
    assert first.to_dict()["empty"] == first.empty and core.count() == first.chunks_written > 0

    # an unchanged re-sync skips them like any synced file
    again = core.sync_folder(folder, ocr=False)
    assert sorted(again.unchanged) == ["/app.html", "/blank.txt", "/index.html", "/old.html", "/scan.pdf",
                                       "/spaces.html"]
    assert again.empty == [] and again.commits == 0

    # a page that becomes a redirect loses its chunks and is empty; a corrupt file is still a failure
    folder.upload_data("/index.html", REDIRECT)
    folder.upload_data("/broken.pdf", corrupt_pdf(tmp_path / "broken.pdf").read_bytes())
    third = core.sync_folder(folder, ocr=False)
    assert third.empty == [{"path": "/index.html", "reason": third.empty[0]["reason"]}]
    assert third.updated == [] and core.count() == 0 and third.chunks_removed == first.chunks_written
    assert [f["path"] for f in third.failed] == ["/broken.pdf"] and third.exit_status == 1


def test_an_image_only_pdf_awaiting_ocr_is_read_once_an_engine_is_there(
        core, client: kb.EmbeddedClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = client.get_default_project().create_managed_folder("scans")
    folder.upload_data("/scan.pdf", image_only_pdf(tmp_path / "scan.pdf"))
    monkeypatch.setenv("KB_TESSERACT", "")  # no OCR engine on this machine
    first = core.sync_folder(folder)
    assert [e["path"] for e in first.empty] == ["/scan.pdf"] and "no OCR engine" in first.empty[0]["reason"]
    assert first.exit_status == 0 and core.sync_folder(folder).unchanged == ["/scan.pdf"]
    monkeypatch.delenv("KB_TESSERACT")  # tesseract from PATH
    third = core.sync_folder(folder)
    assert third.updated == ["/scan.pdf"] and third.empty == [] and core.count() >= 1
    assert "HELLO" in core.search(query="HELLO", k=1, search_type="keyword")[0].text.upper()

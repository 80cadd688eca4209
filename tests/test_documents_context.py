"""A sync's ``include`` patterns and ``embed_context``: chunks embedded under their document title and section
path, stored with their own text; turning it on or off re-embeds."""

from __future__ import annotations

from pathlib import Path

import pytest
from langchain_core.embeddings import DeterministicFakeEmbedding, Embeddings

import kb
from kb.custom_models import LangChainEmbeddingModel
from kb_base.errors import InvalidInputError
from writers.document_chunks import SECTION_KEY, TITLE_KEY, embedding_text

PAGE = b"""<html><head><title>Server Configuration</title></head><body><main><h1>Server Configuration</h1>
<h2>Write Ahead Log</h2><p>max_wal_size is the largest size the WAL may grow to between checkpoints.</p>
</main></body></html>"""


class Recording(Embeddings):
    def __init__(self) -> None:
        self.inner, self.texts = DeterministicFakeEmbedding(size=6), []

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        self.texts += texts
        return self.inner.embed_documents(texts)

    def embed_query(self, text: str) -> list[float]:
        return self.inner.embed_query(text)


def test_embedding_text_puts_title_and_section_path_above_the_text_once() -> None:
    meta = {TITLE_KEY: "Server Configuration", SECTION_KEY: '["Server Configuration", "Write Ahead Log"]'}
    assert embedding_text("body", meta) == "Server Configuration\nWrite Ahead Log\nbody"
    assert embedding_text("body", {SECTION_KEY: '["A", "B"]'}) == "A > B\nbody"
    assert embedding_text("body", {SECTION_KEY: "[]"}) == "body"


def test_include_and_embed_context(client: kb.EmbeddedClient, tmp_path: Path) -> None:
    recording = Recording()
    client.register_embedding_model(LangChainEmbeddingModel("rec6", recording))
    core = client.get_default_project().create_knowledge_bank("docs", embedding_llm_id="custom:rec6") \
        .as_core_knowledge_bank()
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "wal.html").write_bytes(PAGE)
    (docs / "notes.txt").write_text("not selected")

    first = core.sync_folder(docs, extraction="structured", include=["/*.html"])
    assert first.files_total == 1 and first.added == ["/wal.html"]
    stored = [r for batch in core.driver.iter_records() for r in batch]
    assert recording.texts == [r.text for r in stored]  # off by default: the chunk's own text

    recording.texts.clear()
    second = core.sync_folder(docs, extraction="structured", include=["/*.html"], embed_context=True)
    assert second.updated == ["/wal.html"] and second.texts_embedded == second.chunks_written > 0
    stored = [r for batch in core.driver.iter_records() for r in batch]
    assert recording.texts == [embedding_text(r.text, r.metadata) for r in stored]
    assert recording.texts[0].startswith("Server Configuration\nWrite Ahead Log\n")
    assert "max_wal_size" in stored[0].text and not stored[0].text.startswith("Server Configuration\nWrite Ahead Log\n")
    assert stored[0].metadata[TITLE_KEY] == "Server Configuration"
    assert core.sync_folder(docs, extraction="structured", include=["/*.html"], embed_context=True).unchanged == [
        "/wal.html"]

    everything = core.sync_folder(docs, extraction="structured", embed_context=True)
    assert everything.added == ["/notes.txt"] and everything.unchanged == ["/wal.html"]
    assert core.sync_folder(docs, include=["/notes.*"], extraction="structured", embed_context=True).removed == [
        "/wal.html"]
    with pytest.raises(InvalidInputError, match="include must be a list of glob patterns"):
        core.sync_folder(docs, include="/*.html")

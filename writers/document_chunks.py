"""Chunks of an extracted document, with the metadata a RAG answer cites.

Each section is split on its own (a chunk never crosses a section, and in
``raw`` mode a section is one page), with the splitter batch ingestion uses.
Every chunk's metadata holds, besides the metadata formatter's document info
(folder + path, page range) and retrieval content (the page screenshots):

- ``KB_SOURCE``: the file's path in its folder; ``KB_SOURCE_FOLDER``: the folder id
- ``KB_SECTION_PATH``: the heading path, a JSON list of strings (``[]`` when none)
- ``KB_PAGE_START`` / ``KB_PAGE_END``: the page range again as integers, for filters (paged formats only,
  and DOCX and HTML files synced with screenshots: the pages of their printed PDF, see ``writers.screenshots``)
- ``KB_DOCUMENT_KIND``: pdf, docx, pptx, html, markdown, text or image
- ``KB_FILE_SHA256``: the content hash of the whole file
- ``KB_DOCUMENT_TITLE``: the document's own title (an HTML page's <title>), when it has one
- ``KB_CHUNKS`` and ``KB_CONTENT_HASH``: as in batch ingestion (chunk count; text + metadata digest)

``embedding_text`` is what the model embeds for a chunk when the sync's ``embed_context`` is on: the
document's title and the chunk's section path above its text, so that a chunk deep in a long page ("Notes",
"Parameters") is found by what the page is about. The stored text is the chunk's own.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable

from kb_base.folders import ManagedFolderDocumentRef
from stores.base import Record
from writers.chunking import CHUNKS_KEY, HASH_KEY, make_splitter, split_chunks
from writers.extract import ExtractedDocument
from writers.formatter import MetadataFormatter

SOURCE_KEY, FOLDER_KEY, SECTION_KEY = "KB_SOURCE", "KB_SOURCE_FOLDER", "KB_SECTION_PATH"
PAGE_START_KEY, PAGE_END_KEY, KIND_KEY, FILE_HASH_KEY = "KB_PAGE_START", "KB_PAGE_END", "KB_DOCUMENT_KIND", \
    "KB_FILE_SHA256"
TITLE_KEY = "KB_DOCUMENT_TITLE"


def document_id(folder_id: str, path: str) -> str:
    """The stable id prefix of one file's chunks (``<id>#<n>``)."""
    return "doc-" + hashlib.sha256(f"{folder_id}\x00{path}".encode("utf-8", "surrogatepass")).hexdigest()[:32]


def embedding_text(text: str, metadata: dict) -> str:
    """The chunk's text under its document title and section path (each once: a page titled like its first
    heading does not repeat it)."""
    context: list[str] = []
    title = metadata.get(TITLE_KEY)
    if isinstance(title, str) and title.strip():
        context.append(title.strip())
    try:
        path = json.loads(metadata.get(SECTION_KEY) or "[]")
    except ValueError:
        path = []
    headings = [h for h in path if isinstance(h, str) and h and not any(h in c for c in context)]
    if headings:
        context.append(" > ".join(headings))
    return "\n".join([*context, text]) if context else text


def chunk_records(document: ExtractedDocument, ref: ManagedFolderDocumentRef, file_sha256: str, chunk_size: int,
                  chunk_overlap: int, screenshots: dict[int, str] | None = None,
                  embed_context: bool = False,
                  locate: Callable[[str], tuple[int, int] | None] | None = None) -> list[Record]:
    """The records (without vectors) of one document; ``screenshots`` maps page number to image path.
    ``embed_context``: the vectors will be of ``embedding_text`` (part of each chunk's content hash, so that
    turning it on or off re-embeds). ``locate`` gives a chunk's pages when its section has none (a DOCX or
    HTML file printed to PDF for screenshots: ``writers.screenshots.PageLocator``)."""
    splitter = make_splitter(chunk_size, chunk_overlap)
    base = MetadataFormatter().with_original_document_ref(ref)
    pieces: list[tuple[str, dict]] = []
    for section in document.sections:
        for text, start in split_chunks(section.text, splitter, chunk_size):
            if not text.strip():
                continue
            meta = {SOURCE_KEY: ref.path, FOLDER_KEY: ref.folder_id, KIND_KEY: document.kind,
                    SECTION_KEY: json.dumps(list(section.path), ensure_ascii=False), FILE_HASH_KEY: file_sha256}
            if document.title:
                meta[TITLE_KEY] = document.title
            formatter = base
            pages = section.page_range(start, start + len(text))
            if pages is None and locate is not None:
                pages = locate(text)
            if pages is not None:
                meta[PAGE_START_KEY], meta[PAGE_END_KEY] = pages
                formatter = formatter.with_original_document_page_range(*pages)
                images = [screenshots[p] for p in range(pages[0], pages[1] + 1) if screenshots and p in screenshots]
                if images:
                    formatter = formatter.with_retrieval_content(image_paths=images)
            meta.update(formatter.metadata())
            pieces.append((text, meta))
    doc_id = document_id(ref.folder_id, ref.path)
    records = []
    for index, (text, meta) in enumerate(pieces):
        meta[CHUNKS_KEY] = len(pieces)
        canonical = json.dumps(meta, sort_keys=True, ensure_ascii=False)
        embedded = "\x00context" if embed_context else ""
        meta[HASH_KEY] = hashlib.sha256(f"{text}\x00{canonical}{embedded}".encode("utf-8", "surrogatepass")
                                        ).hexdigest()[:32]
        records.append(Record(f"{doc_id}#{index}", text, meta))
    return records

"""Text into chunks, and the reserved keys that let a re-ingestion or a sync skip what did not change.

Shared by row ingestion (``writers.ingest``) and document sync (``writers.document_chunks``, ``writers.sync``);
kept apart from ``writers.ingest`` so that a sync does not import the row readers (pyarrow).
"""

from __future__ import annotations

from langchain_text_splitters import RecursiveCharacterTextSplitter

# every chunk's metadata: the row it came from, how many chunks its row or document made, a hash of its content
ROW_KEY, CHUNKS_KEY, HASH_KEY = "KB_ROW_ID", "KB_CHUNKS", "KB_CONTENT_HASH"


def make_splitter(chunk_size: int, chunk_overlap: int) -> RecursiveCharacterTextSplitter | None:
    if not chunk_size:
        return None
    return RecursiveCharacterTextSplitter(chunk_size=chunk_size, chunk_overlap=chunk_overlap, add_start_index=True)


def split_chunks(text: str, splitter: RecursiveCharacterTextSplitter | None, chunk_size: int) -> list[tuple[str, int]]:
    """(chunk, start index) pairs: the splitter's chunks, or the whole text when chunking is off."""
    if splitter is None:
        return [(text, 0)]
    if len(text) < chunk_size:  # what the splitter makes of a short text, without its cost
        stripped = text.strip()
        return [(stripped, text.find(stripped))] if stripped else []
    return [(d.page_content, int(d.metadata["start_index"])) for d in splitter.create_documents([text])]

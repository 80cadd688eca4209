"""What the keyword index needs to undo a document, kept in blocks of documents (table ``kw_doc_blocks``).

Removing a document needs its length and term ids (to lower their document frequencies and tombstone its
postings). These were a ``kw_docs`` row per document: 100k rows at 100k chunks, half a second of inserts
for data read back only on removal. A block holds up to ``DOCS_PER_BLOCK`` documents of one ``add``, rowids
ascending: ``first_doc`` (key) and ``last_doc`` bound them and blocks never overlap, so a removed rowid
has at most one block. Its packed arrays: rowids (int64), lengths and term counts (uint32) per document,
and every document's term ids one after the other: uint16 when every id of the block is below 65536 (an
index's first 65535 terms: every block of a corpus with a smaller vocabulary), else int32. Removing
documents rewrites their block without them (at most ~1 MB; the FAISS commit rewrites its whole index file
anyway), or deletes it. Indexes written before blocks keep their ``kw_docs`` rows; the index reads both.

Format: blocks written before the uint16 width (index format 2) are all int32 and still read; blocks with
uint16 term ids (format 3) are not readable by earlier code, a one-way change.
"""

from __future__ import annotations

import sqlite3

import numpy as np

from kb_base.errors import StoreError

DOCS_PER_BLOCK = 4096
_DOC, _COUNT, _TERM = np.dtype("<i8"), np.dtype("<u4"), np.dtype("<i4")
_NARROW_TERM = np.dtype("<u2")


def create(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE IF NOT EXISTS kw_doc_blocks (first_doc INTEGER PRIMARY KEY, "
                 "last_doc INTEGER NOT NULL, docs BLOB NOT NULL, lengths BLOB NOT NULL, counts BLOB NOT NULL, "
                 "term_ids BLOB NOT NULL)")


def fits(conn: sqlite3.Connection, rowids: np.ndarray) -> bool:
    """Whether ``rowids`` can go in blocks: strictly ascending and clear of every existing block's range."""
    if rowids.size == 0 or (rowids.size > 1 and np.any(rowids[1:] <= rowids[:-1])):
        return False
    low, high = int(rowids[0]), int(rowids[-1])
    # Blocks never overlap (each went in through this check), so their last documents ascend with their first:
    # the last block starting at or before ``high`` is the only one that can reach ``low``. One index probe, where
    # ``first_doc <= high AND last_doc >= low`` walked every block below ``high`` (250 at 1M chunks).
    row = conn.execute("SELECT last_doc FROM kw_doc_blocks WHERE first_doc <= ? ORDER BY first_doc DESC LIMIT 1",
                       (high,)).fetchone()
    return row is None or row[0] < low


def write(conn: sqlite3.Connection, rowids: np.ndarray, lengths: np.ndarray, counts: np.ndarray,
          doc_terms: np.ndarray) -> None:
    """Blocks for documents ``rowids`` (ascending): ``counts[i]`` term ids of document i in ``doc_terms``."""
    bounds = np.concatenate(([0], np.cumsum(counts)))
    conn.executemany("INSERT INTO kw_doc_blocks VALUES (?, ?, ?, ?, ?, ?)", [
        _row(rowids[s:e], lengths[s:e], counts[s:e], doc_terms[bounds[s] : bounds[e]])
        for s, e in ((s, min(s + DOCS_PER_BLOCK, rowids.size)) for s in range(0, rowids.size, DOCS_PER_BLOCK))
    ])


def _row(rowids: np.ndarray, lengths: np.ndarray, counts: np.ndarray, terms: np.ndarray) -> tuple:
    # arrays, not bytes: sqlite3 binds a contiguous buffer as a blob (copying it), so no second copy here
    return (int(rowids[0]), int(rowids[-1]), np.ascontiguousarray(rowids, dtype=_DOC),
            np.ascontiguousarray(lengths, dtype=_COUNT), np.ascontiguousarray(counts, dtype=_COUNT),
            np.ascontiguousarray(terms, dtype=_term_width(terms)))


def _term_width(terms: np.ndarray) -> np.dtype:
    """uint16 when every id fits (term ids start at 1): half the bytes of a block, most of its size."""
    return _NARROW_TERM if terms.size == 0 or int(terms.max()) <= np.iinfo(_NARROW_TERM).max else _TERM


def _term_ids(blob: bytes, total: int) -> np.ndarray:
    """A block's term ids, ``total`` of them (its term counts' sum). The width is told by the blob's length, not
    recorded: two bytes a term id or four, and ``2 * total == 4 * total`` only when both are empty. No column to
    add, and blocks written before uint16 ids (int32, no marker) read as they are."""
    if len(blob) == _NARROW_TERM.itemsize * total:
        return np.frombuffer(blob, dtype=_NARROW_TERM)
    if len(blob) != _TERM.itemsize * total:
        raise StoreError(f"keyword index: a document block's term ids: {len(blob)} bytes for {total} ids")
    return np.frombuffer(blob, dtype=_TERM)


def take(conn: sqlite3.Connection, rowids: np.ndarray) -> list[tuple[int, int, np.ndarray]]:
    """Remove documents ``rowids`` from their blocks; ``(rowid, length, term ids)`` of those found."""
    if rowids.size == 0:
        return []
    bounds = np.asarray(conn.execute("SELECT first_doc, last_doc FROM kw_doc_blocks ORDER BY first_doc").fetchall(),
                        dtype=np.int64).reshape(-1, 2)
    if bounds.size == 0:
        return []
    at = np.searchsorted(bounds[:, 0], rowids, side="right") - 1
    inside = (at >= 0) & (rowids <= bounds[np.maximum(at, 0), 1])
    taken: list[tuple[int, int, np.ndarray]] = []
    for first in np.unique(bounds[at[inside], 0]).tolist():
        docs_b, lengths_b, counts_b, terms_b = conn.execute(
            "SELECT docs, lengths, counts, term_ids FROM kw_doc_blocks WHERE first_doc = ?", (first,)).fetchone()
        docs, lengths = np.frombuffer(docs_b, dtype=_DOC), np.frombuffer(lengths_b, dtype=_COUNT)
        counts = np.frombuffer(counts_b, dtype=_COUNT)
        gone = np.isin(docs, rowids)
        if not gone.any():
            continue
        starts = np.concatenate(([0], np.cumsum(counts, dtype=np.int64)))
        terms = _term_ids(terms_b, int(starts[-1]))
        taken += [(int(docs[i]), int(lengths[i]), terms[starts[i] : starts[i + 1]])
                  for i in np.flatnonzero(gone).tolist()]
        conn.execute("DELETE FROM kw_doc_blocks WHERE first_doc = ?", (first,))
        kept = ~gone
        if kept.any():
            conn.execute("INSERT INTO kw_doc_blocks VALUES (?, ?, ?, ?, ?, ?)",
                         _row(docs[kept], lengths[kept], counts[kept], terms[np.repeat(kept, counts)]))
    return taken

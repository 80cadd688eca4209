"""The term dictionary (index format 4): every term's id, in sorted blocks of terms (table ``kw_lexicon``).

A row per block of up to ``BLOCK_TERMS`` (256) terms, keyed by its first term: the terms sorted (UTF-8, one per line:
an analysed term is ``\\w`` characters, never a newline) and their ids (int32, same order). It replaces a
``kw_terms`` row per term: at 100k chunks of real text (164k terms) those rows were 2.5 s of b-tree inserts in
a bulk load (two indexes per row), where its 640 blocks take a few milliseconds. A write rewrites only the blocks its
new terms fall in (a bulk load's vocabulary touches them all, a small write a few); a query reads one block per
term (``first_term <= term``, the last such). Document frequencies are not kept here: a term's live postings
are its documents (``stores.keyword.index``), counted when its postings are read.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

import numpy as np

from kb_base.errors import StoreError

BLOCK_TERMS = 256  # ~4 KB of terms: a query's block read is a page or two
_ID = np.dtype("<i4")
_FEW = 16  # terms looked up one block query each; more read the block list first
_FEW_TO_ASSIGN = 512  # terms of a write given ids with a block query each; more read the block list first
_PARAMS = 500


def create(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE IF NOT EXISTS kw_lexicon (first_term TEXT PRIMARY KEY, terms BLOB NOT NULL, "
                 "ids BLOB NOT NULL)")


def _decode(terms: bytes, ids: bytes) -> tuple[list[str], np.ndarray]:
    words = terms.decode("utf-8").split("\n")
    numbers = np.frombuffer(ids, dtype=_ID)
    if len(words) != numbers.size:
        raise StoreError(f"keyword index: a lexicon block holds {len(words)} terms for {numbers.size} ids")
    return words, numbers


def _rows(terms: list[str], ids: np.ndarray) -> list[tuple[str, bytes, bytes]]:
    """Blocks of sorted ``terms``: as many as needed, of equal sizes (at most ``BLOCK_TERMS``)."""
    if "\n" in "".join(terms):  # never from the analyzer (terms are word characters): the blocks' separator
        raise ValueError("keyword index: a term holds a newline")
    count = -(-len(terms) // BLOCK_TERMS)
    edges = [len(terms) * i // count for i in range(count + 1)]
    return [(terms[s], "\n".join(terms[s:e]).encode("utf-8"), np.ascontiguousarray(ids[s:e], dtype=_ID).tobytes())
            for s, e in zip(edges[:-1], edges[1:], strict=True)]


def _block_of(firsts: list[str], terms: Sequence[str]) -> np.ndarray:
    """Index in ``firsts`` (sorted) of the block each of ``terms`` falls in; terms before the first block: 0."""
    at = np.searchsorted(np.asarray(firsts, dtype=object), np.asarray(terms, dtype=object), side="right") - 1
    return np.maximum(at, 0)


def _blocks(conn: sqlite3.Connection, firsts: list[str]) -> dict[str, tuple[list[str], np.ndarray]]:
    out: dict[str, tuple[list[str], np.ndarray]] = {}
    for start in range(0, len(firsts), _PARAMS):
        part = firsts[start : start + _PARAMS]
        for first, terms, ids in conn.execute("SELECT first_term, terms, ids FROM kw_lexicon WHERE first_term IN "
                                              f"({','.join('?' * len(part))})", part):
            out[first] = _decode(terms, ids)
    return out


def lookup(conn: sqlite3.Connection, terms: Sequence[str]) -> dict[str, int]:
    """Ids of those of ``terms`` the dictionary holds (a query's: one block read per term)."""
    found: dict[str, int] = {}
    if len(terms) > _FEW:
        firsts = [r[0] for r in conn.execute("SELECT first_term FROM kw_lexicon ORDER BY first_term")]
        if firsts:
            wanted = sorted(set(terms))
            blocks = _blocks(conn, sorted({firsts[i] for i in _block_of(firsts, wanted).tolist()}))
            for words, ids in blocks.values():
                found.update(zip(words, ids.tolist(), strict=True))
        return {term: found[term] for term in terms if term in found}
    for term in terms:
        row = conn.execute("SELECT terms, ids FROM kw_lexicon WHERE first_term <= ? ORDER BY first_term DESC "
                           "LIMIT 1", (term,)).fetchone()
        if row is not None:
            at = _position(row[0], term)
            if at is not None:
                found[term] = int(np.frombuffer(row[1], dtype=_ID)[at])
    return found


def _position(block: bytes, term: str) -> int | None:
    """Where ``term`` is in a block's terms, found in its bytes (a query's path: a search for the term between
    newlines and a count of the newlines before it, both in C, instead of splitting the block's ~1,000 terms)."""
    needle = term.encode("utf-8")
    if block.startswith(needle + b"\n") or block == needle:
        return 0
    at = block.find(b"\n" + needle + b"\n")
    if at < 0:
        if not block.endswith(b"\n" + needle):
            return None
        at = len(block) - len(needle) - 1
    return block.count(b"\n", 0, at + 1)


def _firsts_for(conn: sqlite3.Connection, terms: list[str]) -> list[str]:
    """First terms (sorted) of blocks that include the one each of ``terms`` (sorted) falls in, and the first block.
    Many terms: every block's, one scan. Few (a small commit's): one indexed query each, since the block list
    grows with the dictionary (a million-chunk store of numbered chunks: ~4,000 blocks, 13 ms a commit to read
    under load, most of what its keyword write cost)."""
    if len(terms) > _FEW_TO_ASSIGN:
        return [r[0] for r in conn.execute("SELECT first_term FROM kw_lexicon ORDER BY first_term")]
    lowest = conn.execute("SELECT MIN(first_term) FROM kw_lexicon").fetchone()[0]
    if lowest is None:
        return []
    found = {lowest}  # terms before every block fall in the first one (``_block_of``)
    for term in terms:
        row = conn.execute("SELECT first_term FROM kw_lexicon WHERE first_term <= ? ORDER BY first_term DESC "
                           "LIMIT 1", (term,)).fetchone()
        if row is not None:
            found.add(row[0])
    return sorted(found)


def assign(conn: sqlite3.Connection, terms: list[str], next_id: int) -> tuple[dict[str, int], list[str]]:
    """Ids of ``terms`` (sorted, distinct), new ones numbered from ``next_id`` in sorted order and added to the
    dictionary: ``(ids, new terms)``. Only the blocks the terms fall in are read, and only those that take new
    terms rewritten (split when they outgrow ``BLOCK_TERMS``)."""
    if not terms:
        return {}, []
    firsts = _firsts_for(conn, terms)
    if not firsts:  # an empty dictionary (a first load): every term is new
        ids = np.arange(next_id, next_id + len(terms), dtype=np.int64)
        conn.executemany("INSERT INTO kw_lexicon VALUES (?, ?, ?)", _rows(terms, ids))
        return dict(zip(terms, ids.tolist(), strict=True)), list(terms)
    at = _block_of(firsts, terms)
    touched = sorted(set(at.tolist()))
    blocks = _blocks(conn, [firsts[i] for i in touched])
    known: dict[str, int] = {}
    for words, ids in blocks.values():
        known.update(zip(words, ids.tolist(), strict=True))
    old = np.fromiter(map(known.get, terms, [-1] * len(terms)), dtype=np.int64, count=len(terms))
    missing = np.flatnonzero(old < 0)
    new_terms = [terms[i] for i in missing.tolist()]
    old[missing] = np.arange(next_id, next_id + missing.size, dtype=np.int64)
    # blocks that take new terms: rewritten with them, in order
    for block in sorted(set(at[missing].tolist())):
        first = firsts[block]
        words, ids = blocks[first]
        mine = missing[at[missing] == block]
        merged = words + [terms[i] for i in mine.tolist()]
        merged_ids = np.concatenate((ids.astype(np.int64), old[mine]))
        order = sorted(range(len(merged)), key=merged.__getitem__)
        conn.execute("DELETE FROM kw_lexicon WHERE first_term = ?", (first,))
        conn.executemany("INSERT INTO kw_lexicon VALUES (?, ?, ?)",
                         _rows([merged[i] for i in order], merged_ids[order]))
    return dict(zip(terms, old.tolist(), strict=True)), new_terms


def convert_terms(conn: sqlite3.Connection) -> None:
    """An index of formats 1-3 keeps a ``kw_terms`` row per term: its terms and ids become blocks (its document
    frequencies are not needed: live postings count them), and the table goes."""
    rows = conn.execute("SELECT term, id FROM kw_terms ORDER BY term").fetchall()
    if rows:
        conn.executemany("INSERT INTO kw_lexicon VALUES (?, ?, ?)",
                         _rows([r[0] for r in rows], np.asarray([r[1] for r in rows], dtype=np.int64)))
    conn.execute("DROP TABLE kw_terms")

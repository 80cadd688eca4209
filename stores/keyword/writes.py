"""The keyword index's batch writes: analysed batches, combined, into its tables (half of ``KeywordIndex``).

A writer's batches are grouped as they are analysed and combined at write time (``stores.keyword.combine``);
what is left here is what needs the database: the index's ids for the combination's terms, the rows of its
documents (to undo them later) and one new segment per term.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence

import numpy as np

from stores.keyword import doc_blocks
from stores.keyword.batch import AnalysedBatch
from stores.keyword.combine import CombinedBatches, DocumentTerms, documents_in

_BATCH = 500
_SCAN_TERMS_AT = 4  # a batch with at least a quarter as many terms as the index reads all of kw_terms
_MAX_TERM_ID = int(np.iinfo(np.int32).max)  # documents' term ids are stored as int32
Blob = bytes | np.ndarray  # sqlite3 binds any contiguous buffer as a blob (copying it)


def _marks(n: int) -> str:
    return ",".join("?" * n)


class BatchWrites:
    """Mixed into ``KeywordIndex``, whose helpers it uses (``_stats``, ``_bump``, ``_term_dtype``,
    ``_forget_reused``, ``_merge_crowded``, ``analyse``)."""

    def write(self, conn: sqlite3.Connection, analysed: Sequence[AnalysedBatch | None]) -> None:
        """Index the documents of batches made by ``analyse`` (rowids ascending from one batch to the next, as a
        writer allocates them): one new segment per term for all of them."""
        self.write_combined(conn, CombinedBatches.of(list(analysed)))

    def write_combined(self, conn: sqlite3.Connection, combined: CombinedBatches) -> None:
        """Index batches already combined (``CombinedRuns.combined``): what is left is mapping the combination's
        term ids to the index's and inserting the rows."""
        if not combined.size:
            return
        self._forget_reused(conn, combined.rowids())
        vocabulary = combined.vocabulary
        # new terms get ids in sorted order, as they always did: a query's terms are scored in id order, so the
        # same order keeps the floating-point sums (the scores) identical to the bit
        ids, new_terms = self._term_ids(conn, sorted(vocabulary))
        if ids and max(ids.values()) > _MAX_TERM_ID:
            raise OverflowError(f"keyword index: more than {_MAX_TERM_ID} distinct terms")
        global_ids = np.fromiter(map(ids.__getitem__, vocabulary), dtype=np.int64, count=len(vocabulary))
        for batch, doc_terms in documents_in(combined.documents, global_ids):
            self._write_doc_terms(conn, batch, doc_terms)
        term_ids, dfs, rows = combined.segments(global_ids)
        self._insert_segments(conn, term_ids, dfs, rows, {term_id: term for term, term_id in new_terms.items()})
        self._bump(conn, "docs", combined.size)
        self._bump(conn, "length", combined.length)
        self._bump(conn, "postings", combined.postings)
        self._merge_crowded(conn, sorted(ids[t] for t in vocabulary if t not in new_terms))  # new ones have one

    def _write_doc_terms(self, conn: sqlite3.Connection, batch: DocumentTerms, doc_terms: np.ndarray) -> None:
        """Each document's length and term ids (to undo it): blocks of documents, or rows of kw_docs for rowids
        that are not ascending or fall in an existing block's range (blocks must not overlap)."""
        if doc_blocks.fits(conn, batch.rowids):
            doc_blocks.write(conn, batch.rowids, batch.lengths, batch.doc_counts, doc_terms)
            return
        doc_terms = doc_terms.astype(self._term_dtype(conn))
        bounds = np.concatenate(([0], np.cumsum(batch.doc_counts)))
        conn.executemany("INSERT INTO kw_docs VALUES (?, ?, ?)", [
            (doc, length, doc_terms[start:end].tobytes())
            for doc, length, start, end in zip(batch.rowids.tolist(), batch.lengths.tolist(), bounds[:-1].tolist(),
                                               bounds[1:].tolist(), strict=True)
        ])

    def _insert_segments(self, conn: sqlite3.Connection, term_ids: list[int], dfs: list[int],
                         rows: Iterable[tuple[Blob, Blob, Blob, int, int]], new_terms: dict[int, str]) -> None:
        """One new segment per term: ``rows`` are its (docs, tfs, lengths, packing, doc_base) as
        ``segment_packing.rows`` makes them; document frequencies and segment counts follow. ``new_terms``
        (id -> term) are not in kw_terms yet: inserted with their counts, one statement instead of an insert
        and an update each."""
        seg = self._stats(conn)["next_seg"]
        self._bump(conn, "next_seg", 1)
        conn.executemany("INSERT INTO kw_segments (term_id, seg, docs, tfs, lengths, packing, doc_base) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?)",
                         ((term, seg, *row) for term, row in zip(term_ids, rows, strict=True)))
        conn.executemany("INSERT INTO kw_terms (term, id, df, segments) VALUES (?, ?, ?, 1)",
                         [(new_terms[term], term, df) for term, df in zip(term_ids, dfs, strict=True)
                          if term in new_terms])
        conn.executemany("UPDATE kw_terms SET df = df + ?, segments = segments + 1 WHERE id = ?",
                         [(df, term) for term, df in zip(term_ids, dfs, strict=True) if term not in new_terms])

    def _term_ids(self, conn: sqlite3.Connection, terms: list[str]) -> tuple[dict[str, int], dict[str, int]]:
        """Ids of ``terms``, and among them the new ones (ids allocated here, rows left to _write_segments)."""
        found: dict[str, int] = {}
        next_id = self._stats(conn)["next_term"]  # above every id: the table has fewer rows than this
        if len(terms) * _SCAN_TERMS_AT >= next_id:
            # a batch's vocabulary is most of the table (a bulk load's): one scan beats lookups by the hundred
            wanted = set(terms)
            found.update((term, id_) for term, id_ in conn.execute("SELECT term, id FROM kw_terms") if term in wanted)
        else:
            for start in range(0, len(terms), _BATCH):
                part = terms[start : start + _BATCH]
                found.update(conn.execute(f"SELECT term, id FROM kw_terms WHERE term IN ({_marks(len(part))})",
                                          part))
        missing = [t for t in terms if t not in found]
        new: dict[str, int] = {}
        if missing:
            new = {t: next_id + i for i, t in enumerate(missing)}
            self._bump(conn, "next_term", len(missing))
            found.update(new)
        return found, new


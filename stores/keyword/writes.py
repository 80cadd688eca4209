"""The keyword index's batch writes: analysed batches, combined, into its tables (half of ``KeywordIndex``).

A writer's batches are grouped as they are analysed and combined at write time (``stores.keyword.combine``);
what is left here is what needs the database: the index's ids for the combination's terms (``lexicon``), the
rows of its documents (to undo them later, ``doc_blocks``) and one new row per bucket of terms (``postings``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

import numpy as np

from stores.keyword import doc_blocks, lexicon, postings
from stores.keyword.batch import AnalysedBatch
from stores.keyword.combine import CombinedBatches, DocumentTerms, documents_in

_BATCH = 500
_MAX_TERM_ID = int(np.iinfo(np.int32).max)  # documents' term ids are stored as int32


def _marks(n: int) -> str:
    return ",".join("?" * n)


class BatchWrites:
    """Mixed into ``KeywordIndex``, whose helpers it uses (``_stats``, ``_bump``, ``_term_dtype``,
    ``_forget_reused``, ``_merge_crowded``, ``analyse``)."""

    def write(self, conn: sqlite3.Connection, analysed: Sequence[AnalysedBatch | None]) -> None:
        """Index the documents of batches made by ``analyse`` (rowids ascending from one batch to the next, as a
        writer allocates them): one new row per bucket of terms for all of them."""
        self.write_combined(conn, CombinedBatches.of(list(analysed)))

    def write_combined(self, conn: sqlite3.Connection, combined: CombinedBatches) -> None:
        """Index batches already combined (``CombinedRuns.combined``): what is left is mapping the combination's
        term ids to the index's (``lexicon.assign``) and inserting the rows: one per bucket of terms
        (``postings.encode``, numpy over the whole write), none per term."""
        if not combined.size:
            return
        self._forget_reused(conn, combined.rowids())
        vocabulary = combined.vocabulary
        # new terms get ids in sorted order, as they always did: a query's terms are scored in id order, so the
        # same order keeps the floating-point sums (the scores) identical to the bit
        ids, new_terms = lexicon.assign(conn, sorted(vocabulary), self._stats(conn)["next_term"])
        if new_terms:
            self._bump(conn, "next_term", len(new_terms))
            if ids[new_terms[-1]] > _MAX_TERM_ID:  # new ids ascend with the terms: the last is the highest
                raise OverflowError(f"keyword index: more than {_MAX_TERM_ID} distinct terms")
        global_ids = np.fromiter(map(ids.__getitem__, vocabulary), dtype=np.int64, count=len(vocabulary))
        for batch, doc_terms in documents_in(combined.documents, global_ids):
            self._write_doc_terms(conn, batch, doc_terms)
        term_ids, bounds, docs, tfs, lengths = combined.by_term(global_ids)
        seg = self._stats(conn)["next_seg"]
        self._bump(conn, "next_seg", 1)
        postings.insert(conn, postings.encode(seg, term_ids, bounds, docs, tfs, lengths))
        self._bump(conn, "docs", combined.size)
        self._bump(conn, "length", combined.length)
        self._bump(conn, "postings", combined.postings)
        self._merge_crowded(conn, np.unique(postings.bucket_of(term_ids)).tolist())

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

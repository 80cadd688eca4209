"""kb's BM25 keyword index: the engine behind keyword, hybrid and semantic-hybrid search on FAISS and Chroma.

The public surface is the three names below; the drivers import nothing else from this package.

- ``KeywordIndex(conn, settings)``: the index in a store's SQLite database. ``analyse`` turns a batch of
  texts into postings (no SQL), ``write`` puts analysed batches into the caller's open transaction,
  ``remove`` undoes documents, ``search`` scores a query. ``NoKeywordIndex`` stands in for a knowledge
  bank whose settings turn keyword search off.
- ``PendingKeywords``: a writer's batches analysed on helper threads while it goes on, written together
  at commit (one segment per term for all of them).

Why our own tables, not FTS5, tantivy or bm25s: the index must commit in the same SQLite transaction as the
records it indexes (FTS5 and our tables do; tantivy and bm25s keep files of their own that would need a
two-phase commit), and BM25's k1 and b must be tunable (FTS5 fixes k1=1.2, b=0.75, which costs nDCG on
SciFact). The caller owns the connection and the transaction; nothing here commits.

On-disk format (index format 3), tables ``kw_*`` in the store's SQLite database:

==================  ========================================================================================
``kw_terms``        term (the analysed token, see ``analysis``) -> ``id``, document frequency ``df``, number
                    of ``segments``. Term ids are dense from 1 (``kw_stats.next_term``).
``kw_segments``     per term, one row per ``write``: three packed little-endian arrays of the postings (doc
                    rowids ascending, term frequencies, document lengths) at the narrowest widths their
                    values fit, recorded per row in ``packing`` as three digits (docs, frequencies, lengths:
                    ``412`` = uint32 / uint8 / uint16; ``844`` = int64 / uint32 / uint32, rows written
                    before the column existed). A docs digit of ``2`` stores the rowids as uint16 gaps after
                    ``doc_base`` (format 3). A rowid table appended in ``seg`` order, indexed by
                    ``(term_id, seg)``. See ``packing``.
``kw_doc_blocks``   what undoing a document needs (its length and term ids), in blocks of up to 4,096
                    documents of one write: ``first_doc`` .. ``last_doc`` (blocks never overlap), rowids
                    (int64), lengths and term counts (uint32), and the term ids one document after the
                    other (uint16 when the block's ids all fit, else int32). See ``doc_blocks``.
``kw_docs``         the same, a row per document: indexes written before blocks, and rowids that fit no
                    block.
``kw_deleted``      tombstones: documents removed while their postings still sit in segments (queries drop
                    them).
``kw_stats``        document count, total length (for the average), postings, tombstones, counters
                    (``next_term``, ``next_seg``), ``format`` and ``doc_term_bytes``.
==================  ========================================================================================

Life of the data: each ``write`` adds one segment per term it touches; a term's segments are merged into
one (its tombstoned postings dropped) once it has ``MERGE_AT`` (8) segments, and every segment is rewritten
once tombstones pass a quarter of the documents. Document frequencies and lengths are exact at every commit,
so scores never depend on merge state. Scoring is numpy over the decoded postings (``search``), with a
cache of decoded postings (``search.PostingsCache``).

Compatibility: format 3 (gapped rowids, uint16 block term ids) is one-way: this code reads and writes indexes
of formats 1 and 2 (their rows read as written; new rows beside them use format 3's widths), but code older
than format 3 cannot read a row written by this one. ``fixtures/keyword_index_format2*.sqlite`` keep that
tested.

Modules: ``analysis`` (tokenise, fold, stop words, stem; per-KB settings), ``kernels`` (numba batch kernels,
compiled on first use), ``batch`` (a batch's postings), ``combine`` (batches merged at commit), ``writes``
(segment and block rows), ``packing``, ``doc_blocks``, ``search`` (BM25 scoring, postings cache), ``index``
(``KeywordIndex``), ``pending`` (``PendingKeywords``).
"""

from stores.keyword.index import KeywordIndex, NoKeywordIndex
from stores.keyword.pending import PendingKeywords

__all__ = ["KeywordIndex", "NoKeywordIndex", "PendingKeywords"]

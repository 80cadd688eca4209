"""kb's BM25 keyword index: the engine behind keyword, hybrid and semantic-hybrid search on FAISS and Chroma.

The public surface is the three names below; the drivers import nothing else from this package.

- ``KeywordIndex(conn, settings)``: the index in a store's SQLite database. ``analyse`` turns a batch of
  texts into postings (no SQL), ``write`` puts analysed batches into the caller's open transaction,
  ``remove`` undoes documents, ``search`` scores a query. ``NoKeywordIndex`` stands in for a knowledge
  bank whose settings turn keyword search off.
- ``PendingKeywords``: a writer's batches analysed on helper threads while it goes on, written together
  at commit (one row per bucket of terms for all of them).

Why our own tables, not FTS5, tantivy or bm25s: the index must commit in the same SQLite transaction as the
records it indexes (FTS5 and our tables do; tantivy and bm25s keep files of their own that would need a
two-phase commit), and BM25's k1 and b must be tunable (FTS5 fixes k1=1.2, b=0.75, which costs nDCG on
SciFact). The caller owns the connection and the transaction; nothing here commits.

On-disk format (index format 4), tables ``kw_*`` in the store's SQLite database. Nothing on the write path is a
row per term: a write adds a row per bucket of 64 term ids and rewrites the dictionary blocks its new terms fall
in, all encoded by numpy over the whole write (at 100k chunks of real text, 164k terms: ~3,200 rows, where format
3 inserted 330k: two per term).

==================  ========================================================================================
``kw_lexicon``      the term dictionary: terms (the analysed tokens, see ``analysis``) sorted, in blocks of up
                    to 256 keyed by their first term, with their ids (int32). Term ids are dense from 1
                    (``kw_stats.next_term``), new terms numbered in sorted order. See ``lexicon``.
``kw_buckets``      postings: per ``(bucket, seg)`` (bucket = term id >> 6, one ``seg`` per write) the
                    bucket's terms present, where each one's postings start, and three columns grouped by
                    term: rowids as uint16 steps with the steps that do not fit escaped (positions and int64
                    values), frequencies and lengths at the write's narrowest widths (``packing``). See
                    ``postings``.
``kw_doc_blocks``   what undoing a document needs (its length and term ids), in blocks of up to 4,096
                    documents of one write: ``first_doc`` .. ``last_doc`` (blocks never overlap), rowids
                    (int64), lengths and term counts (uint32), and the term ids one document after the
                    other (uint16 when the block's ids all fit, else int32). See ``doc_blocks``.
``kw_docs``         the same, a row per document: indexes written before blocks, and rowids that fit no
                    block.
``kw_deleted``      tombstones: documents removed while their postings still sit in bucket rows (queries
                    drop them).
``kw_stats``        document count, total length (for the average), postings, tombstones, counters
                    (``next_term``, ``next_seg``), ``format`` and ``doc_term_bytes``.
``kw_segments``     only in indexes of formats 2-3: a row per term and write (see ``packing``), read beside
                    the buckets and folded into a bucket's row when it merges; dropped once empty (a full
                    compaction).
==================  ========================================================================================

Life of the data: each write adds one row per bucket it touches; a bucket's rows are merged by a tiered policy
(``postings.merge_plans``, issue 34): a row's tier is its size class (below ``TIER_BASE``, 512 postings, then one
per factor of ``MERGE_AT``, 8), and once the newest rows of the newest row's tier or below number ``MERGE_AT``
they become one row (tombstoned postings dropped), taking the seg of the oldest of them, so rows keep their
order. A small commit thus rewrites small rows only: a common term's large rows are rewritten about once per
tier, not at every eighth commit that touches their bucket (at 1M chunks that was most of what a one-document
commit wrote), and a bucket keeps fewer than ``MERGE_AT`` rows per tier (what a query reads). Every row is
rewritten once tombstones pass a quarter of the postings. Indexes written before tiers (a bucket's rows merged
whole into seg 0) are read as they are: same rows, same encoding (``fixtures/keyword_index_format4_whole_merges``).
A term's document frequency is the number of its live postings (a document has one
posting per term; a reused rowid's old postings are merged away first), counted when they are read: exact at
every commit, so scores never depend on merge state. Scoring is numpy over the decoded postings (``search``),
with caches of scored postings and of queried terms' ids per committed generation (``search.PostingsCache``,
``search.TermIdCache``).

Compatibility: format 4 is one-way. Opening an index of formats 1-3 converts its ``kw_terms`` rows into lexicon
blocks (a row per term: quick; the document frequencies are dropped, no longer needed) in the open's
transaction, and leaves its postings where they are (a format 1 ``kw_postings`` table is converted to
buckets, as it was to segments before). Code of format 3 or older cannot read an index once opened by this
code (it would see no ``kw_terms``). ``fixtures/keyword_index_format2*.sqlite`` and
``fixtures/keyword_index_format3.sqlite`` keep the conversion tested.

Modules: ``analysis`` (tokenise, fold, stop words, stem; per-KB settings), ``kernels`` (numba batch kernels,
compiled on first use), ``batch`` (a batch's postings), ``combine`` (batches merged at commit), ``writes``
(a write's rows), ``lexicon`` (the term dictionary), ``postings`` (bucket rows), ``packing`` (batch widths and
format 2-3 segment rows), ``doc_blocks``, ``search`` (BM25 scoring, postings cache), ``index``
(``KeywordIndex``), ``pending`` (``PendingKeywords``).
"""

from stores.keyword.index import KeywordIndex, NoKeywordIndex
from stores.keyword.pending import PendingKeywords

__all__ = ["KeywordIndex", "NoKeywordIndex", "PendingKeywords"]

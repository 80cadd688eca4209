"""A batch of documents analysed for the keyword index: the CPU half of ``KeywordIndex.add``, no database.

Split from the writes so that a writer can run it on a helper thread while its own thread goes on (the
FAISS transaction analyses a batch while the caller prepares the next one): Arrow's kernels and numpy's
sorts, most of the work, release the GIL. It goes as far as the bytes of every segment row; what needs the
database (global term ids, the rows themselves) is left to ``KeywordIndex.write``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from stores import segment_packing
from stores.analysis import Analyzer
from stores.posting_counts import count_pairs


@dataclass(frozen=True)
class AnalysedBatch:
    rowids: np.ndarray  # the documents, int64
    vocabulary: list[str]  # the batch's terms; local term ids index it
    lengths: np.ndarray  # terms per document
    doc_counts: np.ndarray  # distinct terms per document ...
    doc_terms: np.ndarray  # ... and those local term ids, document after document
    segment_terms: np.ndarray  # local term id of each segment row below, ascending
    segment_dfs: list[int]  # documents per segment row
    segments: list[tuple[bytes, bytes, bytes]]  # (docs, tfs, lengths) blobs, packed as ``packing``
    packing: int
    postings: int

    @property
    def size(self) -> int:
        return int(self.rowids.size)


def analyse_batch(analyzer: Analyzer, rowids: Sequence[int], texts: Sequence[str]) -> AnalysedBatch:
    rowids = np.asarray(rowids, dtype=np.int64)
    if rowids.size != len(texts):
        raise ValueError(f"{rowids.size} rowids for {len(texts)} texts")
    positions, terms, vocabulary = analyzer.batch_terms(texts)
    n = len(texts)
    pair_terms, pair_positions, tfs = count_pairs(terms, positions, n, len(vocabulary))
    lengths = np.bincount(positions, minlength=n)
    # a stable sort of positions below 2**16 is a radix sort
    by_doc = np.argsort(pair_positions.astype(np.uint16) if n <= 2**16 else pair_positions, kind="stable")
    docs, posting_lengths = rowids[pair_positions], lengths[pair_positions]
    packing = segment_packing.choose(docs, tfs, posting_lengths)
    docs_p, tfs_p, lengths_p = segment_packing.pack(packing, docs, tfs, posting_lengths)
    starts = np.flatnonzero(np.concatenate(([True], pair_terms[1:] != pair_terms[:-1]))) if pair_terms.size \
        else np.zeros(0, np.int64)
    ends = np.append(starts[1:], pair_terms.size)
    segments = [(docs_p[s:e].tobytes(), tfs_p[s:e].tobytes(), lengths_p[s:e].tobytes())
                for s, e in zip(starts.tolist(), ends.tolist(), strict=True)]
    return AnalysedBatch(rowids, vocabulary, lengths, np.bincount(pair_positions, minlength=n),
                         pair_terms[by_doc], pair_terms[starts], (ends - starts).tolist(), segments, packing,
                         int(pair_terms.size))

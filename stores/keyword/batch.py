"""A batch of documents analysed for the keyword index: the CPU half of ``KeywordIndex.add``, no database.

Split from the writes so that a writer can run it on a helper thread while its own thread goes on (the
FAISS transaction analyses a batch while the caller prepares the next one): the compiled kernels of
``stores.keyword.kernels``, most of the work, release the GIL. It goes as far as the bytes of every segment
row; what needs the database (global term ids, the rows themselves) is left to ``KeywordIndex.write``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from stores.keyword import packing as segment_packing
from stores.keyword.analysis import Analyzer


@dataclass(frozen=True)
class AnalysedBatch:
    rowids: np.ndarray  # the documents, int64
    vocabulary: list[str]  # the batch's terms; local term ids index it
    lengths: np.ndarray  # terms per document
    doc_counts: np.ndarray  # distinct terms per document ...
    doc_terms: np.ndarray  # ... and those local term ids, document after document
    segment_terms: np.ndarray  # local term id of each term's postings below, ascending ...
    segment_bounds: np.ndarray  # ... where they start in the packed arrays (and where the last one ends)
    packed: tuple[np.ndarray, np.ndarray, np.ndarray]  # postings' documents, frequencies, lengths as ``packing``
    packing: int

    @property
    def size(self) -> int:
        return int(self.rowids.size)

    @property
    def postings(self) -> int:
        return int(self.packed[0].size)

    def repacked(self, packing: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.packed if packing == self.packing else segment_packing.pack(packing, *self.packed)


def analyse_batch(analyzer: Analyzer, rowids: Sequence[int], texts: Sequence[str]) -> AnalysedBatch:
    # imported here: numba and the compiled kernels take ~0.5 s to load, which a process that never writes
    # keywords (the CLI, a reader) should not pay at import
    from stores.keyword import kernels as keyword_kernels

    rowids = np.asarray(rowids, dtype=np.int64)
    if rowids.size != len(texts):
        raise ValueError(f"{rowids.size} rowids for {len(texts)} texts")
    data, offsets, kinds = _laid_out(analyzer, texts)
    token_ids, ends, pool = keyword_kernels.tokenize(data, offsets, kinds, keyword_kernels.TABLES)
    # Python sees each distinct token once (stems and stop words are looked up per distinct token)
    tokens = pool.tobytes().decode("utf-8").split(" ")[:-1]
    term_of_token, vocabulary = analyzer.term_ids(tokens)
    lengths, doc_counts, doc_terms, bounds, positions, tfs = keyword_kernels.postings(
        token_ids, ends, term_of_token, len(vocabulary))
    # The packing is chosen from the documents that have postings (the very values the postings hold), so each
    # column is gathered straight into its stored width: no int64 column of 1.4M postings per 20k batch first
    # (fresh memory, which costs more than the gather on this VM).
    has_postings = doc_counts > 0
    packing = segment_packing.choose(rowids[has_postings], tfs, lengths[has_postings])
    doc_type, tf_type, length_type = segment_packing.dtypes(packing)
    packed = (rowids.astype(doc_type)[positions], tfs.astype(tf_type), lengths.astype(length_type)[positions])
    # every term of the vocabulary occurs in some text: each has postings
    return AnalysedBatch(rowids, vocabulary, lengths, doc_counts, doc_terms, np.arange(len(vocabulary)), bounds,
                         packed, packing)


def _laid_out(analyzer: Analyzer, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The texts as the tokenizer reads them: bytes end to end, where each text starts, how to read each.

    ASCII texts go as they are (the kernel does ``Analyzer.tokens``' ASCII path); any other text is tokenised
    here by ``Analyzer.tokens`` (accent folding, Unicode ``\\w``) and goes as its tokens joined by spaces."""
    joined = "".join(texts)
    if joined.isascii():  # the common case: no copy per text
        parts: Sequence[str] = texts
        kinds = np.zeros(len(texts), np.uint8)
        data = joined.encode("ascii")
        sizes = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
    else:
        kinds = np.fromiter((0 if text.isascii() else 1 for text in texts), dtype=np.uint8, count=len(texts))
        parts = [text.encode("ascii") if text.isascii() else " ".join(analyzer.tokens(text)).encode("utf-8")
                 for text in texts]
        data = b"".join(parts)
        sizes = np.fromiter(map(len, parts), dtype=np.int64, count=len(parts))
    offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    return np.frombuffer(data, dtype=np.uint8), offsets, kinds


def combined_columns(batches: Sequence[AnalysedBatch], global_ids: Sequence[np.ndarray]
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray], int]:
    """Several batches' postings in one go, grouped by term: ``(terms ascending, where each term's postings
    start and end, (docs, tfs, lengths) columns, packing)``. Every batch's postings are already grouped by term:
    the groups are put in (term, batch) order by copying each as a block (``keyword_kernels.copy_groups``), no
    sort of postings and no gather by index."""
    packing = segment_packing.widest([b.packing for b in batches])
    empty = np.zeros(0, np.int64)
    if not any(b.postings for b in batches):  # every document empty or stop words only
        return empty, empty, empty, (empty, empty, empty), packing
    arrays = [b.repacked(packing) for b in batches]
    group_terms = np.concatenate([g[b.segment_terms] for b, g in zip(batches, global_ids, strict=True)])
    group_batches = np.concatenate([np.full(b.segment_terms.size, i) for i, b in enumerate(batches)])
    group_starts = np.concatenate([b.segment_bounds[:-1] for b in batches])  # within the group's own batch
    group_sizes = np.concatenate([np.diff(b.segment_bounds) for b in batches])
    order = np.lexsort((group_batches, group_terms))
    sizes, starts, terms, owners = group_sizes[order], group_starts[order], group_terms[order], group_batches[order]
    new_starts = np.concatenate(([0], np.cumsum(sizes)[:-1])).astype(np.int64)
    total = sum(b.postings for b in batches)
    from stores.keyword import kernels as keyword_kernels

    # each batch's groups are copied from its own arrays: no concatenation of them first (at 100k chunks that
    # was 35 MB of fresh memory and a copy, for postings copied once more right after)
    mine = [np.flatnonzero(owners == i) for i in range(len(batches))]
    columns = []
    for c in range(3):
        out = np.empty(total, dtype=arrays[0][c].dtype)
        for i, picked in enumerate(mine):
            source = np.ascontiguousarray(arrays[i][c])
            keyword_kernels.copy_groups(source.view(np.uint8), starts[picked], sizes[picked], new_starts[picked],
                                        out.dtype.itemsize, out.view(np.uint8))
        columns.append(out)
    first = np.concatenate(([True], terms[1:] != terms[:-1])) if terms.size else np.zeros(0, bool)
    term_starts = new_starts[first]
    term_ends = np.append(term_starts[1:], total)
    return terms[first], term_starts, term_ends, (columns[0], columns[1], columns[2]), packing

"""Buffered keyword batches combined as they arrive: one group of postings per term for all of them.

A FAISS writer buffers its batches and writes them together, one segment per term (``KeywordIndex.write``).
Combining them all at commit (``combined_segments``: a sort of every batch's term groups and a gather of every
posting) cost 0.1-0.35 s of the commit at 100k chunks, with the writer's thread waiting. Here each batch is
merged into a running state as soon as it is analysed, on the analysis thread, in a term space of the
writer's own (running term ids: a term's id is its rank of first appearance among the buffered batches); the
database's term ids are only known at write time, when mapping the running ids to them is one small lookup
per distinct term. The commit is left with mapping ids and inserting rows.

A merge keeps each term's postings contiguous, batch after batch (rowids ascend from batch to batch, so each
term's documents stay ascending): a batch whose terms are all new is appended; otherwise one mask says which
posting of the merged arrays comes from the batch, and two masked copies per array place the old postings and
the batch's (streaming copies, about twice as fast as a gather by index, and numpy releases the GIL in them).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from stores import segment_packing
from stores.keyword_batch import AnalysedBatch, combined_columns

_NO_POSTINGS = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64))


@dataclass(frozen=True)
class DocumentTerms:
    """What the keyword index keeps per document of one batch to undo it later (``doc_blocks``)."""

    rowids: np.ndarray  # int64
    lengths: np.ndarray  # terms per document
    doc_counts: np.ndarray  # distinct terms per document ...
    doc_terms: np.ndarray  # ... and their running term ids, document after document (int32)


class CombinedBatches:
    """Analysed batches (rowids ascending from one to the next) merged into one group of postings per term.

    Not thread-safe: the caller serialises ``add`` calls (``PendingKeywords`` holds a lock around them)."""

    def __init__(self) -> None:
        self.vocabulary: list[str] = []  # running term id -> term
        self._ids: dict[str, int] = {}
        self.bounds = np.zeros(1, np.int64)  # running term t's postings are [bounds[t], bounds[t + 1])
        self.columns: tuple[np.ndarray, np.ndarray, np.ndarray] = _NO_POSTINGS  # docs, tfs, lengths, packed
        self.packing: int | None = None  # None until a batch with postings came
        self.documents: list[DocumentTerms] = []  # per batch, in order
        self.size = 0
        self.length = 0  # terms in all documents

    @classmethod
    def of(cls, batches: list[AnalysedBatch | None]) -> CombinedBatches:
        runs = CombinedRuns()
        for batch in batches:
            runs.add(batch)
        return runs.combined()

    @classmethod
    def from_batches(cls, batches: list[AnalysedBatch]) -> CombinedBatches:
        """Several batches (rowids ascending from one to the next) combined in one go: one sort of their term
        groups and one gather of their postings (``combined_columns``), however many batches."""
        combined = cls()
        batches = [b for b in batches if b is not None and b.size]
        locals_ = [combined._running_ids(batch.vocabulary) for batch in batches]
        terms, starts, ends, columns, packing = combined_columns(batches, locals_) if batches else (
            np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64), _NO_POSTINGS, None)
        sizes = np.zeros(len(combined.vocabulary), np.int64)
        sizes[terms] = ends - starts
        combined.bounds = np.concatenate(([0], np.cumsum(sizes))).astype(np.int64)
        combined.columns = columns
        combined.packing = packing if any(b.postings for b in batches) else None
        for batch, running in zip(batches, locals_, strict=True):
            combined.documents.append(DocumentTerms(batch.rowids, batch.lengths, batch.doc_counts,
                                                    running[batch.doc_terms].astype(np.int32)))
            combined.size += batch.size
            combined.length += int(batch.lengths.sum())
        return combined

    @property
    def postings(self) -> int:
        return int(self.bounds[-1])

    def rowids(self) -> np.ndarray:
        return np.concatenate([d.rowids for d in self.documents]) if self.documents else np.zeros(0, np.int64)

    def add(self, batch: AnalysedBatch | None) -> None:
        """Merge a batch in (its rowids above every rowid already here). All or nothing: on a failure (memory)
        the state is left as it was."""
        if batch is None or not batch.size:
            return
        self._merge_in(batch.vocabulary, [DocumentTerms(batch.rowids, batch.lengths, batch.doc_counts,
                                                        batch.doc_terms)], batch, batch.size, int(batch.lengths.sum()))

    def absorb(self, later: CombinedBatches) -> None:
        """Merge a combination of later batches in (its rowids above every rowid here), as if its batches had
        been added one by one. All or nothing, as ``add``."""
        if not later.size:
            return
        if not self.size and not self.vocabulary:  # nothing here yet: take its state as it is
            self.vocabulary, self._ids, self.bounds = later.vocabulary, later._ids, later.bounds
            self.columns, self.packing, self.documents = later.columns, later.packing, later.documents
            self.size, self.length = later.size, later.length
            return
        self._merge_in(later.vocabulary, later.documents, _AsBatch(later), later.size, later.length)

    def _merge_in(self, vocabulary: list[str], documents: list[DocumentTerms], groups: AnalysedBatch | _AsBatch,
                  size: int, length: int) -> None:
        """Merge postings grouped by term (``groups``: a batch, or a combination seen as one) whose term ids
        index ``vocabulary``, and their documents (term ids in the same space)."""
        known = len(self.vocabulary)
        running = self._running_ids(vocabulary)
        try:
            mapped = [DocumentTerms(d.rowids, d.lengths, d.doc_counts, running[d.doc_terms].astype(np.int32))
                      for d in documents]
            merged = self._merged(groups, running) if groups.postings else None  # type: ignore[arg-type]
        except BaseException:
            self._forget_terms_from(known)
            raise
        if merged is not None:
            self.bounds, self.columns, self.packing = merged
        self.documents.extend(mapped)
        self.size += size
        self.length += length

    def _running_ids(self, vocabulary: list[str]) -> np.ndarray:
        """Running ids of a batch's terms (its local ids index the result); new terms get the next ids."""
        ids, known = self._ids, len(self.vocabulary)
        fresh = [term for term in vocabulary if term not in ids]  # a batch's vocabulary has no duplicates
        try:
            ids.update(zip(fresh, range(known, known + len(fresh)), strict=True))
            self.vocabulary.extend(fresh)
            return np.fromiter(map(ids.__getitem__, vocabulary), dtype=np.int64, count=len(vocabulary))
        except BaseException:
            for term in fresh:
                ids.pop(term, None)
            del self.vocabulary[known:]
            raise

    def _forget_terms_from(self, known: int) -> None:
        """Take back the running ids from ``known`` on (a batch that could not be merged)."""
        for term in self.vocabulary[known:]:
            del self._ids[term]
        del self.vocabulary[known:]

    def _merged(self, batch: AnalysedBatch, running: np.ndarray
                ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray], int]:
        packing = batch.packing if self.packing is None else segment_packing.widest([self.packing, batch.packing])
        old = self.columns if packing == self.packing else segment_packing.pack(packing, *self.columns)
        new = batch.repacked(packing)
        terms = running[batch.segment_terms]  # a running id per group of the batch's postings (distinct)
        group_sizes = np.diff(batch.segment_bounds)
        known = self.bounds.size - 1
        sizes = np.zeros(len(self.vocabulary), np.int64)
        sizes[:known] = np.diff(self.bounds)
        batch_sizes = np.zeros(len(self.vocabulary), np.int64)
        batch_sizes[terms] = group_sizes
        bounds = np.concatenate(([0], np.cumsum(sizes + batch_sizes)))
        ascending = bool(terms.size < 2 or np.all(terms[1:] > terms[:-1]))
        if known == 0 and ascending:  # the first batch with postings
            return bounds, new, packing
        if ascending and int(terms[0]) >= known:  # only new terms, in order: appended
            return bounds, (np.concatenate((old[0], new[0])), np.concatenate((old[1], new[1])),
                            np.concatenate((old[2], new[2]))), packing
        if not ascending:  # the batch's groups in running-id order (terms seen before come first in a batch)
            order = np.argsort(terms, kind="stable")
            starts = batch.segment_bounds[:-1][order]
            ordered_sizes = group_sizes[order]
            new_starts = np.concatenate(([0], np.cumsum(ordered_sizes)[:-1]))
            gather = np.arange(batch.postings, dtype=np.int64) + np.repeat(starts - new_starts, ordered_sizes)
            new = tuple(column[gather] for column in new)
        # per term: its old postings, then the batch's
        from_batch = np.repeat(np.tile(np.array([False, True]), sizes.size), np.stack((sizes, batch_sizes), 1).ravel())
        from_state = ~from_batch
        columns = []
        for a, b in zip(old, new, strict=True):
            merged = np.empty(int(bounds[-1]), dtype=a.dtype)
            merged[from_state] = a
            merged[from_batch] = b
            columns.append(merged)
        return bounds, (columns[0], columns[1], columns[2]), packing

    # --- what a write needs, once the database's term ids are known -----------------------------------------

    def segments(self, global_ids: np.ndarray
                 ) -> tuple[list[int], list[int], Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, int, int]]]:
        """``(term ids ascending, document frequencies, (docs, tfs, lengths, packing, doc_base) per term)``: the
        rows of one new segment per term, each term's rowids gapped where they fit (``segment_packing.rows``,
        whose gaps are computed for the whole column at once). The arrays are views of the combined postings
        (sqlite3 binds any contiguous buffer as a blob, copying it: no bytes object per array)."""
        sizes = np.diff(self.bounds)
        present = np.flatnonzero(sizes)  # every term of a batch has postings; kept safe all the same
        order = present if _offset(global_ids) is not None else present[np.argsort(global_ids[present], kind="stable")]
        packing = self.packing if self.packing is not None else segment_packing.choose(*_NO_POSTINGS)
        rows = segment_packing.rows(packing, *self.columns, self.bounds[order], self.bounds[order + 1])
        return global_ids[order].tolist(), sizes[order].tolist(), rows


class _AsBatch:
    """A combination seen as one analysed batch by ``CombinedBatches._merged``: its terms with postings, in
    running-id order, each term's postings one group."""

    def __init__(self, combined: CombinedBatches) -> None:
        present = np.flatnonzero(np.diff(combined.bounds))
        self.segment_terms = present
        self.segment_bounds = np.append(combined.bounds[present], combined.bounds[-1])
        self.packing = combined.packing
        self.postings = combined.postings
        self._columns = combined.columns

    def repacked(self, packing: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self._columns if packing == self.packing else segment_packing.pack(packing, *self._columns)


class CombinedRuns:
    """Batches combined as they come, with copying bounded like a binary counter's carries.

    Merging each batch into one running combination copies everything merged so far: a writer sending 200-text
    batches (a REST client's) made that quadratic (50k chunks: 4.3 s instead of 2.6 s). Here batches are grouped
    until they hold ``_RUN_DOCUMENTS`` documents (a bulk load's batches are a group each) and a group is combined
    in one go into a run; the youngest run is absorbed by the one before it while it is at least half its size,
    so every posting is copied O(log n) times. ``combined()`` folds what is left into one."""

    def __init__(self) -> None:
        self._runs: list[CombinedBatches] = []
        self._group: list[AnalysedBatch] = []
        self._group_documents = 0

    @property
    def size(self) -> int:
        return sum(run.size for run in self._runs) + self._group_documents

    def add(self, batch: AnalysedBatch | None) -> None:
        """Add a batch (rowids above every rowid already here). On a failure (memory) the batch may be lost,
        never half-merged: the caller must not write what it holds then."""
        if batch is None or not batch.size:
            return
        self._group.append(batch)
        self._group_documents += batch.size
        if self._group_documents >= _RUN_DOCUMENTS:
            self._close_group()

    def _close_group(self) -> None:
        if not self._group:
            return
        group, self._group, self._group_documents = self._group, [], 0
        self._runs.append(CombinedBatches.from_batches(group))
        while len(self._runs) >= 2 and _weight(self._runs[-1]) * 2 >= _weight(self._runs[-2]):
            self._runs[-2].absorb(self._runs[-1])
            self._runs.pop()

    def combined(self) -> CombinedBatches:
        self._close_group()
        while len(self._runs) >= 2:
            self._runs[-2].absorb(self._runs[-1])
            self._runs.pop()
        return self._runs[0] if self._runs else CombinedBatches()


_RUN_DOCUMENTS = 10_000


def _weight(run: CombinedBatches) -> int:
    return max(run.postings, run.size)


def documents_in(documents: list[DocumentTerms], global_ids: np.ndarray
                 ) -> Iterator[tuple[DocumentTerms, np.ndarray]]:
    """Each batch's documents with their term ids in the database's ids (``global_ids[running id]``)."""
    offset = _offset(global_ids)
    for batch in documents:
        # ids consecutive in running order (e.g. new terms first seen in sorted order): a shift, not a lookup
        yield batch, (batch.doc_terms + np.int32(offset) if offset is not None else global_ids[batch.doc_terms])


def _offset(global_ids: np.ndarray) -> int | None:
    """``c`` if ``global_ids`` is ``running id + c`` for every running id (consecutive ascending ids), else None.
    ``c`` fits an int32 (the index refuses term ids that do not)."""
    if global_ids.size == 0:
        return 0
    first = int(global_ids[0])
    if int(global_ids[-1]) - first != global_ids.size - 1 or not np.all(np.diff(global_ids) == 1):
        return None
    return first if first <= np.iinfo(np.int32).max - global_ids.size else None

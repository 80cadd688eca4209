"""Buffered keyword batches combined into one group of postings per term for all of them.

A FAISS writer buffers its batches and writes them together, one row per bucket of terms (``KeywordIndex.write``).
Small batches are grouped on the analysis thread as they come (``CombinedRuns``: a group of ~10k documents
is combined in one go into a run); a bulk load's batches are runs as they are. At write time the runs are
combined in one go: one sort of their term groups, then each group copied as a block (``combined_columns``;
at 100k chunks ~0.1 s for 7M postings, where merging each run into the one before as it came copied every
posting three times over on the analysis thread, which then fell behind the writer). Term ids are a
writer's own until then (running ids: a term's rank of first appearance among the buffered batches); the
database's are only known at write time, when mapping the running ids to them is one small lookup per
distinct term, and each document's term ids go from its batch's ids to the database's in one lookup.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from itertools import filterfalse

import numpy as np

from stores.keyword import packing as segment_packing
from stores.keyword.batch import AnalysedBatch, combined_columns

_NO_POSTINGS = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64))


@dataclass(frozen=True)
class DocumentTerms:
    """What the keyword index keeps per document of one batch to undo it later (``doc_blocks``)."""

    rowids: np.ndarray  # int64
    lengths: np.ndarray  # terms per document
    doc_counts: np.ndarray  # distinct terms per document ...
    doc_terms: np.ndarray  # ... and their term ids, document after document, in the batch's own ids (int32) ...
    running: np.ndarray  # ... which this maps to running ids: mapped once, to the database's, at write time


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
    def from_batches(cls, batches: list[AnalysedBatch | CombinedBatches]) -> CombinedBatches:
        """Several batches, or combinations of batches (rowids ascending from one to the next), combined in one
        go: one sort of their term groups and a block copy of each group (``combined_columns``), however many
        there are."""
        combined = cls()
        parts = [_AsBatch(b) if isinstance(b, CombinedBatches) else b for b in batches if b is not None and b.size]
        locals_ = [combined._running_ids(part.vocabulary) for part in parts]
        terms, starts, ends, columns, packing = combined_columns(parts, locals_) if parts else (
            np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64), _NO_POSTINGS, None)
        sizes = np.zeros(len(combined.vocabulary), np.int64)
        sizes[terms] = ends - starts
        combined.bounds = np.concatenate(([0], np.cumsum(sizes))).astype(np.int64)
        combined.columns = columns
        combined.packing = packing if any(part.postings for part in parts) else None
        for part, running in zip(parts, locals_, strict=True):
            combined.documents += [DocumentTerms(d.rowids, d.lengths, d.doc_counts, d.doc_terms, running[d.running])
                                   for d in _documents(part)]
            combined.size += part.size
            combined.length += part.length if isinstance(part, _AsBatch) else int(part.lengths.sum())
        return combined

    @property
    def postings(self) -> int:
        return int(self.bounds[-1])

    def rowids(self) -> np.ndarray:
        return np.concatenate([d.rowids for d in self.documents]) if self.documents else np.zeros(0, np.int64)

    def _running_ids(self, vocabulary: list[str]) -> np.ndarray:
        """Running ids of a batch's terms (its local ids index the result); new terms get the next ids."""
        ids, known = self._ids, len(self.vocabulary)
        # a batch's vocabulary has no duplicates; filterfalse runs the membership tests in C (a real vocabulary
        # brings ~30k terms a batch)
        fresh = list(filterfalse(ids.__contains__, vocabulary))
        try:
            ids.update(zip(fresh, range(known, known + len(fresh)), strict=True))
            self.vocabulary.extend(fresh)
            return np.fromiter(map(ids.__getitem__, vocabulary), dtype=np.int64, count=len(vocabulary))
        except BaseException:
            for term in fresh:
                ids.pop(term, None)
            del self.vocabulary[known:]
            raise

    # --- what a write needs, once the database's term ids are known -----------------------------------------

    def by_term(self, global_ids: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(term ids ascending, bounds, docs, tfs, lengths)``: the postings in the database's term order, term
        i's ``[bounds[i], bounds[i + 1])``. One gather per column moves every term's group to its place (the
        running ids are first-appearance order, the database's sorted), unless they are in place already."""
        sizes = np.diff(self.bounds)
        present = np.flatnonzero(sizes)  # every term of a batch has postings; kept safe all the same
        order = present if _offset(global_ids) is not None else present[np.argsort(global_ids[present], kind="stable")]
        counts = sizes[order]
        bounds = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
        columns = self.columns
        if not np.array_equal(order, present):
            gather = np.repeat(self.bounds[order] - bounds[:-1], counts) + np.arange(int(bounds[-1]), dtype=np.int64)
            columns = (columns[0][gather], columns[1][gather], columns[2][gather])
        return global_ids[order], bounds, columns[0], columns[1], columns[2]


class _AsBatch:
    """A combination seen as one analysed batch by ``CombinedBatches.from_batches``: its terms with postings,
    in running-id order, each term's postings one group; its documents, term ids in its running ids."""

    def __init__(self, combined: CombinedBatches) -> None:
        present = np.flatnonzero(np.diff(combined.bounds))
        self.segment_terms = present
        self.segment_bounds = np.append(combined.bounds[present], combined.bounds[-1])
        self.packing = combined.packing if combined.packing is not None else segment_packing.choose(*_NO_POSTINGS)
        self.postings = combined.postings
        self._columns = combined.columns
        self.vocabulary, self.documents = combined.vocabulary, combined.documents
        self.size, self.length = combined.size, combined.length

    def repacked(self, packing: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self._columns if packing == self.packing else segment_packing.pack(packing, *self._columns)


class CombinedRuns:
    """Batches grouped as they come and combined at write time, each posting copied twice at most.

    Merging each batch into one running combination copies everything merged so far: a writer sending 200-text
    batches (a REST client's) made that quadratic (50k chunks: 4.3 s instead of 2.6 s). Here batches are grouped
    until they hold ``_RUN_DOCUMENTS`` documents, and a group of several batches is combined in one go into a
    run (on the analysis thread); a group of one batch (a bulk load's) is a run as it is. ``combined()`` combines
    the runs in one go (one sort of their term groups, each group copied as a block). A writer writes its
    buffered batches at ``PENDING_KEYWORD_DOCUMENTS``, so there are a handful of runs at most. (Absorbing runs
    pairwise as they came, like a binary counter's carries, copied a 100k bulk load's postings three times over
    on the analysis thread, which then fell behind the writer.)"""

    def __init__(self) -> None:
        self._runs: list[AnalysedBatch | CombinedBatches] = []
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
        self._runs.append(group[0] if len(group) == 1 else CombinedBatches.from_batches(group))

    def combined(self) -> CombinedBatches:
        self._close_group()
        runs, self._runs = self._runs, []
        if len(runs) == 1 and isinstance(runs[0], CombinedBatches):
            return runs[0]
        return CombinedBatches.from_batches(runs)


_RUN_DOCUMENTS = 10_000


def _documents(part: AnalysedBatch | _AsBatch) -> list[DocumentTerms]:
    """A part's documents, term ids in the part's own (local or running) ids."""
    if isinstance(part, _AsBatch):
        return part.documents
    identity = np.arange(len(part.vocabulary), dtype=np.int64)
    return [DocumentTerms(part.rowids, part.lengths, part.doc_counts, part.doc_terms, identity)]


def documents_in(documents: list[DocumentTerms], global_ids: np.ndarray
                 ) -> Iterator[tuple[DocumentTerms, np.ndarray]]:
    """Each batch's documents with their term ids in the database's ids (``global_ids[running id]``): one
    lookup per posting, through the batch's own ids to the database's."""
    for batch in documents:
        mapping = global_ids[batch.running]
        offset = _offset(mapping)
        # ids consecutive in the batch's order (e.g. new terms first seen in sorted order): a shift, not a lookup
        yield batch, (batch.doc_terms + np.int32(offset) if offset is not None else mapping[batch.doc_terms])


def _offset(global_ids: np.ndarray) -> int | None:
    """``c`` if ``global_ids`` is ``running id + c`` for every running id (consecutive ascending ids), else None.
    ``c`` fits an int32 (the index refuses term ids that do not)."""
    if global_ids.size == 0:
        return 0
    first = int(global_ids[0])
    if int(global_ids[-1]) - first != global_ids.size - 1 or not np.all(np.diff(global_ids) == 1):
        return None
    return first if first <= np.iinfo(np.int32).max - global_ids.size else None

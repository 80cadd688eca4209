"""A writer's keyword work in flight: batches analysed on helper threads, written together later.

The FAISS transaction hands each upserted batch here and goes on; the analysis (``KeywordIndex.analyse``)
runs on a helper thread, one batch at a time, and ``write`` puts every buffered batch into the writer's
transaction at once (one row per bucket of terms for all of them). Nothing is written before ``write``: a rollback
only waits for the threads and forgets their results.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from stores.keyword.batch import AnalysedBatch
from stores.keyword.combine import CombinedBatches, CombinedRuns
from stores.keyword.index import KeywordIndex, NoKeywordIndex
from stores.sqlite.background_io import Background

_THREAD_AT = 256  # texts: smaller batches are analysed on the caller's thread


class _Done:
    """Work run on the spot, with ``Background``'s wait and join (join raises what it raised)."""

    def __init__(self, work: Callable[[], None]) -> None:
        self._error: BaseException | None = None
        try:
            work()
        except BaseException as exc:  # raised by join, as a helper thread's would be
            self._error = exc

    def wait(self) -> None:
        return None

    def join(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error


@dataclass
class Job:
    """One batch's analysis: its thread (or work already done), its result once done (until merged), its size."""

    work: Background | _Done | None
    out: list[AnalysedBatch | None]
    documents: int
    run: Callable[[], None] = lambda: None  # the analysis itself: puts its result in ``out``
    # set under the lock:
    claimed: bool = False  # its analysis began (on its thread, or on the writer's: see ``_taken``)
    done: bool = False  # its analysis ended (``out`` empty: it failed, or was dropped)
    kept: bool = False  # its records are in: to be written (set by ``keep``)
    merged: bool = False  # added to the writer's runs (or given up: its analysis failed)


class PendingKeywords:
    """Batches analysed on helper threads (one at a time), written together in the writer's transaction by
    ``write``: one row per bucket of terms for all of them.

    Each kept batch is added to the writer's runs (``CombinedRuns``) on a helper thread: by the thread
    that analysed it, if the writer kept it before that analysis ended (usual: an analysis takes longer than
    the records' checks and inserts), or else by the thread of the next batch, before its analysis (``start``
    comes after the previous ``upsert`` kept or forgot its batch). A forgotten batch is never added. ``write``
    adds what is left, combines the runs and inserts the rows. A lock orders the helper threads and ``write``
    (a write inside an upsert runs while that upsert's batch is being analysed)."""

    def __init__(self, index: KeywordIndex) -> None:
        self.index = index
        self.documents = 0
        self._work: list[Job] = []  # kept, not written yet
        self._last: Background | _Done | None = None  # the latest analysis started
        self._lock = threading.Lock()
        self._combined = CombinedRuns()  # kept batches merged so far (under _lock)
        self._failed: BaseException | None = None  # a merge that failed: the next write raises it (under _lock)

    def start(self, rowids: Sequence[int], texts: Sequence[str]) -> Job | None:
        """Start analysing a batch (after the batches already started); ``keep`` it once its records are in."""
        if isinstance(self.index, NoKeywordIndex) or not texts:
            return None
        out: list[AnalysedBatch | None] = []
        given: list[Sequence[str]] = [texts]  # let go of once analysed: only the analysis is kept
        previous = self._last
        kept = list(self._work)  # every batch kept so far: merged on this thread, if no write took them first
        job = Job(None, out, len(texts))

        def run() -> None:
            out.append(self.index.analyse(rowids, given.pop()))

        def analyse() -> None:
            if previous is not None:
                previous.wait()  # one analysis at a time: more threads would only fight over the GIL
            self._merge(kept)
            if self._claim(job):  # else a write took it over (its writer was waiting for it)
                self._analyse(job)
                self._merge_own(job)

        job.run = run
        small = len(texts) < _THREAD_AT  # a thread costs more than analysing a few texts here
        job.work = _Done(analyse) if small else Background(analyse, "kb-keyword-analysis")
        self._last = job.work
        return job

    def keep(self, job: Job | None) -> None:
        """Buffer a started batch, to be written by ``write``."""
        if job is not None:
            with self._lock:
                job.kept = True
                self._work.append(job)
            self.documents += job.documents

    def add(self, rowids: Sequence[int], texts: Sequence[str]) -> None:
        self.keep(self.start(rowids, texts))

    @staticmethod
    def forget(job: Job | None) -> None:
        """A started batch whose records were not written after all: wait for it, drop it (never merged)."""
        if job is not None:
            try:
                if job.work is not None:
                    job.work.join()
            except Exception:  # nothing of it is written: its error no longer matters
                pass

    def _merge(self, jobs: list[Job]) -> None:
        """Add finished, kept batches to the runs, in order (each once)."""
        with self._lock:
            self._merge_locked(jobs)

    def _claim(self, job: Job) -> bool:
        """Whether the caller is the one to analyse ``job`` (no one began it yet)."""
        with self._lock:
            claimed, job.claimed = job.claimed, True
        return not claimed

    def _analyse(self, job: Job) -> None:
        try:
            job.run()
        finally:
            with self._lock:
                job.done = True

    def _merge_locked(self, jobs: list[Job]) -> None:
        for job in jobs:
            if job.merged:
                continue
            if not job.kept or not job.done:  # in order: nothing merges past a batch not analysed yet
                break
            job.merged = True
            if not job.out or self._failed is not None:  # a failed analysis: joining it raises its error
                continue
            batch = job.out.pop()  # the combination holds it from now on
            try:
                self._combined.add(batch)
            except BaseException as exc:  # (memory) the batch is lost: the next write must fail
                self._failed = exc

    def _merge_own(self, job: Job) -> None:
        """A batch's thread, once its analysis is done: merge it now if it is kept and every batch kept before
        it is merged (else the next batch's thread or ``write`` will)."""
        with self._lock:
            if not job.kept or job not in self._work:
                return
            if all(earlier.merged for earlier in self._work[: self._work.index(job)]):
                self._merge_locked([job])

    def _taken(self, analyse_waiting: bool = True) -> tuple[list[Job], CombinedBatches, BaseException | None]:
        """Every kept batch, analysed and merged, and the combination, which starts over empty. Batches whose
        analysis has not begun (waiting for the one before: the helper thread fell behind) are analysed here, on
        the writer's thread, which would only wait for them otherwise, beside the helper thread's analysis (or,
        ``analyse_waiting`` false, dropped: a rollback)."""
        work = list(self._work)  # only this thread keeps batches: the list is this one until the swap below
        errors: list[BaseException] = []
        for job in work:
            if self._claim(job):
                if not analyse_waiting:
                    with self._lock:
                        job.done = True  # dropped: nothing to merge (a rollback forgets it all)
                    continue
                try:
                    self._analyse(job)
                except BaseException as exc:  # as a helper thread's failure: the first error is the one raised
                    errors.append(exc)
        for job in work:
            try:
                if job.work is not None:
                    job.work.join()  # (its thread merges it, if every batch before it is merged)
            except BaseException as exc:  # every thread is waited for; the first error is the one raised
                errors.append(exc)
        with self._lock:
            self._merge_locked(work)  # what no thread merged
            self._work, self.documents = [], 0
            runs, self._combined = self._combined, CombinedRuns()
            combined = CombinedBatches()
            if analyse_waiting:  # a write (a rollback only forgets the runs)
                try:
                    combined = runs.combined()
                except BaseException as exc:  # (memory) as a failed merge: this write must fail
                    self._failed = self._failed or exc
            failed, self._failed = self._failed, None
        return work, combined, errors[0] if errors else failed

    def write(self, conn: sqlite3.Connection) -> None:
        work, combined, error = self._taken()
        if error is not None:
            raise error
        if work:
            self.index.write_combined(conn, combined)

    def discard(self) -> None:
        """Wait for the analyses (no thread outlives its writer) and forget them, errors included."""
        self._taken(analyse_waiting=False)

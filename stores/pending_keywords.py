"""A writer's keyword work in flight: batches analysed on helper threads, written together later.

The FAISS transaction hands each upserted batch here and goes on; the analysis (``KeywordIndex.analyse``)
runs on a helper thread, one batch at a time, and ``write`` puts every buffered batch into the writer's
transaction at once (one segment per term for all of them). Nothing is written before ``write``: a rollback
only waits for the threads and forgets their results.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from stores.background_io import Background
from stores.keyword_batch import AnalysedBatch
from stores.keyword_index import KeywordIndex, NoKeywordIndex

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


@dataclass(frozen=True)
class Job:
    """One batch's analysis: its thread (or work already done), its result once done, its size."""

    work: Background | _Done
    out: list[AnalysedBatch | None]
    documents: int


class PendingKeywords:
    """Batches analysed on helper threads (one each), written together in the writer's transaction by ``write``:
    one segment per term for all of them (see ``combined_segments``)."""

    def __init__(self, index: KeywordIndex) -> None:
        self.index = index
        self.documents = 0
        self._work: list[Job] = []
        self._last: Background | _Done | None = None  # the latest analysis started

    def start(self, rowids: Sequence[int], texts: Sequence[str]) -> Job | None:
        """Start analysing a batch (after the batches already started); ``keep`` it once its records are in."""
        if isinstance(self.index, NoKeywordIndex) or not texts:
            return None
        out: list[AnalysedBatch | None] = []
        given: list[Sequence[str]] = [texts]  # let go of once analysed: only the analysis is kept
        previous = self._last

        def analyse() -> None:
            if previous is not None:
                previous.wait()  # one analysis at a time: more threads would only fight over the GIL
            out.append(self.index.analyse(rowids, given.pop()))

        small = len(texts) < _THREAD_AT  # a thread costs more than analysing a few texts here
        job = Job(_Done(analyse) if small else Background(analyse, "kb-keyword-analysis"), out, len(texts))
        self._last = job.work
        return job

    def keep(self, job: Job | None) -> None:
        """Buffer a started batch, to be written by ``write``."""
        if job is not None:
            self._work.append(job)
            self.documents += job.documents

    def add(self, rowids: Sequence[int], texts: Sequence[str]) -> None:
        self.keep(self.start(rowids, texts))

    @staticmethod
    def forget(job: Job | None) -> None:
        """A started batch whose records were not written after all: wait for it, drop it."""
        if job is not None:
            try:
                job.work.join()
            except Exception:  # nothing of it is written: its error no longer matters
                pass

    def _joined(self) -> list[AnalysedBatch | None]:
        work, self._work, self.documents = self._work, [], 0
        errors: list[BaseException] = []
        for job in work:
            try:
                job.work.join()
            except BaseException as exc:  # every thread is waited for; the first error is the one raised
                errors.append(exc)
        if errors:
            raise errors[0]
        return [job.out[0] for job in work]

    def write(self, conn: sqlite3.Connection) -> None:
        batches = self._joined()
        if batches:
            self.index.write(conn, batches)

    def discard(self) -> None:
        """Wait for the analyses (no thread outlives its writer) and forget them, errors included."""
        try:
            self._joined()
        except Exception:  # nothing of it is written: its errors no longer matter
            pass

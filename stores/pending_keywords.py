"""A writer's keyword work in flight: batches analysed on helper threads, written together later.

The FAISS transaction hands each upserted batch here and goes on; the analysis (``KeywordIndex.analyse``)
runs on a helper thread, one batch at a time, and ``write`` puts every buffered batch into the writer's
transaction at once (one segment per term for all of them). Nothing is written before ``write``: a rollback
only waits for the threads and forgets their results.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence

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


class PendingKeywords:
    """Batches analysed on helper threads (one each), written together in the writer's transaction by ``write``:
    one segment per term for all of them (see ``combined_segments``)."""

    def __init__(self, index: KeywordIndex) -> None:
        self.index = index
        self.documents = 0
        self._work: list[tuple[Background | _Done, list[AnalysedBatch | None]]] = []

    def add(self, rowids: Sequence[int], texts: Sequence[str]) -> None:
        if isinstance(self.index, NoKeywordIndex) or not texts:
            return
        out: list[AnalysedBatch | None] = []
        given: list[Sequence[str]] = [texts]  # let go of once analysed: only the analysis is kept
        previous = self._work[-1][0] if self._work else None

        def analyse() -> None:
            if previous is not None:
                previous.wait()  # one analysis at a time: more threads would only fight over the GIL
            out.append(self.index.analyse(rowids, given.pop()))

        small = len(texts) < _THREAD_AT  # a thread costs more than analysing a few texts here
        self._work.append((_Done(analyse) if small else Background(analyse, "kb-keyword-analysis"), out))
        self.documents += len(texts)

    def _joined(self) -> list[AnalysedBatch | None]:
        work, self._work, self.documents = self._work, [], 0
        errors: list[BaseException] = []
        for thread, _ in work:
            try:
                thread.join()
            except BaseException as exc:  # every thread is waited for; the first error is the one raised
                errors.append(exc)
        if errors:
            raise errors[0]
        return [out[0] for _, out in work]

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

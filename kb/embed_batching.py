"""Dynamic batching: concurrent small embedding calls share one model run.

A server answering several ``/v1/embeddings`` requests (or searches) at once would otherwise run the model
once per request, one after another (runs are serialised: the intra-op pool already uses every core), and
for short texts a run's fixed costs (thread pool wake-ups, one pass over every weight matrix) dominate.
Here a call joins a queue; the first caller to find no run in progress takes the queue's head (up to
``max_texts`` texts) and runs it as one batch, then the next waiting caller does the same. So batches form
from the calls that arrive while a run is in progress: an idle model answers a lone call at once, without
a timed wait. ``window`` (seconds) optionally holds a run that found only its own call for that long, for
deployments whose callers arrive spread out; it costs every lone call that much latency.

A batch that fails is retried call by call, so one caller's bad input fails that caller only.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence

import numpy as np


class _Call:
    __slots__ = ("texts", "result", "error", "done")

    def __init__(self, texts: Sequence[str]) -> None:
        self.texts = texts
        self.result: np.ndarray | None = None
        self.error: BaseException | None = None
        self.done = False


class EmbedBatcher:
    """Runs ``embed`` on the concatenated texts of calls that wait at the same time."""

    def __init__(self, embed: Callable[[Sequence[str]], np.ndarray], max_texts: int = 64,
                 window: float = 0.0) -> None:
        self._embed = embed
        self.max_texts = max_texts
        self.window = window
        self._cond = threading.Condition()
        self._queue: deque[_Call] = deque()
        self._running = False
        self.runs = 0  # model runs made, and calls served: their ratio is the batching achieved
        self.calls = 0

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        call = _Call(texts)
        with self._cond:
            self._queue.append(call)
            if self.window > 0:
                self._cond.notify_all()  # a run holding its window open counts the queue again
        while True:  # more than once only if the batch before ours was full
            with self._cond:
                self._cond.wait_for(lambda: call.done or not self._running)
                if call.done:
                    return self._answer(call)
                self._running = True
                if self.window > 0 and len(self._queue) == 1:
                    # alone: give companions a moment (the wait releases the lock, so they can queue)
                    self._cond.wait_for(lambda: self._queued_texts() >= self.max_texts, timeout=self.window)
                batch = self._take()
            try:
                self._run(batch)
            finally:
                with self._cond:
                    for other in batch:  # never leave a caller waiting for a run that ended
                        if not other.done:
                            other.error, other.done = RuntimeError("the batched embedding run was interrupted"), True
                    self._running = False
                    self.runs += 1
                    self.calls += len(batch)
                    self._cond.notify_all()

    def _queued_texts(self) -> int:
        return sum(len(c.texts) for c in self._queue)

    def _take(self) -> list[_Call]:
        """The queue's head, up to ``max_texts`` texts (always at least one call, however large)."""
        batch = [self._queue.popleft()]
        count = len(batch[0].texts)
        while self._queue and count + len(self._queue[0].texts) <= self.max_texts:
            count += len(self._queue[0].texts)
            batch.append(self._queue.popleft())
        return batch

    def _run(self, batch: list[_Call]) -> None:
        if len(batch) > 1:
            try:
                vectors = self._embed([t for call in batch for t in call.texts])
            except Exception:  # noqa: BLE001 - whose input failed is found by running each call alone below
                pass
            else:
                start = 0
                for call in batch:
                    call.result = vectors[start : start + len(call.texts)]
                    call.done = True
                    start += len(call.texts)
                return
        for call in batch:
            try:
                call.result = self._embed(call.texts)
            except BaseException as exc:  # noqa: BLE001 - handed to the call's own thread, re-raised there
                call.error = exc
            call.done = True

    @staticmethod
    def _answer(call: _Call) -> np.ndarray:
        if call.error is not None:
            raise call.error
        assert call.result is not None
        return call.result


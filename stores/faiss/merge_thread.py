"""The one long-lived thread that runs a store's background merges (``stores.faiss.merge``).

Woken by a commit's signal, it merges while the policy finds work and waits again. It holds its merger only while
merging (a weak reference otherwise, checked every ``IDLE_CHECK`` seconds), so a store dropped without
``close()`` is collected and its thread ends; ``close()`` sets ``stop`` and wakes it.
"""

from __future__ import annotations

import threading
import weakref
from typing import Protocol

IDLE_CHECK = 30.0  # seconds between an idle thread's checks that its store still exists


class Merging(Protocol):
    def merge_until_done(self, stop: threading.Event) -> None: ...


class Signals:
    """What the commit path and one merger thread share; the thread holds this and only a weak reference to the
    merger while it waits."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.pending = False  # a commit happened since the thread last chose
        self.busy = False  # the thread is choosing or merging
        self.stop = threading.Event()  # set by close(): this thread's merges stop, and it ends


def merger_thread(ref: weakref.ref[Merging], signals: Signals) -> None:
    """One store's merger thread: waits for a commit's signal, merges while the policy finds work, waits again;
    ends when closed, or when its store is gone (it holds the merger only while merging)."""
    try:
        while True:
            with signals.cond:
                while not signals.pending and not signals.stop.is_set():
                    if not signals.cond.wait(IDLE_CHECK) and ref() is None:
                        return
                if signals.stop.is_set():
                    return
                signals.pending = False
                signals.busy = True
            merger = ref()
            if merger is None:
                return
            try:
                merger.merge_until_done(signals.stop)
            finally:
                merger = None
                with signals.cond:
                    signals.busy = False
                    signals.cond.notify_all()
    finally:  # whoever waits for this thread to be idle stops waiting
        with signals.cond:
            signals.pending = signals.busy = False
            signals.cond.notify_all()

"""Disk work a writer runs on a helper thread while its own thread goes on computing.

A commit spends most of its time waiting for the disk (the index file's fsync, the SQLite WAL's fsync),
and those waits release the GIL. Started early on a helper thread, they overlap with work that needs the
interpreter (tokenising the next batch, encoding metadata). Nothing here decides what is durable: the
commit still fsyncs the index file and commits SQLite with synchronous=FULL in the same order; flushing
a file earlier only leaves less for those fsyncs to wait for.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path


class Background:
    """``work()`` on a thread of its own; ``join()`` waits for it and raises what it raised."""

    def __init__(self, work: Callable[[], None], name: str) -> None:
        self._error: BaseException | None = None
        self._work = work
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._work()
        except BaseException as exc:  # handed to the thread that joins
            self._error = exc

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def wait(self) -> None:
        """Wait for the work to end, leaving what it raised to ``join``."""
        self._thread.join()

    def join(self) -> None:
        self._thread.join()
        if self._error is not None:
            error, self._error = self._error, None
            raise error


def flush_to_disk(path: Path) -> None:
    """fdatasync a file another connection is writing (SQLite's WAL), so that its next fsync has less to do.

    Best effort: a missing file (no WAL yet) or an I/O error here is left to the fsync that counts.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fdatasync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_path(path: Path | str) -> None:
    """fsync a file or a folder by its path (a folder's fsync makes renames and new names in it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

"""Has any connection committed to a WAL-mode SQLite database since we last looked? Without a system call.

``PRAGMA data_version`` answers that exactly, but SQLite takes and drops a shared-memory read lock to run
it: three system calls (fcntl, fstat, fcntl), a tenth of kb's own work in a 0.3 ms vector search. The
wal-index header does the same job from memory: it is the first 48 bytes of the ``-shm`` file, and every
transaction (``iChange``, ``mxFrame``) and every WAL restart (the salts) rewrites it before its commit
returns (https://www.sqlite.org/walformat.html, "The WAL-Index Header"; SQLite's own readers read it
lock-free the same way). So: header bytes unchanged since a look that was followed by a ``data_version``
read means nothing was committed in between; changed (or torn by a write in progress) means ask SQLite.

Callers must read ``header()`` *before* ``PRAGMA data_version`` and keep the two together: a commit landing
between them then only costs one more PRAGMA next time (reading them the other way round could pair an old
version with a new header and miss that commit).

The mapping is made only while the caller's connection has the database open (SQLite keeps the ``-shm``
file, and never truncates it, while any connection holds it). Anything unusual (no ``-shm`` file, a
rollback-journal database, a file system without shared mappings) leaves ``header()`` returning None: the
caller then runs the PRAGMA every time, as before.

One descriptor and one mapping per ``-shm`` file per process, never closed while the file exists. POSIX
record locks belong to a process and a file, and closing *any* descriptor of the file drops all of the
process's locks on it: SQLite's dead-man-switch lock on the ``-shm`` (its sign that a process has the
database open) and the read locks its connections hold on WAL frames. The watch used to open the ``-shm``,
map it and close the descriptor: the next process to open the database then saw no such lock, took itself
for the first, truncated the ``-shm`` to 3 bytes and rebuilt it under the open connections, and the other
``kb serve`` worker died of SIGBUS (issue 32).
"""

from __future__ import annotations

import mmap
import os
import threading
from pathlib import Path

HEADER_BYTES = 48  # one copy of WalIndexHdr

_MAPS: dict[tuple[int, int], tuple[int, mmap.mmap]] = {}  # (st_dev, st_ino) of a -shm: (descriptor, mapping)
# A -shm too short to map when first seen (SQLite is still sizing it): its one descriptor, mapped on a later look.
_UNMAPPED: dict[tuple[int, int], int] = {}
_DUPLICATES: list[int] = []  # a second descriptor of a known file (a replace raced our stat): kept, see above
_LOCK = threading.Lock()


def _map_header(fd: int) -> mmap.mmap | None:
    if os.fstat(fd).st_size < HEADER_BYTES:
        return None
    try:
        return mmap.mmap(fd, HEADER_BYTES, access=mmap.ACCESS_READ)  # shared, read-only
    except (OSError, ValueError):
        return None


def _shared_map(shm: str) -> mmap.mmap | None:
    """This process's mapping of the first bytes of ``shm``, opened once (see the module docstring)."""
    try:
        seen = os.stat(shm)  # by path: no descriptor to close
    except OSError:
        return None
    with _LOCK:
        key = (seen.st_dev, seen.st_ino)
        if key in _MAPS:
            return _MAPS[key][1]
        fd = _UNMAPPED.get(key)
        if fd is None:
            try:
                fd = os.open(shm, os.O_RDONLY)
            except OSError:
                return None
            opened = os.fstat(fd)
            key = (opened.st_dev, opened.st_ino)
            if key in _MAPS or key in _UNMAPPED:  # the file was replaced by a known one since the stat
                _DUPLICATES.append(fd)
                return _MAPS[key][1] if key in _MAPS else None
        mapped = _map_header(fd)
        if mapped is None:
            _UNMAPPED[key] = fd  # one descriptor per file, however many connections look before it is sized
            return None
        _UNMAPPED.pop(key, None)
        _forget_deleted()
        _MAPS[key] = (fd, mapped)
        return mapped


def _forget_deleted() -> None:
    """Close the files deleted since they were opened (a dropped knowledge bank): no process can lock them now."""
    for key, (fd, mapped) in list(_MAPS.items()):
        if os.fstat(fd).st_nlink == 0:
            del _MAPS[key]
            mapped.close()
            os.close(fd)
    for key, fd in list(_UNMAPPED.items()):
        if os.fstat(fd).st_nlink == 0:
            del _UNMAPPED[key]
            os.close(fd)


class WalWatch:
    def __init__(self, db_path: Path | str) -> None:
        self._map = _shared_map(f"{db_path}-shm")

    def header(self) -> bytes | None:
        """The current wal-index header bytes, or None when this watch cannot see them."""
        mapped = self._map
        return mapped[:HEADER_BYTES] if mapped is not None else None

    def close(self) -> None:
        """Stop using the mapping; it stays open for the process (closing it would drop SQLite's locks)."""
        self._map = None

"""``WalWatch`` must leave SQLite's POSIX locks on the ``-shm`` file alone (issue 32).

Closing any descriptor of a file drops every POSIX lock the process holds on it. When the watch closed its
descriptor of the ``-shm``, the next process to open the database took itself for the first user, truncated
the ``-shm`` under the open connection and one ``kb serve`` worker died of SIGBUS: these tests failed so
(the lock was gone; the process holding the database died of SIGBUS, 3 runs out of 3)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from stores.sqlite.wal_watch import WalWatch
from tests.support.server import ROOT

DMS_BYTE = 128  # SQLite's dead-man-switch lock in the -shm: (22 + SQLITE_SHM_NLOCK) * 4 + SQLITE_SHM_NLOCK


def _wal_database(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (x)")
    conn.execute("INSERT INTO t VALUES (1)")
    conn.commit()
    conn.execute("SELECT * FROM t").fetchall()
    return conn


def _dms_lock_holder(shm: Path) -> int:
    """The pid holding a lock on the DMS byte, asked from another process (0: nobody)."""
    code = ("import fcntl, os, struct, sys\n"
            "fd = os.open(sys.argv[1], os.O_RDWR)\n"
            "answer = fcntl.fcntl(fd, fcntl.F_GETLK, struct.pack('hhqqi', fcntl.F_WRLCK, 0, int(sys.argv[2]), 1, 0))\n"
            "kind, _, _, _, pid = struct.unpack('hhqqi', answer)\n"
            "print(0 if kind == fcntl.F_UNLCK else pid)\n")
    answer = subprocess.run([sys.executable, "-c", code, str(shm), str(DMS_BYTE)], capture_output=True, text=True,
                            check=True)
    return int(answer.stdout)


def test_a_watch_keeps_the_process_lock_on_the_shm(tmp_path: Path) -> None:
    db = tmp_path / "store.sqlite"
    conn = _wal_database(db)
    shm = Path(f"{db}-shm")
    assert _dms_lock_holder(shm) == os.getpid()
    watches = [WalWatch(db), WalWatch(db)]  # two threads' watches of one database share one mapping
    assert watches[0].header() is not None and watches[0].header() == watches[1].header()
    assert _dms_lock_holder(shm) == os.getpid()
    for watch in watches:
        watch.close()
    assert _dms_lock_holder(shm) == os.getpid()
    conn.execute("INSERT INTO t VALUES (2)")
    conn.commit()
    assert WalWatch(db).header() is not None  # a new watch still works after the others closed
    conn.close()


HOLDER = """
import mmap, os, sqlite3, subprocess, sys, time
from stores.sqlite.wal_watch import WalWatch
db = sys.argv[1]
conn = sqlite3.connect(db)
conn.execute("PRAGMA journal_mode=WAL"); conn.execute("CREATE TABLE t (x)"); conn.execute("INSERT INTO t VALUES (1)")
conn.commit(); conn.execute("SELECT * FROM t").fetchall()
watch = WalWatch(db)  # as a kb serve worker's first search makes one
watch.close()
fd = os.open(db + "-shm", os.O_RDONLY)  # SQLite's own 32 KB mapping of the -shm, as this test can reach it
region = mmap.mmap(fd, 32768, access=mmap.ACCESS_READ)
code = (f"import sqlite3\\nfor _ in range(50):\\n c = sqlite3.connect({db!r}); c.execute('SELECT * FROM t').fetchall();"
        " c.close()")
others = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(4)]  # other workers opening the database
while any(other.poll() is None for other in others):
    for _ in range(10000):
        region[30000]
    conn.execute("SELECT * FROM t").fetchall()
print("alive")
"""


def test_other_processes_opening_the_database_do_not_reset_the_shm_under_a_watching_one(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    finished = subprocess.run([sys.executable, "-c", HOLDER, str(tmp_path / "store.sqlite")], capture_output=True,
                              text=True, timeout=120, env=env, check=False)
    assert finished.returncode == 0 and "alive" in finished.stdout, (finished.returncode, finished.stderr[-2000:])


def _descriptors_of(path: Path) -> int:
    return sum(1 for fd in Path("/proc/self/fd").iterdir() if os.path.realpath(fd) == str(path))


def test_a_shm_too_short_to_map_is_opened_once_and_mapped_when_it_grows(tmp_path: Path) -> None:
    """Every connection that looks before SQLite has sized the ``-shm`` must not open another descriptor it
    cannot close (it used to: one more per connection opened in that window)."""
    database = tmp_path / "short.sqlite"
    shm = tmp_path / "short.sqlite-shm"
    shm.write_bytes(b"\0" * 3)  # what a process that takes itself for the first user leaves for a moment
    watches = [WalWatch(database) for _ in range(5)]
    assert all(watch.header() is None for watch in watches)  # too short: the caller asks SQLite instead
    assert _descriptors_of(shm) == 1
    shm.write_bytes(bytes(range(64)))  # sized: the same descriptor is now mapped
    watch = WalWatch(database)
    assert watch.header() == bytes(range(48))
    mapped = _descriptors_of(shm)  # ours, and the duplicate Python's mmap keeps of it
    assert mapped <= 2
    assert all(WalWatch(database).header() == bytes(range(48)) for _ in range(5))
    assert _descriptors_of(shm) == mapped

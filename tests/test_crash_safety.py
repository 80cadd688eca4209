"""SIGKILL during commits: the knowledge bank is always exactly the state before or after a commit.

A worker process writes whole versions of a FAISS knowledge bank and is killed, 60 times with a
fixed seed: at every named point of the commit protocol (fault injection) and at random moments.
After each kill, a fresh reader must find one complete version (the one before or the one being
committed), searches must agree with it, and the next writer must work.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from stores.base import StoreContext
from stores.faiss.store import FaissStore
from tests.support.crash_worker import version_records, write_version

ROOT = Path(__file__).resolve().parent.parent
POINTS = ("index_written", "index_renamed", "before_sqlite_commit", "after_sqlite_commit")


def _state(folder: Path) -> int | None:
    """The single version the store holds (asserting it is whole), or None when empty."""
    store = FaissStore(StoreContext("crash", folder))
    try:
        ids = store.ids_where(None)
        if not ids:
            return None
        records = store.get(ids, with_vectors=True)
        versions = {r.metadata["v"] for r in records}
        assert len(versions) == 1, f"a mix of versions {versions}"
        version = versions.pop()
        expected = {r.id: r for r in version_records(version)}
        assert sorted(ids) == sorted(expected), f"version {version} is incomplete"
        for record in records:
            assert record.text == expected[record.id].text
        probe = expected["d5"].vector
        assert store.similarity(probe, 1)[0].record.id == "d5"  # the index agrees with the records
        return int(version)
    finally:
        store.close()


def test_sigkill_at_every_point_of_a_commit(tmp_path: Path) -> None:
    rng = random.Random(20261123)
    folder = tmp_path / "kb"
    write_version(FaissStore(StoreContext("crash", folder)), 0)
    outcomes = {"before": 0, "after": 0}
    version = 0
    kills = 0
    for cycle in range(60):
        target = version + 1
        env = dict(os.environ)
        point = POINTS[cycle % len(POINTS)] if cycle < 32 else None
        if point:
            env["KB_FAULT_POINT"] = point
        worker = subprocess.Popen([sys.executable, "-m", "tests.support.crash_worker", str(folder), str(target),
                                   str(target + 1_000_000)], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
        if point is None:
            time.sleep(rng.uniform(0.3, 1.5))  # imports take ~0.3 s; then it commits version after version
            worker.send_signal(signal.SIGKILL)
        worker.wait(60)
        assert worker.returncode == -signal.SIGKILL, f"cycle {cycle}: worker ended with {worker.returncode}"
        kills += 1
        committed = [int(line) for line in (worker.stdout.read() if worker.stdout else "").split() if line.isdigit()]
        found = _state(folder)
        assert found is not None
        last_done = committed[-1] if committed else version
        # exactly the state before or after the commit that was cut
        assert found in (last_done, last_done + 1), (cycle, point, committed, found)
        outcomes["after" if found == last_done + 1 else "before"] += 1
        if point in ("index_written", "index_renamed", "before_sqlite_commit"):
            assert found == version  # killed before the commit point: nothing of the new version
        if point == "after_sqlite_commit":
            assert found == target  # killed after the commit point: the new version is durable
        version = found
    store = FaissStore(StoreContext("crash", folder))
    write_version(store, version + 1)  # the lock went with the dead process; orphan files are cleaned
    assert _state(folder) == version + 1
    numbers = sorted(int(p.stem) for p in (folder / "store" / "segments").glob("*.faiss"))
    # the live segment, the one before it (for readers that raced the commit), at most one older: no orphans
    assert len(numbers) <= 3 and numbers == list(range(numbers[0], numbers[-1] + 1)), numbers
    print(f"kills survived: {kills}; state before the cut commit: {outcomes['before']}, "
          f"after: {outcomes['after']}; errors: 0")
    assert kills >= 50 and outcomes["before"] > 0 and outcomes["after"] > 0
    assert np.isfinite(version)

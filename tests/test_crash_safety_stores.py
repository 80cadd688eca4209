"""SIGKILL on every store, not only FAISS: Chroma embedded, a Chroma server and Elasticsearch.

1. The seeded kill loop of ``test_crash_safety`` against each store: a writer process killed at the named
   points of the commit protocol (fault injection: the store's records written, just before and just after
   the SQLite commit point) and at random moments; a fresh reader then finds exactly one whole version,
   searches agree with it, and the next writer works.
2. The store's server itself killed (SIGKILL) while a writer commits version after version, then restarted:
   the same checks, and the next writer cleans the dead attempt's leftovers.
"""

from __future__ import annotations

import itertools
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.support.chroma_server import ChromaServer
from tests.support.crash_worker import open_store, version_records, write_version
from tests.support.elasticsearch_server import ElasticsearchNode

ROOT = Path(__file__).resolve().parent.parent
POINTS = ("store_records_written", "before_sqlite_commit", "after_sqlite_commit")
_kb_ids = itertools.count()


def state(folder: Path, kind: str, url: str | None, kb_id: str) -> int | None:
    """The single version the store holds (asserting it is whole and searchable), or None when empty."""
    store = open_store(folder, kind, url, kb_id)
    try:
        ids = store.ids_where(None)
        if not ids:
            return None
        records = store.get(ids, with_vectors=True)
        versions = {r.metadata["v"] for r in records}
        assert len(versions) == 1, f"a mix of versions {versions}"
        version = int(versions.pop())
        expected = {r.id: r for r in version_records(version)}
        assert sorted(ids) == sorted(expected), f"version {version} is incomplete"
        assert all(r.text == expected[r.id].text for r in records)
        assert store.similarity(expected["d5"].vector, 1)[0].record.id == "d5"  # the index agrees
        assert {h.record.id for h in store.keyword(f"v{version}", 50)} == set(expected)  # and the keywords
        return version
    finally:
        store.close()


def _worker(folder: Path, kind: str, url: str | None, kb_id: str, first: int,
            point: str | None) -> subprocess.Popen[str]:
    env = {**os.environ, "KB_FAULT_POINT": point or ""}
    worker = subprocess.Popen([sys.executable, "-m", "tests.support.crash_worker", str(folder), str(first),
                               str(first + 1_000_000), kind, url or "", kb_id],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    assert worker.stdout is not None
    assert worker.stdout.readline().strip() == "ready"
    return worker


def kill_loop(folder: Path, kind: str, url: str | None, cycles: int, seed: int) -> dict[str, int]:
    rng = random.Random(seed)
    kb_id = f"crash{next(_kb_ids)}-{uuid.uuid4().hex[:8]}"  # the Elasticsearch node is the run's shared one
    store = open_store(folder, kind, url, kb_id)
    write_version(store, 0)
    store.close()
    version, outcomes = 0, {"kills": 0, "before": 0, "after": 0}
    for cycle in range(cycles):
        point = POINTS[cycle % len(POINTS)] if cycle < 2 * len(POINTS) else None
        worker = _worker(folder, kind, url, kb_id, version + 1, point)
        if point is None:
            time.sleep(rng.uniform(0.0, 1.2))  # it commits version after version meanwhile
            worker.send_signal(signal.SIGKILL)
        worker.wait(120)
        assert worker.returncode == -signal.SIGKILL, f"cycle {cycle}: worker ended with {worker.returncode}"
        outcomes["kills"] += 1
        committed = [int(line) for line in (worker.stdout.read() if worker.stdout else "").split() if line.isdigit()]
        last_done = committed[-1] if committed else version
        found = state(folder, kind, url, kb_id)
        assert found in (last_done, last_done + 1), (kind, cycle, point, committed, found)
        if point in ("store_records_written", "before_sqlite_commit"):
            assert found == version  # killed before the commit point: nothing of the new version
        if point == "after_sqlite_commit":
            assert found == version + 1  # killed after it: the new version is durable
        outcomes["after" if found == last_done + 1 else "before"] += 1
        version = found
    store = open_store(folder, kind, url, kb_id)
    write_version(store, version + 1)  # the lock went with the dead process; its leftovers are cleaned
    store.close()
    assert state(folder, kind, url, kb_id) == version + 1
    return outcomes


@pytest.mark.parametrize("kind", ["chroma", "chroma-server", "elasticsearch"])
def test_sigkill_of_a_writer_at_every_point_of_a_commit(kind: str, tmp_path: Path, request: pytest.FixtureRequest,
                                                        ) -> None:
    url = None
    if kind == "chroma-server":
        url = request.getfixturevalue("chroma_server").url
    elif kind == "elasticsearch":
        url = request.getfixturevalue("es_node").url
    outcomes = kill_loop(tmp_path / "kb", kind, url, cycles=14, seed=20261126)
    print(f"{kind}: kills survived {outcomes['kills']}, state before the cut commit {outcomes['before']}, "
          f"after {outcomes['after']}; errors 0")
    assert outcomes["kills"] == 14 and outcomes["before"] > 0 and outcomes["after"] > 0


def server_kill_loop(folder: Path, kind: str, server: ChromaServer | ElasticsearchNode, cycles: int,
                     seed: int) -> int:
    rng = random.Random(seed)
    kb_id = f"srvcrash{next(_kb_ids)}"
    store = open_store(folder, kind, server.url, kb_id)
    write_version(store, 0)
    store.close()
    version = 0
    for cycle in range(cycles):
        worker = _worker(folder, kind, server.url, kb_id, version + 1, None)
        time.sleep(rng.uniform(0.2, 1.5))
        server.kill()  # the store's server dies in the middle of the worker's commits
        worker.wait(180)
        assert worker.returncode == 3, f"cycle {cycle}: worker ended with {worker.returncode}"
        committed = [int(line) for line in (worker.stdout.read() if worker.stdout else "").split() if line.isdigit()]
        last_done = committed[-1] if committed else version
        server.start()  # same port, same data
        found = state(folder, kind, server.url, kb_id)
        assert found in (last_done, last_done + 1), (kind, cycle, committed, found)
        store = open_store(folder, kind, server.url, kb_id)
        write_version(store, found + 1)  # the next writer works and removes the dead attempt's records
        store.close()
        assert state(folder, kind, server.url, kb_id) == found + 1
        version = found + 1
    return cycles


def test_chroma_server_killed_during_commits_recovers_after_restart(tmp_path: Path) -> None:
    server = ChromaServer(tmp_path / "chroma-data").start()
    try:
        survived = server_kill_loop(tmp_path / "kb", "chroma-server", server, cycles=4, seed=7)
    finally:
        server.stop()
    print(f"chroma server: {survived} server kills during commits survived")


def test_elasticsearch_node_killed_during_commits_recovers_after_restart(tmp_path: Path) -> None:
    node = ElasticsearchNode(name="killed").start()
    try:
        survived = server_kill_loop(tmp_path / "kb", "elasticsearch", node, cycles=3, seed=11)
    finally:
        node.cleanup()
    print(f"elasticsearch node: {survived} node kills during commits survived")

"""Writers in separate processes on one Elasticsearch knowledge bank whose commit point is in PostgreSQL
(issue 28's writer half): exclusion across processes, fencing of a writer whose lease lapsed, SIGKILL mid-commit.

Real parts: an Elasticsearch node, a PostgreSQL cluster, writers as separate processes
(tests/support/fenced_writer.py). A reader thread in the test process reads all the while, and
tests/support/generation_history.py checks every read and every acknowledgement.
"""

from __future__ import annotations

import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from stores.commit_point.schema import engine_for, kb_lease
from stores.elasticsearch.store import ElasticsearchStore
from stores.generations import NEVER
from tests.support.elasticsearch_server import ElasticsearchNode
from tests.support.fenced_writer import generation_records, open_es_store
from tests.support.generation_history import History
from tests.support.postgres_server import PostgresServer

ROOT = Path(__file__).resolve().parents[1]
FAULT_POINTS = ["store_records_written", "before_sqlite_commit", "after_sqlite_commit"]


@pytest.fixture(scope="module")
def es_node() -> Iterator[ElasticsearchNode]:
    node = ElasticsearchNode(name="fenced").start()
    try:
        yield node
    finally:
        node.cleanup()


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def bank(es_node: ElasticsearchNode, postgres: PostgresServer) -> Iterator[dict[str, str]]:
    """A fresh knowledge bank id and database per test (tests share the node and the cluster)."""
    kb_id = f"fenced-{uuid.uuid4().hex[:10]}"
    yield {"es": es_node.url, "db": postgres.create_kb_database(f"kb_{uuid.uuid4().hex[:12]}"), "kb": kb_id}


class Worker:
    """A writer process; its stdout lines are collected as they come."""

    def __init__(self, bank: dict[str, str], name: str, lease: float, mode: str, count: int = 0,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        command = [sys.executable, "-m", "tests.support.fenced_writer", bank["es"], bank["db"], bank["kb"], name,
                   str(lease), mode, str(count)]
        self.process = subprocess.Popen(command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True,
                                        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})
        self.lines: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.expect("ready", 60)

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.strip())
            self._queue.put(line.strip())

    def expect(self, word: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=0.2)
            except queue.Empty:
                if self.process.poll() is not None and self._queue.empty():
                    break
                continue
            if line.split()[0] == word:
                return line
        raise AssertionError(f"writer {self.name}: no {word!r} within {timeout}s; said {self.lines[-10:]}, "
                             f"stderr {self.stderr()[-2000:]}")

    def send(self, command: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout)

    def stderr(self) -> str:
        if self.process.poll() is None or self.process.stderr is None:
            return ""
        return self.process.stderr.read()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(30)


def read(store: ElasticsearchStore) -> tuple[int, dict[str, dict[str, Any]]]:
    """One read as a searcher makes it: the committed generation, then the documents visible at it; read again
    when two commits lapped it, as the store's own reads do (``stores.generations.WholeGenerationReads``)."""
    return store._whole(lambda view: (view.generation,
                                      {r.id: r.metadata for batch in view.iter_records() for r in batch}))


class Reader(threading.Thread):
    def __init__(self, bank: dict[str, str], history: History) -> None:
        super().__init__(daemon=True)
        self.store = open_es_store(bank["es"], bank["db"], bank["kb"], 5.0)
        self.history, self.failure = history, None
        self._stop_reading = threading.Event()

    def run(self) -> None:
        try:
            while not self._stop_reading.wait(0.01):
                self.history.reads.append(read(self.store))
        except BaseException as exc:  # noqa: BLE001 - reported by stop()
            self.failure = exc

    def stop(self) -> None:
        self._stop_reading.set()
        self.join(30)
        if self.failure is not None:
            raise self.failure


def write_here(store: ElasticsearchStore, name: str, history: History, timeout: float = 60.0) -> int:
    """A writer in the test process, recorded in ``history`` as the worker processes are."""
    with store.begin(timeout) as tx:
        generation = tx.generation
        records = generation_records(name, generation)
        history.intents[(name, generation)] = {r.id for r in records if r.id != "shared"}
        tx.upsert(records)
    history.acked.add((name, generation))
    return generation


def leftovers(store: ElasticsearchStore, committed: int) -> int:
    """Documents of uncommitted generations or uncommitted deletion marks, straight from the index."""
    store.call("indices.refresh", index=store.index)
    query = {"bool": {"should": [{"range": {"kb_gen": {"gt": committed}}},
                                 {"range": {"kb_del": {"gt": committed, "lt": NEVER}}}]}}
    return int(store.call("count", index=store.index, query=query)["count"])


def test_two_writers_in_two_processes_never_both_commit(bank: dict[str, str]) -> None:
    history = History()
    reader = Reader(bank, history)
    reader.start()
    writers = [Worker(bank, name, lease=5.0, mode="loop", count=12) for name in ("wa", "wb")]
    try:
        for writer in writers:
            assert writer.wait(300) == 0, writer.stderr()[-3000:]
    finally:
        for writer in writers:
            writer.kill()
        reader.stop()
    for writer in writers:
        history.writer_output(writer.name, writer.lines)
    final_store = open_es_store(bank["es"], bank["db"], bank["kb"], 5.0)
    history.reads.append(read(final_store))
    last = history.check()
    assert last == 24 and len(history.acked) == 24  # 24 acknowledged commits, 24 generations, one writer each
    assert {writer for writer, _ in history.acked} == {"wa", "wb"}
    assert len({generation for generation, _ in history.reads}) > 3, "the reader never raced the writers"
    with engine_for(bank["db"]).connect() as conn:
        epoch = conn.execute(select(kb_lease.c.epoch).where(kb_lease.c.kb == bank["kb"])).scalar_one()
    assert epoch >= 24  # each commit under its own lease: the epoch only grew
    assert leftovers(final_store, last) == 0


def test_writer_whose_lease_lapsed_is_fenced(bank: dict[str, str]) -> None:
    history = History()
    here = open_es_store(bank["es"], bank["db"], bank["kb"], 5.0)
    assert write_here(here, "w0", history) == 1
    stale = Worker(bank, "stale", lease=2.0, mode="steps")
    try:
        stale.send("begin")
        assert stale.expect("begun").split()[1] == "2"
        stale.send("write")
        stale.expect("written")
        os.kill(stale.process.pid, signal.SIGSTOP)  # a long GC pause, a partition: its renewals stop too
        time.sleep(3.5)  # past its lease
        assert write_here(here, "successor", history, timeout=10) == 2  # took the lapsed lease, cleaned, committed
        os.kill(stale.process.pid, signal.SIGCONT)
        stale.send("commit")
        fenced = stale.expect("fenced", 30)
        assert "another writer took this writer's lease over" in fenced
        assert not any(line.startswith("acked") for line in stale.lines)
        stale.send("quit")
        assert stale.wait(30) == 0
    finally:
        stale.kill()
    history.writer_output("stale", stale.lines)
    history.reads.append(read(here))
    assert history.check() == 2 and history.committed_by == {1: "w0", 2: "successor"}
    assert leftovers(here, 2) == 0  # the fenced writer's rollback removed nothing of its successor's
    assert write_here(here, "after", history) == 3  # and the knowledge bank goes on
    history.reads.append(read(here))
    assert history.check() == 3


@pytest.mark.parametrize("point", FAULT_POINTS)
def test_writer_killed_mid_commit(bank: dict[str, str], point: str) -> None:
    history = History()
    here = open_es_store(bank["es"], bank["db"], bank["kb"], 5.0)
    for _ in range(2):
        write_here(here, "w0", history)
    reader = Reader(bank, history)
    reader.start()
    victim = Worker(bank, "victim", lease=1.5, mode="loop", count=1, env={"KB_FAULT_POINT": point})
    try:
        assert victim.wait(120) == -signal.SIGKILL, victim.stderr()[-3000:]
    finally:
        victim.kill()
        reader.stop()
    history.writer_output("victim", victim.lines)
    committed, _ = read(here)
    assert committed == (3 if point == "after_sqlite_commit" else 2)
    started = time.monotonic()
    assert write_here(here, "next", history, timeout=30) == committed + 1  # waits for the dead writer's lease
    if point != "after_sqlite_commit":
        assert time.monotonic() - started >= 0.5  # (SIGKILL releases no lease: it lapsed)
    history.reads.append(read(here))
    assert history.check() == committed + 1
    assert leftovers(here, committed + 1) == 0


def test_random_kills_while_reading(bank: dict[str, str]) -> None:
    history = History()
    reader = Reader(bank, history)
    reader.start()
    rng = random.Random(28)
    victims: list[Worker] = []
    try:
        for cycle in range(4):
            victim = Worker(bank, f"v{cycle}", lease=1.0, mode="loop")
            victims.append(victim)
            victim.expect("acked", 120)  # it took over from the last victim (whose lease had to lapse)
            time.sleep(rng.uniform(0.0, 0.6))  # then dies anywhere in a later write
            victim.kill()
            assert victim.process.returncode == -signal.SIGKILL
    finally:
        for victim in victims:
            victim.kill()
        reader.stop()
    for victim in victims:
        history.writer_output(victim.name, victim.lines)
    here = open_es_store(bank["es"], bank["db"], bank["kb"], 5.0)
    committed = write_here(here, "last", history, timeout=30)
    history.reads.append(read(here))
    assert history.check() == committed
    assert sum(1 for name, _ in history.acked if name != "last") >= 4, "the victims committed too little to test"
    assert leftovers(here, committed) == 0

"""Chroma-server knowledge banks written and read by several kb servers over one database (issue 28).

Each "server" is a ``ChromaStore`` with a KB folder of its own (its cache: metadata copy, keyword index) on one
real ``chroma run`` server and one real PostgreSQL database holding the commit point and the change log
(stores/chroma/shared.py). Writers in other processes are real processes killed with SIGKILL at the driver's
fault points. The REST side (two ``kb serve`` processes) is in tests/test_multi_server.py.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select

from kb_base.errors import WriterBusyError, WriterFencedError
from kb_base.filters import parse_filter
from stores.base import Record, StoreContext
from stores.chroma import shared as shared_module
from stores.chroma.store import ChromaStore
from stores.commit_point.schema import engine_for, kb_changes
from tests.conformance.store_suite import StoreConformanceSuite, StoreFactory
from tests.support.chroma_hooks import before_first_call
from tests.support.chroma_server import ChromaServer
from tests.support.postgres_server import PostgresServer

ROOT = Path(__file__).resolve().parent.parent
DIM = 16


@pytest.fixture(scope="module")
def database(chroma_server: ChromaServer) -> Iterator[str]:
    """One database for the module (one pool and one commit listener); each test its own knowledge bank id."""
    server = PostgresServer().start()
    try:
        yield server.create_kb_database("kb")
    finally:
        server.stop()


class Servers:
    """Opens one knowledge bank as seen from kb servers ``a``, ``b``, ... (a KB folder each)."""

    def __init__(self, root: Path, chroma: ChromaServer, url: str) -> None:
        self.root, self.chroma, self.url = root, chroma, url
        self.kb_id = f"shared-{uuid.uuid4().hex[:10]}"

    def open(self, server: str, lease: float = 30.0) -> ChromaStore:
        store = ChromaStore(StoreContext(self.kb_id, self.root / server, connection={"url": self.chroma.url},
                                         database_url=self.url))
        assert store.shared is not None
        store.shared.ledger.lease_seconds = lease
        return store


@pytest.fixture
def servers(tmp_path: Path, chroma_server: ChromaServer, database: str) -> Servers:
    return Servers(tmp_path, chroma_server, database)


def doc(i: int, tag: str = "v1") -> Record:
    vector = np.random.default_rng(i).normal(size=DIM).astype(np.float32)
    words = ["solar", "honeybee", "glacier", "E1042", "kernel", "harbour"]
    text = f"note {i} about {words[i % len(words)]} {tag}"
    return Record(f"d{i}", text, {"i": i, "kind": words[i % len(words)], "tag": tag, "even": i % 2 == 0}, vector)


def answers(store: ChromaStore, query: np.ndarray) -> dict[str, object]:
    """Every kind of read, as comparable values."""
    flt = parse_filter({"$and": [{"i": {"$gte": 4}}, {"even": True}]})
    return {
        "count": store.count(), "filtered count": store.count(flt), "ids": sorted(store.ids_where(flt)),
        "similarity": [(h.record.id, round(h.score, 5)) for h in store.similarity(query, 5)],
        "filtered similarity": [h.record.id for h in store.similarity(query, 3, flt)],
        "keyword": [(h.record.id, round(h.score, 5)) for h in store.keyword("honeybee E1042", 5)],
        "tied keyword": [h.record.id for h in store.keyword("honeybee", 20)],  # equal scores: ranked by rowid
        "filtered keyword": [h.record.id for h in store.keyword("note", 10, parse_filter({"kind": "glacier"}))],
        "get": [(r.id, r.text, r.metadata) for r in store.get(["d1", "d3", "d7", "d40"])],
        "dimension": store.dimension,
    }


# --- the conformance suite, each open alternating between two servers' folders --------------------------


class TestChromaSharedConformance(StoreConformanceSuite):
    @pytest.fixture
    def store_factory(self, servers: Servers) -> StoreFactory:
        names = itertools.cycle("ab")
        return lambda: servers.open(next(names))


# --- reads through one server, writes through the other -----------------------------------------------


def test_what_a_writes_b_reads_identically_and_the_other_way_round(servers: Servers) -> None:
    a, b = servers.open("a"), servers.open("b")
    with a.begin() as tx:
        tx.upsert([doc(i) for i in range(30)])
    query = doc(7).vector
    assert answers(b, query) == answers(a, query)
    assert answers(b, query)["count"] == 30
    with b.begin() as tx:  # replace, delete, add through B
        tx.upsert([doc(3, "v2"), doc(40)])
        tx.delete(["d7", "d8"])
    seen = answers(a, query)
    assert seen == answers(b, query)
    assert seen["count"] == 29
    assert [r[0] for r in seen["get"]] == ["d1", "d3", "d40"]  # type: ignore[index]
    assert a.get(["d3"])[0].text.endswith("v2") and a.get(["d7"]) == []
    assert [h.record.id for h in a.keyword("v2", 3)] == ["d3"]
    with a.begin() as tx:  # two upserts out of id order: A's cache takes them in the order B's catch-up does
        tx.upsert([doc(55), doc(49)])
        tx.upsert([doc(43)])
    tied = [h for h in a.keyword("honeybee", 20) if h.score == a.keyword("honeybee", 1)[0].score]
    assert len(tied) > 3  # equal scores, ranked alike on both servers
    assert answers(a, query) == answers(b, query)


def test_a_clear_a_lost_cache_and_a_pruned_log_rebuild_the_cache(servers: Servers,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = servers.open("a"), servers.open("b")
    with a.begin() as tx:
        tx.upsert([doc(i) for i in range(12)])
    assert b.count() == 12
    with b.begin() as tx:  # a fresh collection: every other cache rebuilds
        tx.clear()
        tx.upsert([doc(i, "after") for i in range(100, 105)])
    query = doc(101).vector
    assert sorted(a.ids_where(None)) == [f"d{i}" for i in range(100, 105)]
    assert answers(a, query) == answers(b, query)
    a.close()
    (servers.root / "a" / "chroma-store" / "chroma-meta.sqlite").unlink()  # a server lost its cache
    for suffix in ("-wal", "-shm"):
        (servers.root / "a" / "chroma-store" / f"chroma-meta.sqlite{suffix}").unlink(missing_ok=True)
    a = servers.open("a")
    assert answers(a, query) == answers(b, query)
    monkeypatch.setattr(shared_module, "KEEP_GENERATIONS", 2)  # the log keeps two generations of changes
    assert a.count() == 5
    for n in range(4):
        with b.begin() as tx:
            tx.upsert([doc(200 + n)])
    engine = engine_for(servers.url)
    with engine.connect() as conn:
        kept = conn.execute(select(func.min(kb_changes.c.gen)).where(kb_changes.c.kb == servers.kb_id)).scalar()
    assert kept is not None and kept > 4  # older generations' changes were pruned: A is too far behind
    assert answers(a, query) == answers(b, query) and a.count() == 9


# --- writers ---------------------------------------------------------------------------------------


def test_two_writers_through_two_servers_never_both_commit(servers: Servers) -> None:
    a, b = servers.open("a"), servers.open("b")
    held = a.begin()
    with pytest.raises(WriterBusyError):
        b.begin(timeout=0.5)
    held.rollback()
    acked: list[tuple[str, int]] = []
    errors: list[BaseException] = []

    def writer(store: ChromaStore, name: str) -> None:
        try:
            for n in range(6):
                with store.begin(timeout=60) as tx:
                    tx.upsert([Record(f"{name}{n}", f"{name} wrote {n}", {"w": name}, doc(n).vector)])
                acked.append((name, tx.generation))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(s, n)) for s, n in ((a, "a"), (b, "b"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    generations = [g for _, g in acked]
    assert sorted(generations) == list(range(1, 13))  # every commit its own generation: none both committed
    assert sorted(a.ids_where(None)) == sorted(b.ids_where(None)) == sorted(f"{w}{n}" for w in "ab" for n in range(6))


def test_a_writer_whose_lease_was_taken_over_cannot_commit(servers: Servers) -> None:
    a, b = servers.open("a", lease=1.5), servers.open("b", lease=1.5)
    with a.begin() as tx:
        tx.upsert([doc(1)])
    paused = a.begin()
    paused.upsert([doc(2)])
    assert paused.shared is not None
    paused.shared.write.lease._stop.set()  # a long pause: its lease stops being renewed
    time.sleep(2.0)
    with pytest.raises(WriterFencedError):  # its own guard, which every Chroma write passes first
        paused.shared.write.fence()
    with b.begin(timeout=10) as tx:  # the successor takes the lease over, cleans up and commits
        tx.upsert([doc(4)])
    with pytest.raises(WriterFencedError):
        paused.commit()
    assert sorted(a.ids_where(None)) == sorted(b.ids_where(None)) == ["d1", "d4"]
    collection = b.live_collection()
    assert collection is not None and collection.count() == 2  # the fenced writer's records were cleaned up


def test_a_read_lapped_by_two_commits_of_another_server_reads_again(servers: Servers,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Server A's read takes its snapshot, then B commits twice before A's first Chroma call: A answers at B's
    newest generation, whole (tests/test_chroma_lapped_readers.py has the one-machine cases)."""
    a, b = servers.open("a"), servers.open("b")
    with b.begin() as tx:
        tx.upsert([doc(i, "v0") for i in range(12)])

    def commit_twice() -> None:
        for version in (1, 2):
            with b.begin() as tx:
                tx.upsert([doc(i, f"v{version}") for i in range(12)])

    seen = before_first_call(a.chroma, monkeypatch, commit_twice, methods=("query",))
    hits = a.similarity(doc(3).vector, 12)
    assert "query" in seen and {h.record.metadata["tag"] for h in hits} == {"v2"} and len(hits) == 12


WRITER = textwrap.dedent("""
    import sys
    from pathlib import Path
    import numpy as np
    from stores.base import Record, StoreContext
    from stores.chroma.store import ChromaStore
    folder, kb_id, chroma, url = sys.argv[1:5]
    store = ChromaStore(StoreContext(kb_id, Path(folder), connection={"url": chroma}, database_url=url))
    store.shared.ledger.lease_seconds = 2.0
    with store.begin(10) as tx:
        tx.upsert([Record(f"k{i}", f"killed writer {i}", {"i": i},
                          np.random.default_rng(i).normal(size=16).astype(np.float32)) for i in range(20)])
        tx.delete(["d1"])
""")


@pytest.mark.parametrize("point", ["store_records_written", "before_sqlite_commit", "after_sqlite_commit"])
def test_a_sigkilled_writer_is_rolled_back_or_committed_whole(servers: Servers, point: str) -> None:
    b = servers.open("b")
    with b.begin() as tx:
        tx.upsert([doc(i) for i in range(5)])
    killed = subprocess.run([sys.executable, "-c", WRITER, str(servers.root / "a"), servers.kb_id,
                             servers.chroma.url, servers.url], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "KB_FAULT_POINT": point})
    assert killed.returncode == -9, killed.stderr[-2000:]
    committed = point == "after_sqlite_commit"  # the database had committed: the write is whole and visible
    expected = ([f"d{i}" for i in range(5) if i != 1] + [f"k{i}" for i in range(20)]) if committed else \
        [f"d{i}" for i in range(5)]
    assert sorted(b.ids_where(None)) == sorted(expected)
    started = time.monotonic()
    with b.begin(timeout=30) as tx:  # waits for the dead writer's lease to lapse, then removes its leftovers
        tx.upsert([doc(9)])
    assert time.monotonic() - started < 10
    with b.begin() as tx:  # what a generation retired is vacuumed by the writer two generations later
        tx.upsert([doc(8)])
    expected += ["d9", "d8"]
    assert sorted(b.ids_where(None)) == sorted(expected)
    collection = b.live_collection()
    assert collection is not None and collection.count() == len(expected)  # no leftovers; a retired d1 vacuumed
    a = servers.open("a")  # the killed server's cache (mid-transaction, or behind) catches up
    assert sorted(a.ids_where(None)) == sorted(expected)
    assert answers(a, doc(2).vector) == answers(b, doc(2).vector)


def test_deleting_the_knowledge_bank_through_one_server_removes_it_everywhere(servers: Servers) -> None:
    import chromadb

    from stores.commit_point.schema import kb_commit, kb_meta, kb_records

    a, b = servers.open("a"), servers.open("b")
    with a.begin() as tx:
        tx.upsert([doc(i) for i in range(4)])
    with b.begin() as tx:  # a clear leaves the old collection to be dropped by a later commit
        tx.clear()
        tx.upsert([doc(9)])
    assert a.count() == 1
    base = a.shared.collection_base if a.shared else ""
    client = chromadb.HttpClient(host="127.0.0.1", port=servers.chroma.port)
    assert [c.name for c in client.list_collections() if c.name.startswith(base)]
    check = a.check()
    assert check.ok, check.problems
    b.destroy()
    assert not [c.name for c in client.list_collections() if c.name.startswith(base)]
    engine = engine_for(servers.url)
    with engine.connect() as conn:
        for table in (kb_commit, kb_records, kb_meta, kb_changes):
            assert conn.execute(select(func.count()).where(table.c.kb == servers.kb_id)).scalar() == 0, table.name
    again = servers.open("a")  # a knowledge bank of the same id made again: A's old cache is not reused
    assert again.count() == 0 and again.similarity(doc(9).vector, 3) == []


def test_readers_on_another_server_see_one_whole_generation_at_a_time(servers: Servers) -> None:
    """A writes eight generations, each replacing all ten documents (metadata g = the round); B reads all the
    while by id, by keyword and by vector: every read returns all ten from one round, never going back."""
    a, b = servers.open("a"), servers.open("b")
    ids = [f"w{i}" for i in range(10)]

    def round_records(g: int) -> list[Record]:
        return [Record(i, f"entry {i} of round {g}", {"g": g}, doc(n).vector) for n, i in enumerate(ids)]

    with a.begin() as tx:
        tx.upsert(round_records(0))
    stop = threading.Event()
    seen: dict[str, list[int]] = {"get": [], "keyword": [], "similarity": []}
    problems: list[str] = []

    def read() -> None:
        while not stop.is_set():
            try:
                for kind, found in (("get", [r.metadata["g"] for r in b.get(ids)]),
                                    ("keyword", [h.record.metadata["g"] for h in b.keyword("entry round", 20)]),
                                    ("similarity", [h.record.metadata["g"] for h in b.similarity(doc(3).vector, 10)])):
                    if len(found) != 10 or len(set(found)) != 1:
                        problems.append(f"{kind} saw {sorted(found)}")
                    elif seen[kind] and found[0] < seen[kind][-1]:
                        problems.append(f"{kind} went back from {seen[kind][-1]} to {found[0]}")
                    else:
                        seen[kind].append(found[0])
            except Exception as exc:  # noqa: BLE001 - a failed read is a finding too
                problems.append(f"{type(exc).__name__}: {exc}")

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for g in range(1, 9):
            with a.begin() as tx:
                tx.upsert(round_records(g))
            time.sleep(0.1)
    finally:
        time.sleep(0.3)
        stop.set()
        reader.join(60)
    assert not problems, problems[:5]
    assert all(len(set(values)) >= 3 and values[-1] == 8 for values in seen.values()), seen

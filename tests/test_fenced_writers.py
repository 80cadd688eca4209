"""The commit point in a shared database (stores/commit_point/database.py, issue 28): lease, epoch, compare-and-set.

Ledger-level tests, on SQLite (one machine) and on a real PostgreSQL cluster. The multi-process tests with a
real Elasticsearch node are in test_fenced_writers_es.py.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import event

from kb_base.errors import InvalidInputError, StoreUnavailableError, WriterBusyError, WriterFencedError
from stores.base import StoreContext
from stores.commit_point.database import DatabaseLedger, open_ledger
from stores.commit_point.schema import normalise_url
from stores.factory import open_store
from stores.generations import GenerationLedger
from tests.support.postgres_server import PostgresServer, kb_schema


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return kb_schema(f"sqlite:///{tmp_path / 'commit.sqlite'}")
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.create_kb_database(f"kb_{uuid.uuid4().hex[:12]}")


def _write(ledger: DatabaseLedger, pairs: list[tuple[str, str]], retire: list[str] | None = None,
           timeout: float = 5.0) -> int:
    write = ledger.begin(timeout)
    try:
        if retire:
            write.retire(retire)
        write.add(pairs, dim=4)
        write.commit()
        return write.generation
    finally:
        write.close()


def test_commit_moves_generation_and_id_map(database_url: str) -> None:
    ledger = DatabaseLedger(database_url, "kb-a")
    assert ledger.committed() == (0, None)
    assert _write(ledger, [("a", "1:a"), ("b", "1:b")]) == 1
    assert ledger.committed() == (1, 4) and sorted(ledger.ids()) == ["a", "b"]
    write = ledger.begin(5.0)
    own, older = write.retire(["a", "zzz"])
    assert (own, older) == ([], ["1:a"])
    write.add([("a", "2:a")])
    assert write.retire(["a"]) == (["2:a"], [])  # written by this generation: deleted outright
    assert sorted(write.all_ids()) == ["b"]
    write.rollback()
    write.close()
    assert ledger.committed() == (1, 4) and sorted(ledger.ids()) == ["a", "b"]  # a rollback changes nothing
    other = DatabaseLedger(database_url, "kb-b")  # knowledge banks share the tables, never rows
    assert other.committed() == (0, None) and other.ids() == []
    ledger.destroy()
    assert DatabaseLedger(database_url, "kb-a").committed() == (0, None)


def test_second_writer_waits_then_gets_busy(database_url: str) -> None:
    first, second = DatabaseLedger(database_url, "kb"), DatabaseLedger(database_url, "kb")
    write = first.begin(5.0)
    started = time.monotonic()
    with pytest.raises(WriterBusyError, match="being written by another writer") as busy:
        second.begin(0.5)
    assert not isinstance(busy.value, WriterFencedError)
    assert time.monotonic() - started >= 0.5
    epoch = write.lease.epoch
    write.close()
    after = second.begin(0.5)  # released: taken at once, with a new epoch
    assert after.lease.epoch == epoch + 1
    after.close()


def test_waiting_writer_gets_the_lease_when_it_is_released(database_url: str) -> None:
    ledger = DatabaseLedger(database_url, "kb")
    write = ledger.begin(5.0)
    threading.Timer(0.4, write.close).start()
    started = time.monotonic()
    waiting = ledger.begin(10.0)
    assert 0.3 < time.monotonic() - started < 5
    waiting.close()


def test_renewal_keeps_a_live_writer_past_its_lease(database_url: str) -> None:
    ledger = DatabaseLedger(database_url, "kb", lease_seconds=0.6)
    write = ledger.begin(5.0)
    time.sleep(1.5)  # 2.5 leases: renewed in the background meanwhile
    with pytest.raises(WriterBusyError):
        DatabaseLedger(database_url, "kb").begin(0.2)
    write.retire(["x"])  # the local guard lets it write
    write.add([("x", "1:x")])
    write.commit()
    write.close()
    assert ledger.committed()[0] == 1


def test_lapsed_writer_is_fenced_and_its_successor_stands(database_url: str) -> None:
    ledger = DatabaseLedger(database_url, "kb", lease_seconds=0.5)
    _write(ledger, [("a", "1:a")])
    stale = ledger.begin(5.0)
    stale.add([("stale", "2:stale")])
    stale.lease._stop.set()  # its renewals stop, as when the process is paused (the ES test uses SIGSTOP)
    stale.lease._thread.join()
    time.sleep(0.7)
    successor = DatabaseLedger(database_url, "kb").begin(1.0)  # the lapsed lease is taken: epoch + 1
    assert successor.lease.epoch == stale.lease.epoch + 1 and successor.generation == 2
    with pytest.raises(WriterFencedError):
        stale.retire(["a"])  # its local guard refuses store writes
    successor.add([("new", "2:new")])
    successor.commit()
    successor.close()
    with pytest.raises(WriterFencedError, match="another writer took this writer's lease over") as fenced:
        stale.commit()  # same generation number, older epoch: the compare-and-set matches nothing
    assert isinstance(fenced.value, WriterBusyError) and fenced.value.code == "writer_fenced"
    assert not stale.holds_lock()  # so the driver will not clean what lies above its C (the successor's)
    stale.close()
    assert ledger.committed() == (2, 4) and sorted(ledger.ids()) == ["a", "new"]


def test_lapsed_writer_is_fenced_even_when_nobody_committed_since(database_url: str) -> None:
    ledger = DatabaseLedger(database_url, "kb", lease_seconds=0.5)
    stale = ledger.begin(5.0)
    stale.lease._stop.set()
    stale.lease._thread.join()
    time.sleep(0.7)
    successor = ledger.begin(1.0)  # takes the lease, commits nothing (generation stays 0)
    successor.close()
    stale.add([("stale", "1:stale")])
    with pytest.raises(WriterFencedError):
        stale.commit()  # generation would match: the epoch does not
    stale.close()
    assert ledger.committed() == (0, None) and ledger.ids() == []


def test_existing_sqlite_ledger_moves_into_the_database(database_url: str, tmp_path: Path) -> None:
    folder = tmp_path / "es-store"
    old = GenerationLedger(folder, "es-meta.sqlite", "kb")
    for generation in (1, 2):
        write = old.begin(5.0)
        write.retire(["a"])
        write.add([("a", f"{generation}:a"), (f"d{generation}", f"{generation}:d{generation}")], dim=8)
        write.commit()
        write.close()
    old.set_meta("index", "http://x kb-kb")
    old.close()
    moved = open_ledger(folder, "es-meta.sqlite", "kb", database_url)
    assert isinstance(moved, DatabaseLedger)
    assert moved.committed() == (2, 8) and sorted(moved.ids()) == ["a", "d1", "d2"]
    assert moved.meta("index") == "http://x kb-kb"
    write = moved.begin(5.0)
    assert write.retire(["a"]) == ([], ["2:a"])
    write.close()
    sqlite3.connect(folder / "es-meta.sqlite").execute("UPDATE meta SET value = '9' WHERE key = 'generation'")
    assert DatabaseLedger(database_url, "kb").committed()[0] == 2  # seeded once: the database is the truth


def test_without_a_url_the_folder_ledger_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KB_DATABASE_URL", raising=False)
    assert isinstance(open_ledger(tmp_path, "x.sqlite", "kb", None), GenerationLedger)
    store = open_store("ELASTICSEARCH", StoreContext("kb", tmp_path / "kb", connection={"url": "http://127.0.0.1:9"}))
    assert isinstance(store.ledger, GenerationLedger) and store.context.database_url is None  # type: ignore[attr-defined]
    url = kb_schema(f"sqlite:///{tmp_path / 'shared.sqlite'}")
    monkeypatch.setenv("KB_DATABASE_URL", url)
    store = open_store("ELASTICSEARCH", StoreContext("kb", tmp_path / "kb", connection={"url": "http://127.0.0.1:9"}))
    assert isinstance(store.ledger, DatabaseLedger) and store.context.database_url == url  # type: ignore[attr-defined]
    explicit = kb_schema(f"sqlite:///{tmp_path / 'explicit.sqlite'}")
    store = open_store("ELASTICSEARCH", StoreContext("kb", tmp_path / "kb", connection={"url": "http://127.0.0.1:9"}),
                       database_url=explicit)
    assert store.context.database_url == explicit


def test_database_urls() -> None:
    assert normalise_url("postgresql://kb@db.internal/kb") == "postgresql+pg8000://kb@db.internal/kb"
    assert normalise_url("postgres://kb@db/kb") == "postgresql+pg8000://kb@db/kb"
    assert normalise_url("sqlite:////tmp/x.sqlite") == "sqlite:////tmp/x.sqlite"
    with pytest.raises(InvalidInputError, match="PostgreSQL"):
        DatabaseLedger("mysql+pymysql://kb@db/kb", "kb")


def test_database_down_is_store_unavailable(tmp_path: Path) -> None:
    server = PostgresServer().start()
    url = server.create_kb_database("kb")
    ledger = DatabaseLedger(url, "kb")
    server.stop()
    with pytest.raises(StoreUnavailableError, match="commit-point database is unavailable"):
        ledger.committed()  # a 503 over REST, not a 500
    with pytest.raises(StoreUnavailableError, match="no writer can start"):
        ledger.begin(0.5)


def test_connections_lost_with_a_database_restart_are_replaced(postgres: PostgresServer) -> None:
    """Every server connection dropped at once (what a restart does to a pool): at most one read fails, with a
    503; writes (whose pool pre-pings) do not fail at all."""
    from sqlalchemy import create_engine, text

    url = postgres.create_kb_database(f"kb_{uuid.uuid4().hex[:12]}")
    ledger = DatabaseLedger(url, "kb")
    _write(ledger, [("a", "1:a")])
    for _ in range(3):
        assert ledger.committed() == (1, 4)
    admin = create_engine(postgres.url("postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        dropped = conn.execute(text("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                    "WHERE datname = :db"), {"db": url.rsplit("/", 1)[1]}).scalar_one()
    admin.dispose()
    assert dropped >= 2  # the read pool's connection and the write pool's
    failures = 0
    for _ in range(3):
        try:
            assert ledger.committed() == (1, 4)
        except StoreUnavailableError:
            failures += 1
    assert failures <= 1
    assert _write(ledger, [("b", "2:b")]) == 2


def test_the_history_checker_catches_what_it_is_for() -> None:
    """Negative controls for tests/support/generation_history.py: each broken history fails."""
    from tests.support.generation_history import History

    def history(*reads: tuple[int, dict[str, dict[str, object]]]) -> History:
        h = History(intents={("a", 1): {"a-1-0", "a-1-1"}, ("b", 2): {"b-2-0"}, ("a", 2): {"a-2-0"}},
                    acked={("a", 1), ("b", 2)})
        h.reads = list(reads)
        return h

    one = {"a-1-0": {"gen": 1, "writer": "a"}, "a-1-1": {"gen": 1, "writer": "a"}, "shared": {"gen": 1, "writer": "a"}}
    two = {**one, "b-2-0": {"gen": 2, "writer": "b"}, "shared": {"gen": 2, "writer": "b"}}
    assert history((1, one), (2, two)).check() == 2
    torn = {k: v for k, v in one.items() if k != "a-1-1"}
    both = {**two, "a-2-0": {"gen": 2, "writer": "a"}}
    ahead = {**one, "b-2-0": {"gen": 2, "writer": "b"}}
    stale_shared = {**two, "shared": {"gen": 1, "writer": "a"}}
    broken = {"partly visible": [(1, torn)], "shows writers": [(2, both)], "uncommitted generation": [(1, ahead)],
              "'shared'": [(2, stale_shared)], "backwards": [(2, two), (1, one)], "never became visible": [(1, one)]}
    for message, reads in broken.items():
        with pytest.raises(AssertionError, match=message):
            history(*reads).check()
    other = {**one, "a-2-0": {"gen": 2, "writer": "a"}, "shared": {"gen": 2, "writer": "a"}}
    with pytest.raises(AssertionError, match="lost"):
        history((2, other)).check()  # b's acknowledged generation 2 is a's in the store


# --- the per-server cache of committed generations (stores/commit_point/watch.py), on PostgreSQL ------------

_COMMITTER = """
import sys
from stores.commit_point.database import DatabaseLedger
ledger = DatabaseLedger(sys.argv[1], sys.argv[2])
for line in sys.stdin:  # one commit per line: another server's writer, with its own process and cache
    write = ledger.begin(10.0)
    write.add([(f"x{write.generation}", f"{write.generation}:x")], dim=4)
    write.commit()
    write.close()
    print(write.generation, flush=True)
"""


class OtherServer:
    """A writer in another process, started ahead (imports done) so that its commits land when asked."""

    def __init__(self, url: str, kb_id: str) -> None:
        root = Path(__file__).resolve().parents[1]
        self.process = subprocess.Popen([sys.executable, "-c", _COMMITTER, url, kb_id], cwd=root, text=True,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        env={**os.environ, "PYTHONPATH": str(root)})

    def commit(self) -> int:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write("commit\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        assert line, f"the other server's writer died ({self.process.wait(10)})"
        return int(line)

    def stop(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(30)


def _cache_warm(ledger: DatabaseLedger, budget: float = 10.0) -> None:
    """Until the listener is connected and holds this knowledge bank's generation."""
    deadline = time.monotonic() + budget
    while ledger.watch.cached(ledger.kb_id) is None:
        assert time.monotonic() < deadline, "the commit listener never became ready"
        ledger.committed()
        time.sleep(0.02)


def _seen_within(ledger: DatabaseLedger, generation: int, budget: float) -> float:
    started = time.monotonic()
    while ledger.committed()[0] < generation:
        assert time.monotonic() - started < budget, f"generation {generation} not seen within {budget} s"
        time.sleep(0.002)
    return time.monotonic() - started


def test_reads_come_from_the_cache_and_commits_elsewhere_reach_it_within_a_second(postgres: PostgresServer) -> None:
    url = postgres.create_kb_database(f"kb_{uuid.uuid4().hex[:12]}")
    ledger = DatabaseLedger(url, "kb")
    other = OtherServer(url, "kb")
    try:
        _cache_warm(ledger)
        statements: list[str] = []
        event.listen(ledger.reads, "before_cursor_execute", lambda *args: statements.append(args[2]))
        for _ in range(200):
            assert ledger.committed() == (0, None)
        assert statements == []  # no database round trip per read
        for _ in range(3):
            generation = other.commit()
            seen = _seen_within(ledger, generation, 1.0)
            print(f"generation {generation} committed by another process, seen here after {seen * 1000:.1f} ms")
        assert ledger.committed() == (generation, 4)
        assert _write(ledger, [("mine", "x:mine")]) == generation + 1
        assert ledger.committed()[0] == generation + 1  # this server's own commit: at once, not after a notification
    finally:
        other.stop()


def test_the_listener_works_in_a_process_with_more_than_1024_open_files(postgres: PostgresServer) -> None:
    """A busy server has file descriptors above 1023, which select() refuses: the listener must still become
    ready (else every search reads the database)."""
    url = postgres.create_kb_database(f"kb_{uuid.uuid4().hex[:12]}")
    script = textwrap.dedent(f"""
        import os, resource, time
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
        held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
        from stores.commit_point.database import DatabaseLedger
        ledger = DatabaseLedger({url!r}, "kb")
        deadline = time.monotonic() + 15
        while ledger.watch.cached("kb") is None:
            assert time.monotonic() < deadline, "the commit listener never became ready"
            ledger.committed()
            time.sleep(0.02)
        print("ready", held[-1])
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.split()[1]) > 1024


def test_commits_made_while_the_listener_was_disconnected_are_not_missed(postgres: PostgresServer) -> None:
    """A new listener session empties the cache: the notification of a commit made while no connection listened
    is lost, and a cached generation from before it would otherwise stay for ever."""
    from sqlalchemy import create_engine, text

    url = postgres.create_kb_database(f"kb_{uuid.uuid4().hex[:12]}")
    ledger = DatabaseLedger(url, "kb")
    other = OtherServer(url, "kb")
    admin = create_engine(postgres.url("postgres"), isolation_level="AUTOCOMMIT")
    try:
        assert other.commit() == 1
        _cache_warm(ledger)
        assert ledger.committed() == (1, 4)
        with admin.connect() as conn:  # what a database restart or a network cut does to every connection
            conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :db AND "
                              "pid <> pg_backend_pid()"), {"db": url.rsplit("/", 1)[1]})
        assert other.commit() == 2  # lands before the listener is back (it retries after a second)
        seen = _seen_within(ledger, 2, 5.0)
        print(f"commit made while the listener was down, seen after {seen * 1000:.0f} ms")
        _cache_warm(ledger)
        assert ledger.watch.cached("kb") == (2, 4)
    finally:
        admin.dispose()
        other.stop()


def test_a_writer_starts_from_the_database_never_from_the_cache(postgres: PostgresServer) -> None:
    """A writer cleans the store above its C: a stale cached C would remove a committed generation."""
    url = postgres.create_kb_database(f"kb_{uuid.uuid4().hex[:12]}")
    ledger = DatabaseLedger(url, "kb")
    assert _write(ledger, [("a", "1:a")]) == 1
    _cache_warm(ledger)
    with ledger.watch._lock:  # as if the notification of another server's generation 2 had not arrived yet
        ledger.watch._values["kb"] = (0, None)
    seen: list[int] = []
    write = ledger.begin(5.0, prepare=lambda notes: seen.append(notes.committed))
    try:
        assert seen == [1] and write.committed == 1 and write.generation == 2
    finally:
        write.close()


def test_lease_length_comes_from_the_environment(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """KB_WRITER_LEASE_SECONDS sets how long a crashed writer blocks its knowledge bank; a crashed writer's
    lease (one that stopped renewing) then lapses after that long and not the default 30 s."""
    monkeypatch.setenv("KB_WRITER_LEASE_SECONDS", "3")
    crashed = DatabaseLedger(database_url, "kb").begin(5.0)
    assert crashed.lease.seconds == 3.0
    crashed.lease._stop.set()  # it stops renewing, as a SIGKILLed server does
    crashed.lease._thread.join()
    started = time.monotonic()
    successor = DatabaseLedger(database_url, "kb").begin(10.0)
    assert 1.0 < time.monotonic() - started < 6.0  # waited for the 3 s lease to lapse, not 30 s
    successor.close()


@pytest.mark.parametrize("value", ["soon", "0.5", "7200"])
def test_a_bad_lease_length_is_refused_by_name(value: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KB_WRITER_LEASE_SECONDS", value)
    url = kb_schema(f"sqlite:///{tmp_path / 'commit.sqlite'}")
    with pytest.raises(ValueError, match="KB_WRITER_LEASE_SECONDS"):
        DatabaseLedger(url, "kb").begin(1.0)


def test_the_server_refuses_to_start_on_a_bad_lease_length(monkeypatch: pytest.MonkeyPatch) -> None:
    from api.config import ServiceSettings

    monkeypatch.setenv("KB_WRITER_LEASE_SECONDS", "thirty")
    with pytest.raises(InvalidInputError, match="KB_WRITER_LEASE_SECONDS='thirty' is not a number"):
        ServiceSettings.from_env()


def test_the_first_writer_after_a_database_restart_reads_its_notes(postgres: PostgresServer) -> None:
    """Reads for searches use a pool without pre-ping (its first read after a restart fails, by design); a
    writer's cleanup notes must not: the first write after the database came back goes through."""
    url = postgres.create_kb_database(f"kb_{uuid.uuid4().hex[:12]}")
    ledger = DatabaseLedger(url, "kb")
    _write(ledger, [("a", "1:a")])
    ledger.set_meta("live", "one")
    assert ledger.meta("live") == "one"  # the read pool holds a connection now
    postgres.shut_down()
    postgres.start_again()
    seen: list[str | None] = []
    write = ledger.begin(10.0, prepare=lambda notes: seen.append(notes.meta("live")))
    write.add([("b", "2:b")], dim=4)
    write.commit()
    write.close()
    assert seen == ["one"] and ledger._read_committed(ledger.engine) == (2, 4)

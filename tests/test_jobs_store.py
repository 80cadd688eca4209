"""Jobs in the catalog database (SQLite, and PostgreSQL for the claims and the takeover): claims are
exclusive, a lapsed heartbeat lets another server take the job over and fences the first one off, reports and
progress persist, at most one sync job of a knowledge bank is active; a home of the previous schema revision
upgrades itself and keeps its knowledge banks."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.config import Config

import kb
from api.jobs import JobRunner, RunningJob
from kb.catalog_db import CatalogDatabase
from kb.catalog_db.engine import make_engine, normalise_url
from kb.catalog_db.jobs import MAX_ATTEMPTS, JobStore
from kb.catalog_db.schema import HEAD_REVISION, MIGRATIONS, VERSION_TABLE, upgrade
from kb_base.errors import SyncBusyError
from tests.support.postgres_server import PostgresServer

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer().start()
    yield server
    server.stop()


@pytest.fixture
def catalog_file(tmp_path: Path) -> Path:
    path = tmp_path / "catalog.sqlite"
    CatalogDatabase(path).close()  # created at the head
    return path


@pytest.fixture(params=["sqlite", "postgresql"])
def catalog(request: pytest.FixtureRequest, tmp_path: Path) -> str | Path:
    """The catalog a test's servers share: a SQLite file, or a PostgreSQL database upgraded as an operator does."""
    if request.param == "sqlite":
        path = tmp_path / "catalog.sqlite"
        CatalogDatabase(path).close()
        return path
    url = request.getfixturevalue("postgres").create_database(f"jobs_{uuid.uuid4().hex[:10]}")
    engine = make_engine(normalise_url(url))
    upgrade(engine)
    engine.dispose()
    return url


def _store(location: str | Path, lapse: float = 10.0) -> JobStore:
    return JobStore(CatalogDatabase(location), lapse=lapse)


def test_two_claimers_never_take_the_same_job(catalog: str | Path) -> None:
    submitter = _store(catalog)
    ids = [submitter.submit("ingest", "P", "kb1", {"n": n}).id for n in range(40)]
    claims: list[tuple[str, str]] = []
    lock = threading.Lock()

    def claimer(name: str) -> None:
        store = _store(catalog)  # its own engine and connections, as another process would have
        while (row := store.claim(name)) is not None:
            with lock:
                claims.append((row.id, name))
            time.sleep(0.01)  # runs it a moment: the other claimer's turn

    threads = [threading.Thread(target=claimer, args=(f"server-{i}",)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    counts = Counter(job_id for job_id, _ in claims)
    assert sorted(counts) == sorted(ids) and set(counts.values()) == {1}
    for job_id, name in claims:
        row = submitter.get(job_id)
        assert row is not None and (row.state, row.owner, row.attempts) == ("running", name, 1)
    per_server = Counter(name for _, name in claims)
    assert len(per_server) == 2, per_server  # both took part: the exclusivity was contested
    print("claims per server:", per_server)


def test_a_lapsed_job_is_taken_over_and_its_first_owner_is_fenced_off(catalog: str | Path) -> None:
    a, b = _store(catalog, lapse=0.5), _store(catalog, lapse=0.5)
    job_id = a.submit("ingest", "P", "kb1", {"file": "/rows.jsonl"}).id
    assert a.claim("A") is not None
    assert b.claim("B") is None and not b.any_claimable()  # A's heartbeat is fresh
    for _ in range(3):
        time.sleep(0.2)
        assert a.heartbeat(job_id, "A", {"rows_read": 10}) == "ours" and b.claim("B") is None  # heartbeats keep it A's
    time.sleep(0.8)  # A stops heartbeating (it died)
    taken = b.claim("B")
    assert taken is not None and taken.id == job_id and taken.owner == "B" and taken.attempts == 2
    assert taken.progress == {"rows_read": 10} and taken.payload == {"file": "/rows.jsonl"}
    # A comes back from its pause: every write of its is refused
    assert a.heartbeat(job_id, "A", {"rows_read": 99}) == "lost"
    assert not a.finish(job_id, "A", "succeeded", report={"by": "A"})
    assert b.finish(job_id, "B", "succeeded", report={"rows_written": 30}, progress={"rows_read": 30})
    again = _store(catalog).get(job_id)  # read back through another connection: persisted
    assert again is not None and (again.state, again.report, again.progress) == (
        "succeeded", {"rows_written": 30}, {"rows_read": 30})
    assert again.finished_at is not None and again.error is None
    assert b.claim("B") is None  # a finished job is never claimed


def test_only_one_sync_job_of_a_knowledge_bank_is_active(catalog: str | Path) -> None:
    a, b = _store(catalog), _store(catalog)
    first = a.submit("sync", "P", "kb1", {"folder_id": "P.f"}, owner="A")
    with pytest.raises(SyncBusyError, match="another folder sync"):
        b.submit("sync", "P", "kb1", {"folder_id": "P.f"}, owner="B")
    other = b.submit("sync", "P", "kb2", {"folder_id": "P.f"}, owner="B")  # another knowledge bank: free
    assert a.finish(first.id, "A", "failed", error={"code": "x", "message": "y"})
    second = b.submit("sync", "P", "kb1", {"folder_id": "P.f"}, owner="B")  # free again once it ended
    assert [r.id for r in a.list("P", "sync", newest_first=False)] == [first.id, other.id, second.id]
    assert [r.id for r in a.list("P", "sync", kb_id="kb1")] == [second.id, first.id]


def test_a_runner_takes_over_a_dead_servers_job_runs_it_and_saves_its_report(catalog_file: Path) -> None:
    store = _store(catalog_file, lapse=0.3)
    dead = store.submit("ingest", "P", "kb1", {"rows": 3}, progress={"rows_read": 1}, owner="dead-server")
    progress_seen: list[dict[str, Any]] = []

    def handler(job: RunningJob) -> dict[str, Any]:
        for n in range(2, job.payload["rows"] + 1):
            job.committed({"rows_read": n})
            row = store.get(job.id)
            assert row is not None
            progress_seen.append(row.progress)
        return {"rows_written": job.payload["rows"], "attempt": job.row.attempts}

    runner = JobRunner(_store(catalog_file, lapse=0.3), {"ingest": handler}, poll_seconds=0.1,
                       heartbeat_seconds=0.1, server_id="B").start()
    try:
        deadline = time.monotonic() + 20
        while (row := store.get(dead.id)) is not None and row.state != "succeeded":
            assert time.monotonic() < deadline, row
            time.sleep(0.05)
        assert row is not None and row.report == {"rows_written": 3, "attempt": 2} and row.owner == "B"
        assert progress_seen == [{"rows_read": 2}, {"rows_read": 3}]  # saved at each commit, readable at once
        queued = runner.submit("ingest", "P", "kb1", {"rows": 2})
        while (row := store.get(queued.id)) is not None and row.state != "succeeded":
            assert time.monotonic() < deadline, row
            time.sleep(0.05)
        assert row is not None and row.attempts == 1
    finally:
        runner.close()


def test_a_failing_job_ends_failed_with_its_error_and_a_job_that_keeps_killing_servers_is_abandoned(
        catalog_file: Path) -> None:
    store = _store(catalog_file, lapse=0.2)

    def handler(job: RunningJob) -> dict[str, Any]:
        raise SyncBusyError("knowledge bank kb1 is busy")

    poison = store.submit("ingest", "P", "kb1", {}, owner="dead")
    for attempt in range(MAX_ATTEMPTS - 1):  # each time, its server died
        time.sleep(0.3)
        claimed = store.claim(f"dead-{attempt}")
        assert claimed is not None and claimed.id == poison.id and claimed.attempts == attempt + 2
    failing = store.submit("ingest", "P", "kb1", {})
    time.sleep(0.3)
    runner = JobRunner(_store(catalog_file, lapse=0.2), {"ingest": handler}, poll_seconds=0.1,
                       heartbeat_seconds=0.1, workers=2, server_id="B").start()
    try:
        deadline = time.monotonic() + 20
        while any((r := store.get(i)) is None or r.state == "running" or r.state == "queued"
                  for i in (failing.id, poison.id)):
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        runner.close()
    failed, abandoned = store.get(failing.id), store.get(poison.id)
    assert failed is not None and failed.state == "failed" and failed.error == {
        "code": "busy", "message": "knowledge bank kb1 is busy"} and failed.attempts == 1
    assert abandoned is not None and abandoned.state == "failed" and abandoned.error is not None
    assert abandoned.error["code"] == "abandoned" and abandoned.attempts == MAX_ATTEMPTS + 1


def _catalog_at(path: Path, revision: str) -> None:
    """A SQLite catalog as a release at ``revision`` left it."""
    engine = make_engine(normalise_url(path))  # not CatalogDatabase: its start-up check would upgrade it
    with engine.connect() as conn:
        conn.execution_options(kb_write=True)
        with conn.begin():
            config = Config()
            config.set_main_option("script_location", str(MIGRATIONS))
            config.attributes["connection"] = conn
            command.upgrade(config, revision)
    engine.dispose()


def test_a_home_at_revision_0002_upgrades_itself_and_kb_db_upgrade_works(tmp_path: Path) -> None:
    for home, how in ((tmp_path / "auto", "first use"), (tmp_path / "explicit", "kb db upgrade")):
        home.mkdir()
        _catalog_at(home / "catalog.sqlite", "0002")
        client = kb.api_client(home=home) if how == "first use" else None
        if client is None:
            done = subprocess.run([str(Path(sys.executable).parent / "kb"), "db", "upgrade", "--home", str(home)],
                                  capture_output=True, text=True, cwd=ROOT, timeout=120)
            assert done.returncode == 0 and f"to schema revision {HEAD_REVISION}" in done.stdout, done.stderr
            client = kb.api_client(home=home)
        try:
            with client.catalog.database.read() as conn:
                version = conn.exec_driver_sql(f"SELECT version_num FROM {VERSION_TABLE}").scalar_one()
            assert version == HEAD_REVISION
            store = JobStore(client.catalog.database)
            job = store.submit("sync", "DEFAULT", "kb1", {"folder_id": "x"}, owner="me")
            assert store.get(job.id) is not None
        finally:
            client.close()
        assert (home / "catalog.sqlite.before-0002").exists() == (how == "first use")  # the copy kept


def test_a_runner_that_reclaims_its_own_job_after_an_outage_does_not_run_it_twice(catalog_file: Path) -> None:
    store = _store(catalog_file, lapse=0.3)
    release = threading.Event()
    calls: list[str] = []

    def handler(job: RunningJob) -> dict[str, Any]:
        calls.append(job.id)
        assert release.wait(20)
        job.committed({"done": True})
        return {"ok": True}

    # heartbeats rarer than the lapse, as when the database was unreachable for a while
    runner = JobRunner(_store(catalog_file, lapse=0.3), {"ingest": handler}, poll_seconds=0.1,
                       heartbeat_seconds=5, workers=2, server_id="A").start()
    try:
        job = runner.submit("ingest", "P", "kb1", {})
        deadline = time.monotonic() + 20
        while (row := store.get(job.id)) is None or row.attempts < 3:  # claimed, lapsed, claimed again by A
            assert time.monotonic() < deadline, row
            time.sleep(0.05)
        release.set()
        while (row := store.get(job.id)) is not None and row.state != "succeeded":
            assert time.monotonic() < deadline, row
            time.sleep(0.05)
    finally:
        release.set()
        runner.close()
    assert calls == [job.id] and row is not None and row.owner == "A" and row.report == {"ok": True}


def test_cancelling_jobs_queued_running_and_ended(catalog: str | Path) -> None:
    from kb_base.errors import JobFinishedError

    store = _store(catalog)
    queued = store.submit("ingest", "P", "kb1", {"n": 1})
    cancelled = store.cancel(queued.id, "key 'ops'")
    assert cancelled is not None and cancelled.state == "cancelled" and cancelled.finished_at is not None
    assert cancelled.error is not None and "key 'ops'" in cancelled.error["message"]
    assert store.claim("A") is None  # a cancelled job never starts

    sync = store.submit("sync", "P", "kb1", {"folder_id": "P.f"}, owner="A")
    running = store.cancel(sync.id)
    # still running (and still the knowledge bank's one active sync) until its server stops it
    assert running is not None and running.state == "running" and running.error["code"] == "cancelled"
    with pytest.raises(SyncBusyError):
        store.submit("sync", "P", "kb1", {"folder_id": "P.f"}, owner="B")
    assert store.heartbeat(sync.id, "A", {"files": 3}) == "cancel"
    assert store.cancel(sync.id) is not None  # asking again changes nothing
    assert store.finish(sync.id, "A", "cancelled", error=running.error)
    assert store.submit("sync", "P", "kb1", {"folder_id": "P.f"}, owner="B").state == "running"

    done = store.submit("ingest", "P", "kb1", {"n": 2}, owner="A")
    store.finish(done.id, "A", "succeeded", report={})
    with pytest.raises(JobFinishedError, match="already succeeded"):
        store.cancel(done.id)
    assert store.cancel("no-such-job") is None


def test_a_runner_stops_a_cancelled_job_at_its_next_commit_and_ends_it_cancelled(catalog_file: Path) -> None:
    store = _store(catalog_file)
    commits: list[int] = []
    started = threading.Event()

    def handler(job: RunningJob) -> dict[str, Any]:
        for n in range(1, 1000):
            started.set()
            time.sleep(0.05)  # a batch's work
            commits.append(n)
            job.committed({"commits": n})
        return {"commits": 999}

    runner = JobRunner(_store(catalog_file), {"ingest": handler}, poll_seconds=0.1, heartbeat_seconds=5,
                       server_id="A").start()
    try:
        job = runner.submit("ingest", "P", "kb1", {})
        assert started.wait(20)
        runner.cancel(job.id, "a test")  # this server runs it: told at once, not at its next heartbeat (5 s)
        deadline = time.monotonic() + 10
        while (row := store.get(job.id)) is not None and row.state == "running":
            assert time.monotonic() < deadline, row
            time.sleep(0.02)
        assert row is not None and row.state == "cancelled" and row.error["code"] == "cancelled"
        assert row.progress == {"commits": len(commits)} and len(commits) < 20  # stopped at the next commit
    finally:
        runner.close()


def test_a_job_cancelled_while_its_dead_server_ran_it_is_ended_by_the_next_server_not_run(catalog_file: Path) -> None:
    store = _store(catalog_file, lapse=0.3)
    orphan = store.submit("ingest", "P", "kb1", {}, progress={"rows_read": 5}, owner="dead-server")
    store.cancel(orphan.id)
    ran: list[str] = []
    runner = JobRunner(_store(catalog_file, lapse=0.3), {"ingest": lambda job: ran.append(job.id) or {}},
                       poll_seconds=0.1, heartbeat_seconds=0.1, server_id="B").start()
    try:
        deadline = time.monotonic() + 20
        while (row := store.get(orphan.id)) is not None and row.state == "running":
            assert time.monotonic() < deadline, row
            time.sleep(0.05)
        assert row is not None and row.state == "cancelled" and row.progress == {"rows_read": 5} and ran == []
    finally:
        runner.close()

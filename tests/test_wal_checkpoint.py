"""A FAISS writer's commit leaves the WAL checkpoint to a thread of its own (stores.sqlite.wal_checkpoint): the commit
is durable and visible when it returns, the database file catches up behind it, and a failed checkpoint
costs nothing but a warning."""

from __future__ import annotations

import logging
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from stores.base import Record, StoreContext
from stores.faiss import merge
from stores.faiss.store import FaissStore
from stores.sqlite import wal_checkpoint
from tests.conformance.store_suite import unit

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def no_background_merges(monkeypatch):
    """A background segment merge is a commit too and asks for its own checkpoint (CI once counted 14 of 13):
    these tests count the checkpoints of the writer's commits alone."""
    monkeypatch.setattr(merge, "ENABLED", False)


def recs(n: int, start: int = 0) -> list[Record]:
    return [Record(f"r{i}", f"text number {i} " * 40, {"n": i}, unit(i)) for i in range(start, start + n)]


def ids_in_file_alone(db_path: Path, tmp_path: Path) -> set[str]:
    """The record ids the database file holds by itself, without its WAL (a copy opened read-only)."""
    copy = tmp_path / "alone.sqlite"
    shutil.copyfile(db_path, copy)
    conn = sqlite3.connect(f"file:{copy}?mode=ro", uri=True)
    try:
        return {row[0] for row in conn.execute("SELECT id FROM records")}
    finally:
        conn.close()
        copy.unlink()


def test_the_commit_returns_before_the_copy_and_the_file_catches_up(tmp_path, monkeypatch):
    store = FaissStore(StoreContext("kb", tmp_path / "kb"))
    # a reader open throughout: the last connection to close checkpoints too, and with the checkpointer held
    # back below, the writer's would be the last
    reader = FaissStore(StoreContext("kb", tmp_path / "kb"))
    assert reader.count() == 0
    requested: list[int] = []
    real_request = wal_checkpoint.BackgroundCheckpoints.request
    monkeypatch.setattr(wal_checkpoint.BackgroundCheckpoints, "request", lambda self: requested.append(1))
    store.upsert(recs(30_000))  # ~20 MB: past SQLite's automatic checkpoint (1000 pages), were it on
    assert requested == [1]
    # committed: the reader sees it, from the WAL; the database file alone does not hold it yet
    assert reader.count() == 30_000
    assert ids_in_file_alone(store.db_path, tmp_path) == set()

    real_request(store.checkpoints)
    store.checkpoints.wait()
    assert store.checkpoints.completed == 1
    assert ids_in_file_alone(store.db_path, tmp_path) == {f"r{i}" for i in range(30_000)}
    reader.close()


def test_small_commits_are_left_in_the_wal_until_enough_pages_wait(tmp_path):
    store = FaissStore(StoreContext("kb", tmp_path / "kb"))
    reader = FaissStore(StoreContext("kb", tmp_path / "kb"))
    assert reader.count() == 0  # open throughout: no close is the last one, which would checkpoint
    for batch in range(5):
        store.upsert(recs(40, start=batch * 40))
    assert store.checkpoints.completed == 0 and ids_in_file_alone(store.db_path, tmp_path) == set()
    assert 0 < wal_checkpoint.pending_frames(store.db_path) < wal_checkpoint.CHECKPOINT_FRAMES
    store.upsert(recs(30_000, start=200))  # past the threshold: everything so far is copied
    store.checkpoints.wait()
    assert store.checkpoints.completed == 1 and wal_checkpoint.pending_frames(store.db_path) == 0
    assert len(ids_in_file_alone(store.db_path, tmp_path)) == 30_200
    reader.close()


def test_commits_during_a_checkpoint_are_checkpointed_too(tmp_path, monkeypatch):
    monkeypatch.setattr(wal_checkpoint, "CHECKPOINT_FRAMES", 1)  # every commit asks for one
    store = FaissStore(StoreContext("kb", tmp_path / "kb"))
    for batch in range(12):  # back to back: most land while the previous checkpoint still runs
        store.upsert(recs(50, start=batch * 50))
    store.delete(["r0", "r599"])
    store.checkpoints.wait()
    assert 1 <= store.checkpoints.completed <= 13
    assert ids_in_file_alone(store.db_path, tmp_path) == {f"r{i}" for i in range(1, 599)}


def test_a_failed_checkpoint_is_a_warning_and_the_next_commit_tries_again(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(wal_checkpoint, "CHECKPOINT_FRAMES", 1)
    store = FaissStore(StoreContext("kb", tmp_path / "kb"))
    real_connect = wal_checkpoint.connect_durable

    def refused(path):
        raise sqlite3.OperationalError("unable to open database file")

    monkeypatch.setattr(wal_checkpoint, "connect_durable", refused)
    with caplog.at_level(logging.WARNING, logger="stores.sqlite.wal_checkpoint"):
        store.upsert(recs(30))
    assert "could not open" in caplog.text and str(store.db_path) in caplog.text
    assert store.count() == 30

    monkeypatch.setattr(wal_checkpoint, "connect_durable", real_connect)
    store.upsert(recs(5, start=30))
    store.checkpoints.wait()
    assert ids_in_file_alone(store.db_path, tmp_path) == {f"r{i}" for i in range(35)}


def test_a_process_that_ends_right_after_its_commit_lets_the_checkpoint_finish(tmp_path):
    folder = tmp_path / "kb"
    script = textwrap.dedent(f"""
        from stores.base import StoreContext
        from stores.faiss.store import FaissStore
        from tests.test_wal_checkpoint import recs
        store = FaissStore(StoreContext("kb", {str(folder)!r}))
        reader = FaissStore(StoreContext("kb", {str(folder)!r}))
        assert reader.count() == 0  # a reader's connection stays open: the writer's close is not the last
        store.upsert(recs(30_000))
    """)
    subprocess.run([sys.executable, "-c", script], cwd=ROOT, check=True, timeout=120)
    db_path = folder / "store" / "store.sqlite"
    assert len(ids_in_file_alone(db_path, tmp_path)) == 30_000


def test_destroy_waits_for_the_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(wal_checkpoint, "CHECKPOINT_FRAMES", 1)
    store = FaissStore(StoreContext("kb", tmp_path / "kb"))
    store.upsert(recs(300))
    store.destroy()
    assert not (tmp_path / "kb" / "store").exists()
    assert store.checkpoints.completed == 1


def test_no_thread_for_the_checkpoint_leaves_the_commit_landed(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(wal_checkpoint, "CHECKPOINT_FRAMES", 1)

    def no_thread(self):
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(wal_checkpoint.BackgroundCheckpoints, "request", no_thread)
    store = FaissStore(StoreContext("kb", tmp_path / "kb"))
    with caplog.at_level(logging.WARNING, logger="stores.sqlite.wal_checkpoint"):
        store.upsert(recs(20))  # no StoreError: the commit had landed
    assert "no background checkpoint" in caplog.text and "can't start new thread" in caplog.text
    monkeypatch.undo()
    assert FaissStore(StoreContext("kb", tmp_path / "kb")).count() == 20


def test_a_thread_that_would_not_start_leaves_the_next_request_free_to_run(tmp_path, monkeypatch):
    store = FaissStore(StoreContext("kb", tmp_path / "kb"))
    store.upsert(recs(50))
    def refused(self):
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(wal_checkpoint.threading.Thread, "start", refused)
    with pytest.raises(RuntimeError):
        store.checkpoints.request()
    monkeypatch.undo()
    store.checkpoints.wait()  # no thread recorded: returns at once
    store.checkpoints.request()  # not mistaken for one still running
    store.checkpoints.wait()
    assert store.checkpoints.completed == 1

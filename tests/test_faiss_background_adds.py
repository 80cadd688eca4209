"""A FAISS writer adds each batch's vectors to its index on a helper thread: reads, removals and the commit wait
for it, and a failed add refuses the commit and leaves nothing behind."""

from __future__ import annotations

import threading

import faiss
import numpy as np
import pytest

from kb_base.errors import StoreError
from stores.base import Record, StoreContext
from stores.faiss.store import FaissStore
from stores.faiss.transaction import SMALL_WRITE
from tests.conformance.store_suite import unit


def recs(names: list[str], offset: int = 0) -> list[Record]:
    return [Record(name, f"text of {name}", {"n": i}, unit(i + offset)) for i, name in enumerate(names)]


def adders() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "kb-vector-add"]


@pytest.mark.parametrize("index_type", ["FLAT", "HNSW"])
def test_a_writer_reads_its_own_vectors_removes_and_replaces_them(tmp_path, index_type):
    store = FaissStore(StoreContext("kb", tmp_path, settings={"index": {"type": index_type}}))
    with store.begin() as tx:
        tx.upsert(recs(["a", "b", "c"]))
        tx.upsert(recs(["d", "e"], offset=3))
        assert [h.record.id for h in tx.similarity(unit(3), 1)] == ["d"]  # waits for the add of the second batch
        tx.upsert(recs(["x"], offset=4))
        assert tx.delete(["b", "x"]) == 2
        tx.upsert([Record("a", "again", {}, unit(4))])  # a replacement removes the old vector first
    assert not adders()
    assert store.count() == 4
    assert [h.record.id for h in store.similarity(unit(4), 2)] == ["a", "e"]


def test_a_failed_add_refuses_the_commit_and_writes_nothing(tmp_path, monkeypatch):
    store = FaissStore(StoreContext("kb", tmp_path))
    store.upsert(recs(["kept"]))

    def broken(self, vectors, ids):
        raise MemoryError("no memory for the vectors")

    big = [f"new{i}" for i in range(SMALL_WRITE)]  # a batch this big adds its vectors on a helper thread
    monkeypatch.setattr(faiss.IndexIDMap2, "add_with_ids", broken)
    tx = store.begin()
    tx.upsert(recs(big, offset=1))  # returns: the add fails on its thread
    with pytest.raises(MemoryError):
        tx.commit()
    tx.rollback()
    tx = store.begin()
    with pytest.raises(MemoryError):  # a few vectors are added on the writer's thread: the upsert raises
        tx.upsert(recs(["few"], offset=1))
    with pytest.raises(StoreError, match="earlier write"):  # and the transaction cannot commit
        tx.commit()
    tx.rollback()
    monkeypatch.undo()
    assert FaissStore(StoreContext("kb", tmp_path)).count() == 1

    monkeypatch.setattr(faiss.IndexIDMap2, "add_with_ids", broken)
    with pytest.raises(StoreError):  # a writer that saw the failure on a read cannot commit later either
        with store.begin() as tx:
            tx.upsert(recs([f"other{i}" for i in range(SMALL_WRITE)], offset=2))
            with pytest.raises(MemoryError):
                tx.similarity(unit(2), 1)
            tx.commit()
    monkeypatch.undo()
    assert not adders()
    reopened = FaissStore(StoreContext("kb", tmp_path))
    assert reopened.count() == 1 and [h.record.id for h in reopened.similarity(unit(0), 1)] == ["kept"]


def test_a_rollback_and_a_clear_wait_for_the_adds(tmp_path):
    store = FaissStore(StoreContext("kb", tmp_path))
    tx = store.begin()
    tx.upsert([Record(f"r{i}", "t", {}, v) for i, v in enumerate(np.eye(8, dtype=np.float32))])
    tx.clear()
    tx.upsert(recs(["after"]))
    tx.rollback()
    assert not adders() and store.count() == 0
    with store.begin() as tx:
        tx.upsert(recs(["gone"]))
        tx.clear()
        tx.upsert(recs(["only"], offset=1))
    assert [h.record.id for h in store.similarity(unit(1), 5)] == ["only"]

"""Azure AI Search with its commit point in a shared database (issue 28): the driver's glue to the lease
(its 'dirty' note, cleanup under a new lease, a fenced writer that must not clean). Against the emulator
(tests/support/azure_search_emulator.py); the database is SQLite here, PostgreSQL in test_fenced_writers*.py."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kb_base.errors import WriterFencedError
from stores.azure_search.store import AzureSearchStore
from stores.base import Record, StoreContext
from stores.commit_point.database import DatabaseLedger
from tests.support.azure_search_emulator import AzureSearchEmulator
from tests.support.postgres_server import kb_schema


def open_store(emulator: AzureSearchEmulator, url: str, kb_id: str, folder: Path, lease: float) -> AzureSearchStore:
    connection: dict[str, Any] = {"endpoint": emulator.url, "api_key": emulator.api_key, "index_prefix": "f-",
                                  "api_version": "2024-07-01", "retry_backoff_factor": 0.05}
    store = AzureSearchStore(StoreContext(kb_id, folder, connection=connection, database_url=url))
    assert isinstance(store.ledger, DatabaseLedger)
    store.ledger.lease_seconds = lease
    return store


def records(tag: str, n: int = 3) -> list[Record]:
    rng = np.random.default_rng(len(tag))
    return [Record(f"{tag}{i}", f"{tag} {i}", {"tag": tag}, rng.normal(size=8).astype(np.float32)) for i in range(n)]


def visible(store: AzureSearchStore) -> set[str]:
    return {r.id for batch in store.iter_records() for r in batch}


def test_azure_on_the_database_ledger(emulator: AzureSearchEmulator, tmp_path: Path) -> None:
    url, kb = kb_schema(f"sqlite:///{tmp_path / 'shared.sqlite'}"), f"az-{uuid.uuid4().hex[:8]}"
    one = open_store(emulator, url, kb, tmp_path / "server-1", 0.6)
    two = open_store(emulator, url, kb, tmp_path / "server-2", 5.0)  # another server: its own folder
    with one.begin() as tx:
        tx.upsert(records("a"))
    assert visible(two) == {"a0", "a1", "a2"} and two.ledger.committed()[0] == 1
    tx = one.begin()
    tx.upsert(records("gone"))
    tx.rollback()
    assert visible(two) == {"a0", "a1", "a2"} and one.ledger.meta("dirty") == "0"

    stale = one.begin()  # a writer that will stop renewing (a paused process) with writes in the store
    stale.delete(["a0"])
    stale.upsert(records("stale"))
    stale.write.lease._stop.set()
    stale.write.lease._thread.join()
    assert one.ledger.meta("dirty") == "1"
    time.sleep(0.8)
    with two.begin(10.0) as successor:  # takes the lapsed lease: the dirty note makes it clean first
        assert successor.count() == 3 and successor.generation == 2
        successor.upsert(records("b"))
    assert visible(one) == {"a0", "a1", "a2", "b0", "b1", "b2"}
    with pytest.raises(WriterFencedError):
        stale.commit()
    # the fenced writer's rollback cleaned nothing: the successor's generation stands whole
    assert visible(two) == {"a0", "a1", "a2", "b0", "b1", "b2"} and two.ledger.committed()[0] == 2
    with one.begin(10.0) as tx:
        tx.delete(["b1"])
    assert visible(two) == {"a0", "a1", "a2", "b0", "b2"}
    one.destroy()
    assert DatabaseLedger(url, kb).committed() == (0, None)

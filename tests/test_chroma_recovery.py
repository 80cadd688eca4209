"""Issue 35: a Chroma knowledge bank whose HNSW files a kill tore is detected on open and rebuilt from kb's copy.

The damage is made the way a kill mid-persist leaves it (a file cut short or emptied), on a knowledge bank of
1,500 records, past Chroma's 1,000-record sync threshold so that the HNSW files exist. After it, a fresh open
must answer a similarity search exactly as an exact search over the committed records does, keep keyword
search and the count, and let the next writer work; while another process holds the writer lock the read fails
with the retryable StoreRecoveringError, never a wrong answer.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from kb_base.errors import StoreError, StoreRecoveringError
from stores.base import acquire_writer_lock
from stores.chroma.store import ChromaStore
from stores.faiss.store import FaissStore
from tests.support.kill_worker import BATCH, batch_records, open_store

BATCHES = 5


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("chroma-recovery") / "kb"
    store = open_store(folder)
    for batch in range(BATCHES):
        with store.begin() as tx:
            tx.upsert(batch_records(batch))
    store.close()
    return folder


def _copy(pristine: Path, tmp_path: Path) -> tuple[Path, Path]:
    folder = tmp_path / "kb"
    shutil.copytree(pristine, folder)
    segments = [p for p in (folder / "chroma-store" / "chroma").iterdir() if p.is_dir()]
    assert len(segments) == 1 and (segments[0] / "index_metadata.pickle").exists()  # past the sync threshold
    return folder, segments[0]


def _exact(store: ChromaStore, query: np.ndarray, k: int) -> list[str]:
    records = [r for b in range(BATCHES) for r in batch_records(b)]
    matrix = np.stack([r.vector / np.linalg.norm(r.vector) for r in records])
    return [records[i].id for i in np.argsort(-(matrix @ (query / np.linalg.norm(query))))[:k]]


def _assert_sound(store: ChromaStore) -> None:
    assert store.count() == BATCHES * BATCH
    rng = np.random.default_rng(7)
    for _ in range(5):
        query = rng.normal(size=16).astype(np.float32)
        assert [h.record.id for h in store.similarity(query, 5)] == _exact(store, query, 5)
    assert {h.record.id for h in store.keyword("batch3", BATCH + 5)} == {f"b3-{i}" for i in range(BATCH)}


@pytest.mark.parametrize(("name", "keep"), [("index_metadata.pickle", 0.5), ("data_level0.bin", 0.0),
                                            ("data_level0.bin", 0.5), ("link_lists.bin", 0.5), ("header.bin", 0.0)])
def test_a_torn_hnsw_file_is_rebuilt_on_open(pristine: Path, tmp_path: Path, name: str, keep: float) -> None:
    folder, segment = _copy(pristine, tmp_path)
    path = segment / name
    with open(path, "r+b") as handle:
        handle.truncate(int(path.stat().st_size * keep))
    store = open_store(folder)
    assert len(store.recovered) == 1 and "rebuilt" in store.recovered[0]
    _assert_sound(store)
    report = store.check(full=True)
    assert report.ok, report.problems
    assert report.checked["found_by_own_vector"] == BATCHES * BATCH
    with store.begin() as tx:  # the next writer works; two commits later the damaged collection is gone
        tx.upsert(batch_records(BATCHES))
    with store.begin() as tx:
        tx.delete([f"b{BATCHES}-{i}" for i in range(BATCH)])
    assert len(store.chroma.client.list_collections()) == 1
    store.close()
    again = open_store(folder)
    assert again.recovered == []
    _assert_sound(again)


def test_a_damage_found_by_a_read_is_rebuilt_and_the_read_answers(pristine: Path, tmp_path: Path) -> None:
    folder, segment = _copy(pristine, tmp_path)
    store = open_store(folder)  # sound on open
    store.similarity(np.ones(16, np.float32), 3)
    (segment / "index_metadata.pickle").write_bytes(b"\x80\x04")  # torn while this process runs
    store.chroma.reopen(-1)  # as after another process's commit
    _assert_sound(store)


def test_while_another_process_holds_the_lock_a_read_fails_retryably(pristine: Path, tmp_path: Path) -> None:
    folder, segment = _copy(pristine, tmp_path)
    (segment / "index_metadata.pickle").write_bytes(b"")
    lock = acquire_writer_lock(folder / "chroma-store" / "writer.lock", 5, "test")
    try:
        ChromaStore.recovery_wait = 0.5
        with pytest.raises(StoreRecoveringError, match="being rebuilt; retry") as caught:
            open_store(folder)
        assert caught.value.http_status == 503 and caught.value.code == "store_recovering"
    finally:
        ChromaStore.recovery_wait = 30.0
        lock.close()
    _assert_sound(open_store(folder))


def test_records_without_a_copy_are_refused_clearly_then_copied_by_repair(pristine: Path, tmp_path: Path) -> None:
    folder, segment = _copy(pristine, tmp_path)
    store = open_store(folder)
    store._conn().execute("UPDATE records SET text = NULL, vector = NULL WHERE rowid % 2 = 0")  # written by kb < 35
    report = store.check()
    assert report.ok and report.checked["without_kb_copy"] == BATCHES * BATCH // 2
    repaired = store.repair()
    assert repaired.ok and repaired.checked["without_kb_copy"] == 0
    assert any("copied 750 records" in line for line in repaired.repaired)
    store.close()
    folder2, segment2 = _copy(pristine, tmp_path / "second")
    store = open_store(folder2)
    store._conn().execute("UPDATE records SET text = NULL, vector = NULL")
    store.close()
    (segment2 / "index_metadata.pickle").write_bytes(b"")
    with pytest.raises(StoreError, match="written before kb kept its own copy"):
        open_store(folder2)


def test_doctor_on_faiss_finds_a_sound_store(tmp_path: Path) -> None:
    from stores.base import StoreContext

    store = FaissStore(StoreContext("doc", tmp_path / "kb"))
    with store.begin() as tx:
        tx.upsert(batch_records(0))
    report = store.check(full=True)
    assert report.ok and report.checked == {"readable": BATCH, "found_by_own_vector": BATCH, "vector_probes": BATCH}
    assert store.repair().repaired == []


def test_a_chroma_server_that_cannot_load_a_collection_is_reported_and_repaired(tmp_path: Path) -> None:
    from stores.base import StoreContext
    from tests.support.chroma_server import ChromaServer

    server = ChromaServer(tmp_path / "chroma-data").start()
    try:
        connection = {"url": server.url, "timeout": 30}
        store = ChromaStore(StoreContext("served", tmp_path / "kb", connection=connection))
        for batch in range(BATCHES):
            with store.begin() as tx:
                tx.upsert(batch_records(batch))
        store.close()
        server.stop()
        segments = [p for p in (tmp_path / "chroma-data").iterdir() if (p / "index_metadata.pickle").exists()]
        assert len(segments) == 1
        (segments[0] / "index_metadata.pickle").write_bytes(b"\x80\x04")  # as a kill of the server mid-persist
        server.start()
        store = ChromaStore(StoreContext("served", tmp_path / "kb", connection=connection))
        with pytest.raises(StoreError, match="cannot load the vector index.*kb repair"):
            store.similarity(np.ones(16, np.float32), 3)
        assert not store.check().ok
        report = store.repair()
        assert report.ok, report.problems
        assert any("rebuilt the Chroma collection" in line for line in report.repaired)
        _assert_sound(store)
    finally:
        server.stop()

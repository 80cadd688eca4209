"""The FAISS driver: the shared conformance suite (FLAT and HNSW) plus FAISS-specific guarantees."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from kb_base.errors import InvalidInputError
from stores.base import Record, StoreContext
from stores.faiss.store import FaissStore
from tests.conformance.store_suite import StoreConformanceSuite, StoreFactory, records, unit

ROOT = Path(__file__).resolve().parent.parent


class TestFaissFlatConformance(StoreConformanceSuite):
    @pytest.fixture
    def store_factory(self, tmp_path: Path) -> StoreFactory:
        return lambda: FaissStore(StoreContext("kb-flat", tmp_path))


class TestFaissHnswConformance(StoreConformanceSuite):
    @pytest.fixture
    def store_factory(self, tmp_path: Path) -> StoreFactory:
        return lambda: FaissStore(StoreContext("kb-hnsw", tmp_path, settings={"index": {"type": "HNSW"}}))


def test_files_on_disk_are_faiss_and_sqlite_never_pickle(tmp_path: Path) -> None:
    store = FaissStore(StoreContext("kb", tmp_path))
    store.upsert(records(10))
    store.merger.wait()  # the merger's thread opens and closes a connection of its own (and with it the -shm file)
    store.checkpoints.wait()  # its connection's close removes the WAL
    files = [p for p in (tmp_path / "store").rglob("*") if p.is_file()]
    assert {p.suffix for p in files} >= {".faiss", ".sqlite"}
    for path in files:
        head = path.read_bytes()[:2]
        assert not (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")), path


def test_retired_segments_are_cleaned_up(tmp_path: Path) -> None:
    store = FaissStore(StoreContext("kb", tmp_path))
    for version in range(6):  # each version replaces the last whole: its segment retires the one before
        with store.begin() as tx:
            tx.clear()
            tx.upsert(records(5, tag=f"v{version}"))
    names = sorted(p.name for p in (tmp_path / "store" / "segments").glob("*.faiss"))
    # the live segment, the one it retired (kept a generation for readers that raced the commit) and at most
    # one retired before that (removed by the next writer)
    assert len(names) <= 3, names
    assert store.count() == 5 and store.get(["doc-1"])[0].text.endswith("v5")


def test_orphan_segment_of_a_crashed_commit_is_ignored_and_removed(tmp_path: Path) -> None:
    store = FaissStore(StoreContext("kb", tmp_path))
    store.upsert(records(5))
    numbers = sorted(int(p.stem) for p in (tmp_path / "store" / "segments").glob("*.faiss"))
    orphan = tmp_path / "store" / "segments" / f"{numbers[-1] + 1}.faiss"
    orphan.write_bytes(b"half-written garbage from a killed commit")
    reopened = FaissStore(StoreContext("kb", tmp_path))
    assert reopened.count() == 5 and reopened.similarity(unit(1), 1)[0].record.id == "doc-1"
    with reopened.begin() as tx:
        assert not orphan.exists()  # the next writer removes it before it writes a segment of that number
        tx.upsert(records(1, start=9))
    assert reopened.count() == 6 and reopened.similarity(unit(9), 1)[0].record.id == "doc-9"


def test_hnsw_recall_against_exact(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(5000, 64)).astype(np.float32)
    data = [Record(f"r{i}", "", {}, v) for i, v in enumerate(vectors)]
    flat = FaissStore(StoreContext("flat", tmp_path / "flat"))
    hnsw = FaissStore(StoreContext("hnsw", tmp_path / "hnsw", settings={"index": {"type": "HNSW"}}))
    flat.upsert(data)
    hnsw.upsert(data)
    recalls = []
    for query in rng.normal(size=(50, 64)).astype(np.float32):
        exact = {h.record.id for h in flat.similarity(query, 10)}
        approx = {h.record.id for h in hnsw.similarity(query, 10)}
        recalls.append(len(exact & approx) / 10)
    assert float(np.mean(recalls)) >= 0.9


@pytest.mark.parametrize("settings", [{"index": {"type": "LSH"}}, {"index": {"type": "HNSW", "m": 1}},
                                      {"index": {"type": "HNSW", "ef_search": "many"}}])
def test_invalid_index_settings(tmp_path: Path, settings: dict) -> None:
    with pytest.raises(InvalidInputError):
        FaissStore(StoreContext("kb", tmp_path, settings=settings))


def test_a_reader_in_another_process_sees_commits(tmp_path: Path) -> None:
    store = FaissStore(StoreContext("kb", tmp_path))
    store.upsert(records(3))
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from pathlib import Path
        from stores.base import StoreContext
        from stores.faiss.store import FaissStore
        store = FaissStore(StoreContext("kb", Path({str(tmp_path)!r})))
        print(store.count(), ",".join(sorted(store.ids_where(None))))
    """)
    first = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert first.stdout.split() == ["3", "doc-0,doc-1,doc-2"]
    store.delete(["doc-1"])
    second = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert second.stdout.split() == ["2", "doc-0,doc-2"]


def test_a_new_stores_writer_replaces_what_it_wrote_itself(tmp_path: Path) -> None:
    """A writer that began on an empty store only looks up ids it wrote itself: they must still be replaced,
    also after a clear() in the same transaction."""
    store = FaissStore(StoreContext("kb", tmp_path))
    with store.begin() as tx:
        tx.upsert(records(3))
        tx.upsert([Record("doc-1", "second version", {"v": 2}, unit(1))])
        tx.clear()
        tx.upsert(records(2, tag="after-clear"))
        tx.upsert([Record("doc-0", "third version", {"v": 3}, unit(0))])
    assert store.count() == 2
    assert {r.id: r.text for r in store.get(["doc-0", "doc-1"])} == {"doc-0": "third version",
                                                                    "doc-1": "text 1 after-clear"}
    with store.begin() as tx:  # not empty any more: the lookup goes to SQLite
        tx.upsert([Record("doc-1", "fourth", {}, unit(1))])
    assert store.count() == 2 and store.get(["doc-1"])[0].text == "fourth"


def test_encoded_metadata_round_trips_exactly(tmp_path: Path) -> None:
    import kb

    client = kb.api_client(home=tmp_path / "home")
    from langchain_core.embeddings import DeterministicFakeEmbedding

    from kb.custom_models import LangChainEmbeddingModel

    client.register_embedding_model(LangChainEmbeddingModel("fake6", DeterministicFakeEmbedding(size=6)))
    core = client.get_default_project().create_knowledge_bank("m", embedding_llm_id="custom:fake6") \
        .as_core_knowledge_bank()
    metadata = [{"f": 1e16, "g": 0.1, "n": None, "b": True, "i": -7, "s": "é\\u0000\"x"},
                {"big": 2**63 - 1}, {"neg": -(2**63)}, {}]
    core.write_texts(["a", "b", "c", "d"], metadata, ["a", "b", "c", "d"])
    got = {d.id: d.metadata for d in core.get_documents(["a", "b", "c", "d"])}
    assert got == dict(zip("abcd", metadata, strict=True))
    assert type(got["b"]["big"]) is int and type(got["a"]["b"]) is bool
    # beyond 64 bits no store holds an integer (SQLite, Elasticsearch, Chroma): refused, not silently a float
    with pytest.raises(kb.InvalidInputError, match="64 bits"):
        core.write_texts(["e"], [{"big": 123456789012345678901234567890}], ["e"])
    client.close()


def test_ef_search_of_a_filled_hnsw_knowledge_bank_can_change(tmp_path: Path) -> None:
    from langchain_core.embeddings import DeterministicFakeEmbedding

    import kb
    from kb.custom_models import LangChainEmbeddingModel

    client = kb.api_client(home=tmp_path / "home")
    client.register_embedding_model(LangChainEmbeddingModel("fake6", DeterministicFakeEmbedding(size=6)))
    handle = client.get_default_project().create_knowledge_bank(
        "h", embedding_llm_id="custom:fake6", settings={"store": {"index": {"type": "HNSW", "ef_search": 16}}})
    handle.as_core_knowledge_bank().write_texts(["a", "b"], [{}, {}], ["a", "b"])
    settings = handle.get_settings()
    settings.set_store_settings({"index": {"type": "HNSW", "ef_search": 256}})
    settings.save()  # a search-time parameter: allowed on a filled knowledge bank
    core = handle.as_core_knowledge_bank()
    driver = core.driver
    core.search(vector=[1, 0, 0, 0, 0, 0], k=1)
    assert faiss_ef_search(driver) == 256
    settings.set_store_settings({"index": {"type": "HNSW", "ef_search": 256, "m": 8}})
    with pytest.raises(InvalidInputError, match="only ef_search"):
        settings.save()
    client.close()


def faiss_ef_search(driver: FaissStore) -> int:
    import faiss

    segments = driver.loader.current
    assert segments is not None and segments.segments
    return int(faiss.downcast_index(segments.segments[0].index.index).hnsw.efSearch)


def test_committed_index_is_the_object_searches_use(tmp_path: Path) -> None:
    store = FaissStore(StoreContext("kb", tmp_path))
    assert store.committed_index() is None  # nothing committed yet
    store.upsert(records(8))
    index = store.committed_index()
    assert index is not None and index.ntotal == 8
    assert store.committed_index() is index  # loaded once per generation, not re-read
    scores, rowids = index.search(unit(3).reshape(1, -1), 1)
    hit = store.similarity(unit(3), 1)[0]
    assert store.get([hit.record.id])[0].id == "doc-3" and abs(float(scores[0][0]) - hit.score) < 1e-6
    assert rowids[0][0] > 0  # ids are rowids
    store.upsert(records(1, start=20))  # a second segment: merged into one for the caller
    assert store.committed_index() is not index and store.committed_index().ntotal == 9


def test_dimension_lands_with_the_commit_and_clear_empties_it(tmp_path: Path) -> None:
    store = FaissStore(StoreContext("kb", tmp_path))
    writer = store.begin()
    writer.upsert(records(3))
    assert writer.dimension == len(unit(0))
    assert store.dimension is None  # a reader: nothing committed yet
    writer.rollback()
    assert FaissStore(StoreContext("kb", tmp_path)).dimension is None
    store.upsert(records(3))
    assert FaissStore(StoreContext("kb", tmp_path)).dimension == len(unit(0))
    writer = store.begin()
    writer.clear()
    writer.commit()
    reopened = FaissStore(StoreContext("kb", tmp_path))
    assert reopened.dimension is None and reopened.count() == 0
    wider = np.ones(2 * len(unit(0)), dtype=np.float32)
    reopened.upsert([Record("w", "wide", {}, wider)])  # a cleared store takes any dimension
    assert FaissStore(StoreContext("kb", tmp_path)).dimension == wider.size

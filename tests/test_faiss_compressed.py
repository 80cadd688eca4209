"""Issue 31: the compressed FAISS index types (HNSW_SQ8, IVF_PQ) with exact re-ranking from a vector file.

The conformance suite runs on both with every segment trained (``exact_below: 0``), so filters, keyword,
hybrid, deletes and persistence are checked on the compressed paths. Recall is measured on vectors with the
structure of real embeddings: clustered around SciFact's MiniLM document vectors (read in place) with noise.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

import kb
from kb_base.errors import InvalidInputError
from kb_base.filters import parse_filter
from stores.base import Record, StoreContext
from stores.faiss.store import FaissStore
from tests.conformance.store_suite import StoreConformanceSuite, StoreFactory
from tests.support.kill_loop import MERGE_POINTS, kill_loop
from tests.support.server import ADMIN_KEY, KBServer

SCIFACT = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "scifact" / "corpus-all-MiniLM-L6-v2.npy"
if not SCIFACT.exists():
    SCIFACT = Path("/work/shared/datasets/scifact/corpus-all-MiniLM-L6-v2.npy")
TYPES = ["HNSW_SQ8", "IVF_PQ"]


def _store(folder: Path, kind: str, **extra: int) -> FaissStore:
    return FaissStore(StoreContext("kb", folder, settings={"index": {"type": kind, **extra}}))


class TestFaissHnswSq8Conformance(StoreConformanceSuite):
    @pytest.fixture
    def store_factory(self, tmp_path: Path) -> StoreFactory:
        return lambda: _store(tmp_path, "HNSW_SQ8", exact_below=0)


class TestFaissIvfPqConformance(StoreConformanceSuite):
    @pytest.fixture
    def store_factory(self, tmp_path: Path) -> StoreFactory:
        return lambda: _store(tmp_path, "IVF_PQ", exact_below=0)


def structured(count: int, seed: int, centres: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``count`` unit vectors clustered around real MiniLM document vectors (noise of norm ~0.6 before
    normalising: cosine ~0.85 to the centre), and the centres used."""
    if not SCIFACT.exists():
        pytest.skip(f"the SciFact vectors are not on this machine ({SCIFACT})")
    rng = np.random.default_rng(seed)
    real = np.load(SCIFACT, mmap_mode="r")
    if centres is None:
        centres = np.asarray(real[np.sort(rng.choice(real.shape[0], size=min(2000, real.shape[0]),
                                                     replace=False))])
    picked = centres[rng.integers(0, centres.shape[0], size=count)]
    noisy = picked + rng.normal(scale=0.6 / np.sqrt(real.shape[1]), size=picked.shape)
    return (noisy / np.linalg.norm(noisy, axis=1, keepdims=True)).astype(np.float32), centres


def _records(vectors: np.ndarray, start: int = 0) -> list[Record]:
    return [Record(f"r{start + i}", f"text {start + i}", {"part": (start + i) % 5}, v)
            for i, v in enumerate(vectors)]


def _recall_and_scores(store: FaissStore, data: np.ndarray, queries: np.ndarray, alive: np.ndarray,
                       flt_part: int | None = None) -> float:
    """Mean recall@10 against exact search over the ``alive`` rows; asserts every returned score is the exact
    float32 cosine of its vector (re-ranked from the vector file, not a code's approximation)."""
    recalls = []
    ids = np.arange(data.shape[0])
    for query in queries:
        cosines = data @ query
        allowed = alive & ((ids % 5) == flt_part) if flt_part is not None else alive
        exact = set(np.flatnonzero(allowed)[np.argsort(-cosines[allowed], kind="stable")[:10]].tolist())
        hits = store.similarity(query, 10, parse_filter({"part": flt_part}) if flt_part is not None else None)
        assert len(hits) == 10
        for hit in hits:
            row = int(hit.record.id[1:])
            assert allowed[row], hit.record.id  # deleted or filtered out rows never come back
            assert hit.score == pytest.approx(float(cosines[row]), abs=2e-6)
        recalls.append(len(exact & {int(h.record.id[1:]) for h in hits}) / 10)
    return float(np.mean(recalls))


@pytest.mark.parametrize("kind", TYPES)
def test_recall_exact_scores_deletes_and_reopen_on_structured_vectors(tmp_path: Path, kind: str) -> None:
    data, centres = structured(12_000, seed=1)
    queries, _ = structured(40, seed=2, centres=centres)  # held out: drawn afresh around the same centres
    store = _store(tmp_path, kind, exact_below=2_000)
    store.upsert(_records(data))
    folder = tmp_path / "store" / "segments"
    assert sorted(p.name for p in folder.iterdir()) == ["1.faiss", "1.vectors.npy"]
    alive = np.ones(data.shape[0], dtype=bool)
    assert _recall_and_scores(store, data, queries, alive) >= 0.95
    assert _recall_and_scores(store, data, queries[:10], alive, flt_part=3) >= 0.95  # filtered: exact path

    dead = np.random.default_rng(3).choice(data.shape[0], size=3_000, replace=False)
    store.delete([f"r{i}" for i in dead])
    alive[dead] = False
    # the nearest rows of some queries deleted too: the answers must come from what is left
    for query in queries[:5]:
        nearest = int(np.argmax(np.where(alive, data @ query, -2)))
        store.delete([f"r{nearest}"])
        alive[nearest] = False
    assert _recall_and_scores(store, data, queries, alive) >= 0.95
    store.close()

    reopened = _store(tmp_path, kind, exact_below=2_000)
    assert reopened.count() == int(alive.sum())
    assert _recall_and_scores(reopened, data, queries, alive) >= 0.95
    rows = np.flatnonzero(alive)[:50]
    for record in reopened.get([f"r{i}" for i in rows], with_vectors=True):
        # mmr's vectors: exact, from the vector file (the codes would give SQ8/PQ approximations)
        np.testing.assert_allclose(record.vector, data[int(record.id[1:])], atol=1e-6)


@pytest.mark.parametrize("kind", TYPES)
def test_merged_segments_are_retrained_and_stay_exactly_scored(tmp_path: Path, kind: str) -> None:
    data, centres = structured(8_000, seed=4)
    queries, _ = structured(20, seed=5, centres=centres)
    store = _store(tmp_path, kind, exact_below=1_500)
    for start in range(0, 8_000, 1_000):  # eight commits below exact_below: flat segments
        store.upsert(_records(data[start : start + 1_000], start))
    store.merger.wait()
    store.delete([f"r{i}" for i in range(0, 8_000, 7)])
    alive = np.ones(8_000, dtype=bool)
    alive[::7] = False
    store.merger.merge_now(force=True)
    folder = tmp_path / "store" / "segments"
    with store._snapshot() as view:
        segments = view.segments.segments
    assert len(segments) == 1 and segments[0].layout.vectors is not None  # one trained segment now
    assert (folder / f"{segments[0].number}.vectors.npy").exists()
    assert segments[0].live == int(alive.sum())
    assert _recall_and_scores(store, data, queries, alive) >= 0.95
    reopened = _store(tmp_path, kind, exact_below=1_500)
    assert _recall_and_scores(reopened, data, queries, alive) >= 0.95


def test_small_segments_stay_exact_flat_indexes(tmp_path: Path) -> None:
    data, centres = structured(500, seed=6)
    store = _store(tmp_path, "IVF_PQ")  # default exact_below (10,000): a small knowledge bank is exact
    store.upsert(_records(data))
    assert sorted(p.name for p in (tmp_path / "store" / "segments").iterdir()) == ["1.faiss"]
    queries, _ = structured(10, seed=7, centres=centres)
    for query in queries:
        exact = np.argsort(-(data @ query), kind="stable")[:10]
        assert [int(h.record.id[1:]) for h in store.similarity(query, 10)] == exact.tolist()


@pytest.mark.parametrize("index", [
    {"type": "IVF_PQ", "nprobe": 0}, {"type": "IVF_PQ", "rerank": 101}, {"type": "HNSW_SQ8", "m": 1},
    {"type": "HNSW_SQ8", "rerank": "deep"}, {"type": "HNSW_SQ8", "exact_below": -1},
    {"type": "IVF_PQ", "train_sample": 10}, {"type": "IVF_PQ", "nlits": 64}, {"type": "HNSW_SQ8", "ef_search": True}])
def test_invalid_compressed_settings_are_refused_by_name(tmp_path: Path, index: dict) -> None:
    key = next(k for k in index if k != "type")
    with pytest.raises(InvalidInputError, match=key):
        FaissStore(StoreContext("kb", tmp_path, settings={"index": index}))


def test_pq_m_that_does_not_divide_the_dimension_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    store = _store(tmp_path, "IVF_PQ", pq_m=7)
    with pytest.raises(InvalidInputError, match="pq_m=7 must divide the vector dimension 384"):
        store.upsert(_records(np.ones((3, 384), dtype=np.float32)))
    assert store.count() == 0 and not list((tmp_path / "store" / "segments").iterdir())


def test_search_settings_change_without_a_rebuild_but_the_shape_does_not(tmp_path: Path) -> None:
    old = {"index": {"type": "IVF_PQ"}}
    FaissStore.check_settings_change(old, {"index": {"type": "IVF_PQ", "nprobe": 96, "rerank": 20}})
    with pytest.raises(InvalidInputError, match="cannot change"):
        FaissStore.check_settings_change(old, {"index": {"type": "IVF_PQ", "pq_m": 24}})


def test_writers_killed_anywhere_leave_whole_commits_and_exact_searches_on_hnsw_sq8(tmp_path: Path) -> None:
    """SIGKILL at random moments and at every commit and merge fault point of a compressed store (each batch's
    segment trained: 300 vectors over ``exact_below`` 100), then a fresh process checks whole batches and exact
    rankings."""
    summary = kill_loop(tmp_path / "kb", 12, seed=31, kind="faiss-hnsw_sq8", kb_id=f"sq{uuid.uuid4().hex[:8]}",
                        delay=(0.0, 1.5), point_every=2, report=True)
    print(summary)
    assert summary["mismatches"] == []
    assert summary["at_fault_points"] == 6 and summary["batches_committed"] > 0


def test_writers_killed_in_compressed_merges_leave_whole_commits_and_exact_searches(tmp_path: Path) -> None:
    """Every merge fault point of a compressed store (its retrained output and vector file written, just before
    and just after its commit)."""
    summary = kill_loop(tmp_path / "kb", len(MERGE_POINTS), seed=131, kind="faiss-hnsw_sq8",
                        kb_id=f"sqm{uuid.uuid4().hex[:8]}", point_every=1, points=MERGE_POINTS, report=True)
    print(summary)
    assert summary["mismatches"] == []
    assert summary["at_fault_points"] == len(MERGE_POINTS) and summary["batches_committed"] > 10


def test_kb_info_and_rest_show_the_index_type_memory_and_disk(tmp_path: Path) -> None:
    """``kb info`` (against a real ``kb serve``) and GET .../index name the compressed type and its sizes; the
    remote client's ``index_info`` gives what the server's store reports."""
    server = KBServer(tmp_path / "server").start()
    try:
        with kb.api_client(url=server.url, api_key=ADMIN_KEY) as client:
            handle = client.get_default_project().create_knowledge_bank(
                "sq8", embedding_llm_id="custom:fake6",
                settings={"store": {"index": {"type": "HNSW_SQ8", "exact_below": 2}}})
            core = handle.as_core_knowledge_bank()
            core.write_texts([f"note {i} about owls" for i in range(40)], [{}] * 40, [f"n{i}" for i in range(40)])
            info = core.index_info()
        assert info["index_type"] == "HNSW_SQ8" and info["vectors"] == 40 and info["compressed_segments"] >= 1
        assert info["vector_file_bytes"] >= 40 * 6 * 4  # the exact float32 vectors, on disk
        assert 0 < info["memory_bytes"] < info["disk_bytes"]
        env = {k: v for k, v in os.environ.items() if k not in ("KB_URL", "KB_API_KEY")}
        shown = subprocess.run([str(Path(sys.executable).parent / "kb"), "info", "sq8", "--url", server.url,
                                "--api-key", ADMIN_KEY], capture_output=True, text=True, timeout=300,
                               env={**env, "HF_HUB_OFFLINE": "1"})
        assert shown.returncode == 0, shown.stderr
        line = next(x for x in shown.stdout.splitlines() if x.startswith("index:"))
        assert "HNSW_SQ8" in line and "in memory" in line and "on disk" in line and "memory-mapped" in line
    finally:
        server.stop()

"""Issue 35: SIGKILL a writer at random moments and at kb's named fault points, on every store that runs here.

The short version of ``python -m tests.support.kill_loop`` (the long one, 50 kills a store, is run by hand: see
docs/reliability.md): a few kills a store, each followed by a fresh process that finds whole batches only (the
committed ones), a similarity and a hybrid search identical to an exact search over the committed records, and
a next writer that opens and commits. One Chroma server serves the module; Elasticsearch is the run's shared
node (``es_node``, tests/conftest.py).
Azure AI Search is left out: its stand-in is an emulator holding records in its own process memory, so killing
kb's writer tests nothing of the service's durability.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.support.kill_loop import MERGE_POINTS, kill_loop
from tests.support.kill_worker import BATCH, batch_records, check, open_store, same_ranking

KILLS = 4


@pytest.mark.parametrize("kind", ["faiss", "chroma", "chroma-server", "elasticsearch"])
def test_sigkill_at_random_moments_and_fault_points_leaves_whole_commits_and_exact_searches(
        kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    url = None
    if kind == "chroma-server":
        url = request.getfixturevalue("chroma_server").url
    elif kind == "elasticsearch":
        url = request.getfixturevalue("es_node").url
    summary = kill_loop(tmp_path / "kb", KILLS, seed=35, kind=kind, url=url, kb_id=f"kill{uuid.uuid4().hex[:8]}",
                        delay=(0.0, 1.5), point_every=2, report=True)
    print(summary)
    assert summary["mismatches"] == []
    assert summary["kills"] == KILLS and summary["at_fault_points"] == KILLS // 2
    assert summary["batches_committed"] > 0  # the random kills came after commits, not only before the first


def test_faiss_writers_killed_in_their_segment_merges_leave_whole_commits_and_exact_searches(tmp_path: Path) -> None:
    """Issue 34: every kill at one of the background merge's fault points (its output written, just before and
    just after its commit); the writer gets there by itself once ten commits make a tier merge."""
    summary = kill_loop(tmp_path / "kb", len(MERGE_POINTS), seed=34, kind="faiss", kb_id=f"merge{uuid.uuid4().hex[:8]}",
                        point_every=1, points=MERGE_POINTS, report=True)
    print(summary)
    assert summary["mismatches"] == []
    assert summary["at_fault_points"] == len(MERGE_POINTS) and summary["batches_committed"] > 10


def test_the_check_sees_a_torn_batch_and_a_wrong_ranking(tmp_path: Path) -> None:
    store = open_store(tmp_path / "kb", "faiss")
    for batch in range(2):
        with store.begin() as tx:
            tx.upsert(batch_records(batch))
    assert check(store)["whole"] and check(store)["similarity_exact"] and check(store)["hybrid_exact"]
    with store.begin() as tx:
        tx.delete([f"b1-{BATCH - 1}"])
    assert not check(store)["whole"]
    exact = [("a", 0.9), ("b", 0.8), ("c", 0.8)]
    assert same_ranking(["a", "c", "b"], exact, dict(exact))  # a tie in either order
    assert not same_ranking(["b", "a", "c"], exact, dict(exact))
    assert not same_ranking(["a", "b"], exact, dict(exact))

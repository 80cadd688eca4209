"""Chroma readers lapped by commits: a read at generation G returns G's state whole, or starts over at a newer
one; never records of two generations, never G with some of its records vacuumed away under it.

Each test takes its read's snapshot, then makes writers commit from another thread before the read's first
Chroma call (a hook on the driver's Chroma client): the interleaving CI met once in a full run
(test_readers_see_whole_commits: a similarity search came back empty), forced every time.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kb_base.errors import StoreUnavailableError
from kb_base.filters import Filter, parse_filter
from stores.base import Record, StoreContext
from stores.chroma.store import ChromaStore
from tests.conformance.store_suite import records, unit
from tests.support.chroma_hooks import before_first_call
from tests.support.chroma_server import ChromaServer

N = 20
_ids = itertools.count()


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[ChromaStore]:
    store = ChromaStore(StoreContext("embedded", tmp_path))
    yield store
    store.close()


def commit_versions(store: ChromaStore, versions: range) -> None:
    for version in versions:
        with store.begin() as tx:
            tx.upsert(records(N, tag=f"v{version}"))


def lap_first_read(store: ChromaStore, monkeypatch: pytest.MonkeyPatch, commits: range,
                   methods: tuple[str, ...] = ("query", "get")) -> list[str]:
    """Before the calling thread's first Chroma read (its snapshot already taken), another thread commits
    ``commits``, each replacing every record; returns the methods of the calling thread's Chroma calls."""
    return before_first_call(store.chroma, monkeypatch, lambda: commit_versions(store, commits), methods)


def tags(found: list[Record]) -> set[str]:
    return {r.metadata["tag"] for r in found}


READS: dict[str, Callable[[ChromaStore], list[Record]]] = {
    "similarity": lambda s: [h.record for h in s.similarity(unit(5), N)],
    "filtered similarity": lambda s: [h.record for h in s.similarity(unit(5), N, _even())],
    "get": lambda s: s.get([f"doc-{i}" for i in range(N)]),
    "keyword": lambda s: [h.record for h in s.keyword("text", N)],
}


def _even() -> Filter:
    return parse_filter({"even": True})


@pytest.mark.parametrize("read", list(READS))
def test_a_read_lapped_by_two_commits_starts_over_at_the_newer_generation(
        embedded: ChromaStore, monkeypatch: pytest.MonkeyPatch, read: str) -> None:
    commit_versions(embedded, range(0, 1))
    calls = lap_first_read(embedded, monkeypatch, range(1, 3))
    found = READS[read](embedded)
    # Before the fix: the records of v0 were vacuumed by v2's commit under the read, which came back empty.
    expected = N // 2 if read == "filtered similarity" else N
    assert tags(found) == {"v2"} and len(found) == expected
    assert len(calls) >= 2  # it did read again


@pytest.mark.parametrize("read", list(READS))
def test_a_read_lapped_by_one_commit_answers_at_its_own_generation(
        embedded: ChromaStore, monkeypatch: pytest.MonkeyPatch, read: str) -> None:
    commit_versions(embedded, range(0, 1))
    lap_first_read(embedded, monkeypatch, range(1, 2))
    found = READS[read](embedded)
    expected = N // 2 if read == "filtered similarity" else N
    assert tags(found) == {"v0"} and len(found) == expected  # v1 committed meanwhile: not a record of it


def test_a_server_read_lapped_by_two_commits_starts_over(tmp_path: Path, chroma_server: ChromaServer,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    store = ChromaStore(StoreContext(f"lap{next(_ids)}", tmp_path, connection={"url": chroma_server.url}))
    try:
        commit_versions(store, range(0, 1))
        lap_first_read(store, monkeypatch, range(1, 3))
        found = READS["similarity"](store)
        assert tags(found) == {"v2"} and len(found) == N
    finally:
        store.destroy()


def test_a_cleared_collection_dropped_under_a_read_is_read_again(embedded: ChromaStore,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A clear switches to a fresh collection; the one after drops the old one, which a lapped read still used."""
    commit_versions(embedded, range(0, 1))

    def clear_then_write() -> None:
        with embedded.begin() as tx:
            tx.clear()
            tx.upsert(records(N, tag="v1"))
        commit_versions(embedded, range(2, 3))

    before_first_call(embedded.chroma, monkeypatch, clear_then_write, methods=None)
    found = READS["similarity"](embedded)  # before the fix: StoreUnavailableError, no collection
    assert tags(found) == {"v2"} and len(found) == N


def test_paging_lapped_by_two_commits_says_so(embedded: ChromaStore, monkeypatch: pytest.MonkeyPatch) -> None:
    commit_versions(embedded, range(0, 1))
    pages = embedded.iter_records(batch_size=5)
    first = next(pages)
    assert tags(first) == {"v0"}
    commit_versions(embedded, range(1, 2))  # one commit: the pages go on at v0
    assert tags(next(pages)) == {"v0"}
    commit_versions(embedded, range(2, 3))  # a second: v0's records may be gone, and the next page says so
    with pytest.raises(StoreUnavailableError, match="two commits"):
        next(pages)


def test_each_hit_scores_its_own_version(embedded: ChromaStore) -> None:
    """A record being replaced has two physical versions in Chroma; the visible one's score is its own distance."""
    old = unit(1)
    new = -old  # as far from it as a vector can be
    embedded.upsert([Record("a", "a", {}, old)])
    tx = embedded.begin()
    try:
        tx.upsert([Record("a", "a", {}, new)])  # not committed: the version readers see is still ``old``
        [hit] = embedded.similarity(old, 1)
    finally:
        tx.rollback()
    assert hit.score == pytest.approx(1.0, abs=1e-5)  # before: -1, the other version's


def test_an_older_snapshot_keeps_the_client_a_newer_one_reopens_it(embedded: ChromaStore) -> None:
    """A reader whose snapshot predates this process's last commit used to reopen the client (and the next
    reader, at the newer generation, again), stopping the client before, which other reads may still use."""
    commit_versions(embedded, range(0, 2))
    assert tags(READS["similarity"](embedded)) == {"v1"}
    embedded_client = embedded.chroma.embedded
    assert embedded_client is not None and embedded_client.known is not None
    client, known = embedded.chroma.client, embedded_client.known
    embedded.chroma.refresh(known - 1)
    assert embedded.chroma.client is client and embedded_client.known == known
    embedded.chroma.refresh(known + 1)  # another process committed: this client may lack its records
    assert embedded.chroma.client is not client and embedded_client.known == known + 1


def test_a_knowledge_bank_made_again_in_a_deleted_ones_folder_reads_its_own_records(tmp_path: Path) -> None:
    first = ChromaStore(StoreContext("embedded", tmp_path))
    commit_versions(first, range(0, 3))  # its client knows generation 3
    first.destroy()
    second = ChromaStore(StoreContext("embedded", tmp_path))  # generation 0 again, in the same folder
    try:
        commit_versions(second, range(7, 8))
        assert tags(READS["similarity"](second)) == {"v7"} and len(READS["get"](second)) == N
    finally:
        second.close()

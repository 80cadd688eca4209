"""Elasticsearch and Azure AI Search readers lapped by commits (stores/generations.py: WholeGenerationReads): a
read at generation G returns G's state whole, or reads again at a newer generation; never G with some of its
records vacuumed away under it. Chroma's cases are in tests/test_chroma_lapped_readers.py.

Each test makes writers commit from another thread after the read took its generation and before its first
search (a hook on the driver's search call): the interleaving a slow reader meets under load, forced.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kb_base.errors import StoreUnavailableError
from stores.azure_search.store import AzureSearchStore
from stores.base import Record, StoreContext, VectorStoreDriver
from stores.elasticsearch.store import ElasticsearchStore
from tests.conformance.store_suite import records, unit
from tests.support.shared_elasticsearch import SharedNode

N = 20
_ids = itertools.count()


def azure(tmp_path: Path, request: pytest.FixtureRequest) -> tuple[AzureSearchStore, Any, str]:
    emulator = request.getfixturevalue("emulator")
    store = AzureSearchStore(StoreContext(f"lap{next(_ids)}", tmp_path, connection={
        "endpoint": emulator.url, "api_key": emulator.api_key, "index_prefix": "t-", "api_version": "2024-07-01",
        "retry_backoff_factor": 0.05}))
    return store, store.service, "search"


def elasticsearch(tmp_path: Path, request: pytest.FixtureRequest) -> tuple[ElasticsearchStore, Any, str]:
    node: SharedNode = request.getfixturevalue("es_node")
    store = ElasticsearchStore(StoreContext(f"lap{next(_ids)}", tmp_path, connection={
        "url": node.url, "index_prefix": node.index_prefix}))
    return store, store, "call"


KINDS: dict[str, Callable[[Path, pytest.FixtureRequest], tuple[Any, Any, str]]] = {
    "azure": azure, "elasticsearch": elasticsearch}


@pytest.fixture(params=list(KINDS))
def hooked(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[VectorStoreDriver, Any, str]]:
    store, owner, method = KINDS[request.param](tmp_path, request)
    yield store, owner, method
    store.destroy()


def commit_versions(store: VectorStoreDriver, versions: range) -> None:
    for version in versions:
        with store.begin() as tx:
            tx.upsert(records(N, tag=f"v{version}"))


def lap_first_search(hooked: tuple[VectorStoreDriver, Any, str], monkeypatch: pytest.MonkeyPatch,
                     commits: range) -> None:
    """Before the calling thread's first search, another thread commits ``commits``, each replacing every record."""
    store, owner, method = hooked
    real, reader, done = getattr(owner, method), threading.get_ident(), threading.Event()

    def search(*args: Any, **kwargs: Any) -> Any:
        if threading.get_ident() == reader and not done.is_set():
            done.set()
            writer = threading.Thread(target=commit_versions, args=(store, commits))
            writer.start()
            writer.join()
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, method, search)


READS: dict[str, Callable[[VectorStoreDriver], list[Record]]] = {
    "similarity": lambda s: [h.record for h in s.similarity(unit(5), N)],
    "get": lambda s: s.get([f"doc-{i}" for i in range(N)]),
    "keyword": lambda s: [h.record for h in s.keyword("text", N)],
    "paging": lambda s: [r for page in s.iter_records(batch_size=N) for r in page],
}


@pytest.mark.parametrize("read", list(READS))
def test_a_read_lapped_by_two_commits_reads_again(hooked: tuple[VectorStoreDriver, Any, str], read: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    store = hooked[0]
    commit_versions(store, range(0, 1))
    lap_first_search(hooked, monkeypatch, range(1, 3))
    if read == "paging":  # pages already handed out cannot be read again: it says so
        with pytest.raises(StoreUnavailableError, match="two commits"):
            READS[read](store)
        return
    found = READS[read](store)
    # Before: the records of v0 were vacuumed by v2's commit under the read, which came back without them.
    assert {r.metadata["tag"] for r in found} == {"v2"} and len(found) == N


def test_a_count_lapped_by_two_commits_counts_again(hooked: tuple[VectorStoreDriver, Any, str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    store = hooked[0]
    commit_versions(store, range(0, 1))
    lap_first_search(hooked, monkeypatch, range(1, 3))
    assert store.count() == N  # before: 0, the records of v0 gone


@pytest.mark.parametrize("read", list(READS))
def test_a_read_lapped_by_one_commit_answers_at_its_own_generation(hooked: tuple[VectorStoreDriver, Any, str],
                                                                   read: str, monkeypatch: pytest.MonkeyPatch) -> None:
    store = hooked[0]
    commit_versions(store, range(0, 1))
    lap_first_search(hooked, monkeypatch, range(1, 2))
    found = READS[read](store)
    assert {r.metadata["tag"] for r in found} == {"v0"} and len(found) == N

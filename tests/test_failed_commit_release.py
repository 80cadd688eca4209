"""A commit that fails releases the knowledge bank at once, on every store (issue 37).

Before, a FAISS commit that failed kept its writer lock, SQLite connection and staging folder until the failed
transaction was garbage-collected, and the exception's traceback (kept by a notebook, a retry wrapper, a job
report) kept it alive: every later writer waited its timeout and failed with WriterBusyError. Here each store
fails a commit at each of its fault points (``KB_FAULT_RAISE``: an I/O error where ``KB_FAULT_POINT`` would kill),
on a full disk (a small tmpfs) and, for the remote stores, with the service refusing a write, while the test
keeps the exception; then the lock is free, nothing of the failed writer is open (its file descriptors counted in
/proc/self/fd), and a writer of the same handle and one of a new client get the lock at once (short timeouts: a
regression fails in seconds) and see exactly the last committed state.
"""

from __future__ import annotations

import fcntl
import gc
import itertools
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from langchain_core.embeddings import DeterministicFakeEmbedding

import kb
from kb.custom_models import LangChainEmbeddingModel
from stores.base import StoreTransaction
from tests.conftest import FAKE_MODEL_ID, FAKE_MODEL_NAME
from tests.support.azure_search_emulator import AzureSearchEmulator
from tests.support.chroma_server import ChromaServer
from tests.support.server import ADMIN_KEY, KBServer
from tests.support.shared_elasticsearch import SharedElasticsearch
from tests.support.tmpfs import small_disk
from tests.test_disk_full import fill

KINDS = ["faiss", "chroma", "chroma-server", "elasticsearch", "azure"]
GENERATION_POINTS = ["before_sqlite_commit", "after_sqlite_commit"]  # the commit point of every store
POINTS = {"faiss": ["index_written", "index_renamed", *GENERATION_POINTS], "chroma": GENERATION_POINTS,
          "chroma-server": GENERATION_POINTS, "elasticsearch": GENERATION_POINTS, "azure": GENERATION_POINTS}
CASES = [(kind, point) for kind in KINDS for point in POINTS[kind]]
FIRST = [f"a{i}" for i in range(5)]
_names = itertools.count()


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory, shared_elasticsearch: SharedElasticsearch,
             ) -> Iterator[dict[str, Any]]:
    """The store services, started the first time a test needs each, stopped at the end of the module
    (Elasticsearch is the run's shared node: tests/conftest.py)."""
    started: dict[str, Any] = {"shared-elasticsearch": shared_elasticsearch}
    yield started
    for kind in ("chroma-server", "azure"):
        if kind in started:
            started[kind].stop()


def _connection(kind: str, services: dict[str, Any], tmp_path_factory: pytest.TempPathFactory,
                ) -> tuple[str, dict[str, Any]] | None:
    if kind == "chroma-server":
        if kind not in services:
            services[kind] = ChromaServer(tmp_path_factory.mktemp("chroma") / "data").start()
        return "chroma", {"url": services[kind].url}
    if kind == "elasticsearch":
        if kind not in services:
            services[kind] = services["shared-elasticsearch"].node("rel-")
        return "elasticsearch", {"url": services[kind].url, "index_prefix": services[kind].index_prefix}
    if kind == "azure":
        if kind not in services:
            services[kind] = AzureSearchEmulator(tmp_path_factory.mktemp("azure")).start()
        emulator = services[kind]
        return "azure-ai-search", {"endpoint": emulator.url, "api_key": emulator.api_key, "index_prefix": "rel-",
                                   "api_version": "2024-07-01", "retry_backoff_factor": 0.05,
                                   "document_retries": 0}
    return None


class Bank:
    """A knowledge bank of one store kind in a kb home, reopened by as many clients as a test wants."""

    def __init__(self, home: Path, kind: str, services: dict[str, Any],
                 tmp_path_factory: pytest.TempPathFactory) -> None:
        self.home, self.kind = home, kind
        client = self.client()
        store_type, settings = {"faiss": "FAISS", "azure": "AZURE_AI_SEARCH", "elasticsearch": "ELASTICSEARCH"}.get(
            kind, "CHROMA"), {}
        connection = _connection(kind, services, tmp_path_factory)
        if connection is not None:
            client.create_connection("conn", connection[0], connection[1], replace=True)
            settings["connection"] = "conn"
        self.core = client.get_default_project().create_knowledge_bank(
            f"release-{kind}-{next(_names)}", embedding_llm_id=FAKE_MODEL_ID, vector_store_type=store_type,
            settings=settings).as_core_knowledge_bank()
        self.id = self.core.id
        self.clients = [client]

    def client(self) -> kb.EmbeddedClient:
        client = kb.api_client(home=self.home)
        client.register_embedding_model(LangChainEmbeddingModel(FAKE_MODEL_NAME, DeterministicFakeEmbedding(size=6)))
        return client

    def new_core(self) -> Any:
        """The same knowledge bank through a new client (what another process would open)."""
        client = self.client()
        self.clients.append(client)
        return client.get_default_project().get_knowledge_bank(self.id).as_core_knowledge_bank()

    def close(self) -> None:
        for client in self.clients:
            client.close()


def write(core: Any, ids: list[str], timeout: float = 2.0, delete: list[str] | None = None) -> None:
    with core.get_writer(timeout=timeout) as writer:
        writer.as_langchain_vectorstore().add_texts([f"text of {i}" for i in ids], ids=ids)
        if delete:
            writer.delete(delete)


def warm_up(core: Any) -> None:
    """A commit and a rollback of the same kind as the test's, so that what stays open between writers (the
    store's read connections, its client's connection pool) is open before the test counts open files."""
    write(core, ["warm"], delete=["warm"])
    with pytest.raises(ZeroDivisionError), core.get_writer(timeout=2) as writer:
        writer.as_langchain_vectorstore().add_texts(["text of warm"], ids=["warm"])
        writer.delete(["a0"])
        raise ZeroDivisionError


def ids_of(core: Any) -> list[str]:
    return sorted(core.driver.ids_where(None))


def open_files(under: Path) -> list[str]:
    """The files under ``under`` this process has a descriptor on (lock files, SQLite databases, index files),
    each once: SQLite's unix VFS keeps a closed connection's descriptor while the process has other connections
    to the same file, for the next one to reuse, so counts per file are SQLite's business (open connections are
    counted by ``open_connections``). Left out: SQLite's -wal and -shm files (opened lazily by readers) and
    chromadb's own database (its connection pool grows with the threads that used it, up to a few)."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed meanwhile (listdir's own descriptor)
            continue
        if target.startswith(str(under)) and not target.endswith(("-wal", "-shm")) \
                and "/chroma-store/chroma/" not in target:
            found.add(target)
    return sorted(found)


def is_open(conn: sqlite3.Connection) -> bool:
    try:
        conn.total_changes  # noqa: B018 - raises on a closed connection
        return True
    except sqlite3.ProgrammingError:
        return False


def open_connections() -> int:
    """The SQLite connections open in this process (chromadb's pool included: the warm-up filled it)."""
    gc.collect()  # what is unreachable does not count; what the kept exception reaches does
    return sum(1 for o in gc.get_objects() if isinstance(o, sqlite3.Connection) and is_open(o))


def failed_transactions(exc: BaseException) -> list[StoreTransaction]:
    """The store transactions the kept exception's tracebacks still hold (what kept the lock before)."""
    found: list[StoreTransaction] = []
    seen: BaseException | None = exc
    while seen is not None:
        tb = seen.__traceback__
        while tb is not None:
            found += [v for v in tb.tb_frame.f_locals.values()
                      if isinstance(v, StoreTransaction) and all(v is not f for f in found)]
            tb = tb.tb_next
        seen = seen.__cause__ or seen.__context__
    return found


def assert_closed(exc: BaseException) -> None:
    """Every transaction the kept exception holds is closed: its SQLite connection and its lock file."""
    transactions = failed_transactions(exc)
    assert transactions, "the kept exception holds no transaction: this check would check nothing"
    for tx in transactions:
        holder = getattr(tx, "write", tx)  # Elasticsearch and Azure AI Search: the generation ledger's write
        lock = getattr(holder, "lock_file", None) or holder.lock
        assert lock.closed and not is_open(holder.conn), type(tx).__name__


def assert_released(bank: Bank, files_before: list[str], connections_before: int) -> None:
    """Nothing of the failed writer is left: the lock is free, no file or connection of it open, no staging."""
    assert open_connections() == connections_before
    for lock in bank.core.folder.rglob("writer.lock"):
        with open(lock, "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError if still held
            fcntl.flock(handle, fcntl.LOCK_UN)
    assert open_files(bank.home) == files_before
    assert not [f for f in open_files(bank.home) if f.endswith("writer.lock")]
    assert not any(path.is_file() for path in bank.core.folder.rglob("staging/**/*"))


def assert_next_writers_get_it_at_once(bank: Bank, expected: list[str]) -> None:
    """A writer of the same handle, then one of a new client: each gets the lock at once and sees ``expected``."""
    started = time.monotonic()
    with bank.core.get_writer(timeout=2) as writer:
        assert sorted(writer.transaction.ids_where(None)) == expected
        writer.as_langchain_vectorstore().add_texts(["text of b0"], ids=["b0"])
    fresh = bank.new_core()
    assert ids_of(fresh) == sorted([*expected, "b0"])
    with fresh.get_writer(timeout=2) as writer:
        writer.delete(["b0"])
    assert ids_of(bank.core) == ids_of(fresh) == expected
    assert time.monotonic() - started < 10  # no waiting on a lock (the writers' own work: well under a second)


@pytest.mark.parametrize(("kind", "point"), CASES, ids=[f"{k}-{p}" for k, p in CASES])
def test_a_commit_failing_at_a_fault_point_releases_the_knowledge_bank(
        kind: str, point: str, tmp_path: Path, services: dict[str, Any],
        tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    bank = Bank(tmp_path / "home", kind, services, tmp_path_factory)
    try:
        write(bank.core, FIRST)
        warm_up(bank.core)
        files_before, connections_before = open_files(bank.home), open_connections()
        monkeypatch.setenv("KB_FAULT_RAISE", point)
        kept: list[BaseException] = []
        try:
            write(bank.core, ["n0", "n1"], delete=["a0"])
        except kb.errors.KBError as exc:  # kept, as a notebook (sys.last_value) or a job report would
            kept.append(exc)
        monkeypatch.delenv("KB_FAULT_RAISE")
        assert len(kept) == 1 and isinstance(kept[0], kb.errors.StoreError), kept
        assert "injected fault" in str(kept[0]) and kept[0].__traceback__ is not None
        assert_released(bank, files_before, connections_before)
        assert_closed(kept[0])
        committed = point == "after_sqlite_commit"  # failed after the commit point: the new state stands
        expected = sorted([*FIRST[1:], "n0", "n1"]) if committed else FIRST
        assert ids_of(bank.core) == expected
        assert_next_writers_get_it_at_once(bank, expected)
        assert kept[0].__traceback__ is not None  # still alive throughout
    finally:
        bank.close()


def refuse_the_next_write(bank: Bank, services: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
                          ) -> Callable[[], None]:
    """Make the store refuse the next write (part of which may land); returns what lifts the refusal."""
    if bank.kind == "elasticsearch":  # a real refusal: the index is write-blocked (403 on every bulk item)
        blocks = f"{services['elasticsearch'].url}/{bank.core.driver.index}/_settings"
        httpx.put(blocks, json={"index.blocks.write": True}, timeout=30).raise_for_status()
        return lambda: httpx.put(blocks, json={"index.blocks.write": False}, timeout=30).raise_for_status()
    if bank.kind == "azure":  # the service rejects one document of the batch (207), not retried here
        services["azure"].fault(partial=1, times=1)
        return lambda: None
    monkeypatch.setenv("KB_FAULT_RAISE", "store_records_written")  # Chroma: the add landed, then the call failed
    return lambda: monkeypatch.delenv("KB_FAULT_RAISE")


@pytest.mark.parametrize("kind", ["chroma", "chroma-server", "elasticsearch", "azure"])
def test_a_commit_after_a_refused_write_refuses_and_releases_the_knowledge_bank(
        kind: str, tmp_path: Path, services: dict[str, Any], tmp_path_factory: pytest.TempPathFactory,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The caller catches the store's refusal inside the block and leaves it normally: the commit refuses (part
    of the write may be in the store), rolls back and releases; the refusal is lifted only afterwards, so the
    rollback may fail to clean the store too, which the next writer then does."""
    bank = Bank(tmp_path / "home", kind, services, tmp_path_factory)
    try:
        write(bank.core, FIRST)
        warm_up(bank.core)
        files_before, connections_before = open_files(bank.home), open_connections()
        kept: list[BaseException] = []
        try:
            with bank.core.get_writer(timeout=2) as writer:
                writer.delete(["a0"])
                lift = refuse_the_next_write(bank, services, monkeypatch)
                with pytest.raises((kb.errors.KBError, OSError)):  # the injected fault is an OSError
                    writer.as_langchain_vectorstore().add_texts(["text of n0", "text of n1"], ids=["n0", "n1"])
        except kb.errors.KBError as exc:
            kept.append(exc)
        lift()
        assert len(kept) == 1 and isinstance(kept[0], kb.errors.StoreError), kept
        assert "a write of this transaction failed" in str(kept[0]) and "nothing was committed" in str(kept[0])
        assert_released(bank, files_before, connections_before)
        assert_closed(kept[0])
        assert_next_writers_get_it_at_once(bank, FIRST)
        assert kept[0].__traceback__ is not None
    finally:
        bank.close()


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs."""
    with small_disk(tmp_path, "16m") as mount:
        yield mount


@pytest.mark.parametrize("kind", KINDS)
def test_a_commit_failing_on_a_full_disk_releases_the_knowledge_bank(
        kind: str, disk: Path, services: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> None:
    bank = Bank(disk / "home", kind, services, tmp_path_factory)
    filler = None
    try:
        write(bank.core, FIRST)
        warm_up(bank.core)
        files_before, connections_before = open_files(bank.home), open_connections()
        kept: list[BaseException] = []
        try:
            with bank.core.get_writer(timeout=2) as writer:
                writer.delete(["a0"])
                writer.as_langchain_vectorstore().add_texts(["word " * 2000] * 20, ids=[f"n{i}" for i in range(20)])
                filler = fill(disk, leave=0)  # the disk fills up before the commit
        except kb.errors.KBError as exc:
            kept.append(exc)
        assert len(kept) == 1 and isinstance(kept[0], kb.errors.DiskFullError), kept
        assert_released(bank, files_before, connections_before)
        assert_closed(kept[0])
        assert ids_of(bank.core) == FIRST
        files_before, connections_before = open_files(bank.home), open_connections()  # with the read's connection
        try:  # while the disk is still full, a writer opens, or fails to open with a typed error and releases
            with bank.core.get_writer(timeout=2):
                pass
        except kb.errors.KBError as exc:
            assert not isinstance(exc, kb.errors.WriterBusyError)
            kept.append(exc)
        assert_released(bank, files_before, connections_before)
        assert filler is not None
        filler.unlink()
        assert_next_writers_get_it_at_once(bank, FIRST)
        assert kept[0].__traceback__ is not None
    finally:
        if filler is not None:
            filler.unlink(missing_ok=True)
        bank.close()


def test_the_remote_writer_and_the_rest_service_after_a_failed_commit(disk: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The remote writer's commit fails on the server (full disk: 507); the exception is kept client-side, and the
    next remote writer, and an embedded writer on the same home, get the knowledge bank at once; then an embedded
    commit fails, and the service's next writer gets it at once."""
    server = KBServer(disk / "home")
    server.log = tmp_path / "server.log"  # the log must not be what fills the disk
    server.start()
    filler = None
    try:
        remote = kb.api_client(url=server.url, api_key=ADMIN_KEY)
        handle = remote.get_default_project().create_knowledge_bank("remote-release", embedding_llm_id=FAKE_MODEL_ID)
        core = handle.as_core_knowledge_bank()
        with core.get_writer() as writer:
            writer.as_langchain_vectorstore().add_texts(["first document"], ids=["first"])
        filler = fill(disk, leave=150_000)  # room to open connections, not to commit
        kept: list[BaseException] = []
        staged = ""
        try:
            with core.get_writer() as writer:
                staged = writer.folder_path
                writer.as_langchain_vectorstore().add_texts(["word " * 2000] * 20, ids=[f"n{i}" for i in range(20)])
        except kb.errors.KBError as exc:
            kept.append(exc)
        assert len(kept) == 1 and isinstance(kept[0], kb.errors.DiskFullError), kept
        assert staged and not Path(staged).exists()  # the remote writer's staging folder went with it
        filler.unlink()
        started = time.monotonic()
        with core.get_writer() as writer:  # the server's writer takes the lock at once (else 409 after 30 s)
            writer.as_langchain_vectorstore().add_texts(["second document"], ids=["second"])
        assert time.monotonic() - started < 10
        assert core.count() == 2
        local = kb.api_client(home=disk / "home")
        local.register_embedding_model(LangChainEmbeddingModel(FAKE_MODEL_NAME, DeterministicFakeEmbedding(size=6)))
        embedded = local.get_default_project().get_knowledge_bank(core.id).as_core_knowledge_bank()
        with embedded.get_writer(timeout=2) as writer:
            writer.delete(["second"])
        assert sorted(embedded.driver.ids_where(None)) == ["first"] and core.count() == 1
        # the way round: an embedded commit fails here (the exception kept), the service writes at once
        monkeypatch.setenv("KB_FAULT_RAISE", "before_sqlite_commit")  # this process only: the server started before
        with pytest.raises(kb.errors.StoreError, match="injected fault") as failed:
            with embedded.get_writer(timeout=2) as writer:
                writer.delete(["first"])
        monkeypatch.delenv("KB_FAULT_RAISE")
        started = time.monotonic()
        with core.get_writer() as writer:
            writer.as_langchain_vectorstore().add_texts(["third document"], ids=["third"])
        assert time.monotonic() - started < 10 and failed.value.__traceback__ is not None
        assert sorted(embedded.driver.ids_where(None)) == ["first", "third"]
        local.close()
        assert httpx.get(f"{server.url}/readyz", timeout=5).status_code == 200
    finally:
        if filler is not None:
            filler.unlink(missing_ok=True)
        server.stop()

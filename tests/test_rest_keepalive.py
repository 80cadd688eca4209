"""Keep-alive connections under load (issue 32): ``kb serve --workers 2`` must not close a connection a client
is using. The benchmark's own REST client (``benchmarks.rest_peers``) counts how connections ended: dropped
with a request outstanding (a server fault), closed while idle (the keep-alive timeout, normal HTTP) and
closed gracefully (``Connection: close``)."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import kb
from benchmarks import rest_peers
from tests.support.kb_serve import KBServe
from tests.support.server import ADMIN_KEY

AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
CHUNKS, DIM = 3000, 384


def _vectors(count: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(count, DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _make_home(home: Path) -> dict[str, str]:
    """Two knowledge banks of the same vectors, HNSW and flat; their ids by index type."""
    client = kb.api_client(home=home)
    vectors = _vectors(CHUNKS, 1)
    ids = {}
    for index in ("HNSW", "FLAT"):
        handle = client.get_default_project().create_knowledge_bank(
            f"keepalive-{index.lower()}", settings={"store": {"index": {"type": index}}})
        with handle.as_core_knowledge_bank().get_writer() as writer:
            writer.as_langchain_vectorstore().add_embeddings(
                [(f"chunk {i} about topic {i % 17}", v) for i, v in enumerate(vectors)],
                [{"topic": i % 17} for i in range(CHUNKS)], ids=[f"c{i}" for i in range(CHUNKS)])
        ids[index] = handle.id
    client.close()
    return ids


def _search_url(serve: KBServe, kb_id: str) -> str:
    return f"{serve.url}/v1/projects/DEFAULT/knowledge-banks/{kb_id}/search"


def _workers(serve: KBServe) -> list[int]:
    """The uvicorn worker processes of ``serve`` (its children, less multiprocessing's resource tracker)."""
    assert serve.process is not None
    pid = serve.process.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(c) for c in children if b"resource_tracker" not in Path(f"/proc/{c}/cmdline").read_bytes()]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[KBServe, dict[str, str]]]:
    home = tmp_path_factory.mktemp("keepalive")
    ids = _make_home(home)
    serve = KBServe(home, workers=2).start()
    try:
        yield serve, ids
    finally:
        serve.stop()


@pytest.mark.parametrize("index", ["HNSW", "FLAT"])
def test_sixteen_keep_alive_clients_against_two_workers_lose_no_connection(
        served: tuple[KBServe, dict[str, str]], index: str) -> None:
    serve, ids = served
    figures = rest_peers.load_test(_search_url(serve, ids[index]), rest_peers.kb_body, _vectors(200, 2), 16, 4.0,
                                   headers=AUTH)  # raises on any connection dropped with a request outstanding
    connections = figures["connections"]
    print(f"{index}: {figures['queries']} queries, {figures['qps']:.0f}/s, connections {connections}")
    assert connections["dropped"] == 0 and connections["idle"] == 0 and connections["graceful"] == 0, connections
    assert connections["opened"] == 16  # one keep-alive connection per client, all the way through
    assert figures["queries"] > 16 * 10
    assert "worker process" not in serve.log.read_text()  # no worker died or was replaced


def _established_connections(pid: int, port: int) -> int:
    """How many established TCP connections on ``port`` the process ``pid`` holds (its socket descriptors
    matched against /proc/net/tcp's rows by inode)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for row in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = row.split()
        local_port, state, inode = int(fields[1].rsplit(":", 1)[1], 16), fields[3], fields[9]
        count += local_port == port and state == "01" and inode in inodes  # 01: ESTABLISHED
    return count


def test_a_worker_that_dies_mid_load_is_counted_as_dropped_and_named_in_the_log(
        served: tuple[KBServe, dict[str, str]]) -> None:
    """The counter's negative control, and what an operator reads: a worker SIGKILLed under load."""
    serve, ids = served
    killed: list[int] = []

    def kill_soon() -> None:
        # The kernel hands connections to whichever worker accepts first, so one worker may hold all 16:
        # kill one that holds some (killing an idle worker drops nothing, and the control would not fire).
        deadline = time.monotonic() + 3.0
        time.sleep(1.0)
        while time.monotonic() < deadline:
            holding = [w for w in _workers(serve) if _established_connections(w, serve.port) > 0]
            if holding:
                killed.append(holding[0])
                os.kill(holding[0], signal.SIGKILL)
                return
            time.sleep(0.05)

    threading.Thread(target=kill_soon).start()
    with pytest.raises(RuntimeError, match=r"closed \d+ connection\(s\) with a request outstanding"):
        rest_peers.load_test(_search_url(serve, ids["HNSW"]), rest_peers.kb_body, _vectors(200, 3), 16, 4.0,
                             headers=AUTH)
    assert killed, "no worker held a client connection during the load"
    victim = killed[0]
    deadline = time.monotonic() + 45  # the supervisor logs after its sweep, which waits on the other worker's ping
    while f"worker process {victim} was killed by SIGKILL" not in serve.log.read_text():
        assert time.monotonic() < deadline, (victim, _workers(serve), serve.log, serve.log.read_text()[-2000:])
        time.sleep(0.2)


def test_a_connection_closed_while_idle_is_counted_apart_and_its_request_sent_again(tmp_path: Path) -> None:
    """A connection idle past the server's keep-alive timeout is closed by the server: normal HTTP, not a fault."""
    ids = _make_home(tmp_path / "home")
    serve = KBServe(tmp_path / "home", workers=2, env={"KB_KEEP_ALIVE": "1"}).start()
    try:
        figures = rest_peers.load_test(_search_url(serve, ids["FLAT"]), rest_peers.kb_body, _vectors(20, 4), 2, 10.0,
                                       headers=AUTH, pause=1.6)  # 3 untimed warm-up requests, then timed ones
    finally:
        serve.stop()
    connections = figures["connections"]
    assert connections["dropped"] == 0, connections
    assert connections["idle"] >= 2 and connections["opened"] == 2 + connections["idle"], connections
    assert figures["queries"] >= 4  # every request was answered, on a new connection where the old one was closed

"""One Elasticsearch node for a whole test run, shared by the test modules that only index into it.

Starting a node costs a JVM start and a 512 MB pre-touched heap: tens of seconds of CPU on a busy 2-core
machine. Modules that write and read their own indices (the conformance suites, the writer kill loops, the
failed-commit tests) share one node; a module that stops, kills or freezes its node, or needs a cluster,
still starts its own ``ElasticsearchNode``.

Under pytest-xdist each worker is a process: the node is started by the first worker that needs it, under a
file lock in the run's shared temporary folder (the parent of every worker's ``basetemp``), and its address
is written there for the others. Each worker that used it is listed as a holder until its session ends; the
last one out stops the node and removes its data. Isolation between modules is by name: each module's view
carries an index prefix of its own (``index_prefix`` in a connection); a module that cannot pass a prefix
(a writer in a subprocess) uses knowledge bank ids no other module uses.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support.elasticsearch_server import ElasticsearchNode

STATE = "shared-elasticsearch.json"


@dataclass(frozen=True)
class SharedNode:
    """A module's view of the shared node: its address and the index prefix the module's indices carry."""

    url: str
    index_prefix: str


class SharedElasticsearch:
    """The run's shared node as seen from one process (``holder``: the xdist worker id, or ``master``)."""

    def __init__(self, folder: Path, holder: str) -> None:
        self.folder, self.holder = folder, holder
        self._url: str | None = None
        self._started: ElasticsearchNode | None = None  # set in the process that started the node

    def node(self, index_prefix: str) -> SharedNode:
        """The node (started on first use in the run), with ``index_prefix`` for the caller's indices."""
        if self._url is None:
            self._url = self._acquire()
        return SharedNode(self._url, index_prefix)

    def release(self) -> None:
        """This process is done with the node; the last holder stops it."""
        if self._url is None:
            return
        self._url = None
        with self._locked():
            state = self._read()
            if state is None or self.holder not in state["holders"]:
                return
            state["holders"].remove(self.holder)
            if state["holders"]:
                self._write(state)
                return
            self._stop(state)
            (self.folder / STATE).unlink()

    def _acquire(self) -> str:
        with self._locked():
            state = self._read()
            if state is not None and _answers(state["url"]):
                state["holders"] = sorted({*state["holders"], self.holder})
            else:
                if state is not None:  # its last holder crashed and the node went with it: start afresh
                    self._stop(state)
                node = ElasticsearchNode(name="shared").start()
                assert node.process is not None
                self._started = node
                state = {"url": node.url, "pgid": node.process.pid, "work": str(node.work),
                         "holders": [self.holder]}
            self._write(state)
            return str(state["url"])

    def _stop(self, state: dict) -> None:
        if self._started is not None:  # ours: its Popen is reaped too
            self._started.cleanup()
            self._started = None
            return
        stop_group(int(state["pgid"]))
        shutil.rmtree(state["work"], ignore_errors=True)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / f"{STATE}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # held while a node starts: the other workers wait for it
            yield

    def _read(self) -> dict | None:
        path = self.folder / STATE
        return json.loads(path.read_text()) if path.exists() else None

    def _write(self, state: dict) -> None:
        (self.folder / f"{STATE}.part").write_text(json.dumps(state))
        os.replace(self.folder / f"{STATE}.part", self.folder / STATE)


def reap(folder: Path) -> None:
    """Stop a node left behind by holders that died without releasing it (called once the run is over)."""
    path = folder / STATE
    if path.exists():
        state = json.loads(path.read_text())
        stop_group(int(state["pgid"]))
        shutil.rmtree(state["work"], ignore_errors=True)
        path.unlink()


def stop_group(pgid: int, timeout: float = 30.0) -> None:
    """SIGTERM to the node's process group, SIGKILL if it outlives ``timeout``. The group may belong to a
    process that started it and has exited (the node then has no parent to reap it here), so the wait is on
    the group's live members, not on a child."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _live_members(pgid):
            time.sleep(0.2)
        if not _live_members(pgid):
            return


def _live_members(pgid: int) -> bool:
    """Whether a process of group ``pgid`` is still running (zombies left for their parent to reap are not)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # exited meanwhile
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/_cluster/health", timeout=10).status_code == 200
    except httpx.HTTPError:
        return False

"""Real Elasticsearch processes for tests: one node, or a two-node cluster, on loopback.

The runnable archive comes from Maven Central
(``org.elasticsearch.distribution.integ-test-zip:elasticsearch:<version>:zip``), fetched once with
Maven into ``$KB_ES_CACHE`` (default ``~/.cache/kb/elasticsearch``) and unpacked there. Elasticsearch
refuses to run as root, so as root the nodes run as the system user ``kbtest`` (created if missing).
Every node binds 127.0.0.1, has a 512 MB heap, security off and disk watermarks off.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import tempfile
import time
import zipfile
from pathlib import Path

import httpx

from tests.support.openai_embeddings_server import free_port

ES_VERSION = os.environ.get("KB_ES_VERSION", "8.19.3")
ARTIFACT = f"org.elasticsearch.distribution.integ-test-zip:elasticsearch:{ES_VERSION}:zip"
USER = "kbtest"


def cache_dir() -> Path:
    # As root the nodes run as an unprivileged user, who cannot enter /root: keep the archive elsewhere.
    default = Path("/var/cache/kb/elasticsearch") if os.geteuid() == 0 else \
        Path.home() / ".cache" / "kb" / "elasticsearch"
    return Path(os.environ.get("KB_ES_CACHE", default))


def _run(command: list[str]) -> str:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"command failed ({result.returncode}): {' '.join(command)}\n"
                           f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result.stdout


def ensure_distribution() -> Path:
    """The unpacked Elasticsearch home, downloading and unpacking it the first time (safe against races)."""
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    home = cache / f"elasticsearch-{ES_VERSION}"
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (home / "bin" / "elasticsearch").exists():
            return home
        archive = cache / f"elasticsearch-{ES_VERSION}.zip"
        if not archive.exists():
            print(f"[kb tests] fetching {ARTIFACT} from Maven Central ...", flush=True)
            _run(["mvn", "-q", "-B", "dependency:copy", f"-Dartifact={ARTIFACT}", f"-DoutputDirectory={cache}",
                  "-Dmdep.stripVersion=false"])
        print(f"[kb tests] unpacking {archive.name} ...", flush=True)
        staging = Path(tempfile.mkdtemp(dir=cache))
        with zipfile.ZipFile(archive) as bundle:
            bundle.extractall(staging)
        for path in (staging / f"elasticsearch-{ES_VERSION}" / "bin").iterdir():
            path.chmod(0o755)
        os.replace(staging / f"elasticsearch-{ES_VERSION}", home)
        shutil.rmtree(staging, ignore_errors=True)
    return home


def _ensure_user() -> str | None:
    if os.geteuid() != 0:
        return None
    if subprocess.run(["id", USER], capture_output=True).returncode != 0:
        _run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", USER])
    return USER


class ElasticsearchNode:
    def __init__(self, name: str = "node-1", cluster: str | None = None, seeds: list[str] | None = None,
                 masters: list[str] | None = None, http_port: int | None = None,
                 transport_port: int | None = None, roles: str | None = None) -> None:
        self.name, self.cluster, self.seeds, self.masters, self.roles = name, cluster, seeds, masters, roles
        self.http_port = http_port or free_port()
        self.transport_port = transport_port or free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.work = Path(tempfile.mkdtemp(prefix=f"kb-es-{name}-"))
        self.process: subprocess.Popen[bytes] | None = None

    def _command(self, home: Path) -> list[str]:
        settings = {"node.name": self.name, "network.host": "127.0.0.1", "http.port": self.http_port,
                    "transport.port": self.transport_port, "path.data": self.work / "data",
                    "path.logs": self.work / "logs", "xpack.security.enabled": "false",
                    "cluster.routing.allocation.disk.threshold_enabled": "false",
                    "bootstrap.memory_lock": "false", "action.destructive_requires_name": "false"}
        if self.cluster:
            settings.update({"cluster.name": self.cluster, "discovery.seed_hosts": ",".join(self.seeds or []),
                             "cluster.initial_master_nodes": ",".join(self.masters or [])})
            if self.roles:
                settings["node.roles"] = self.roles
        else:
            settings["discovery.type"] = "single-node"
        return [str(home / "bin" / "elasticsearch"), *[f"-E{k}={v}" for k, v in settings.items()]]

    def start(self, wait: bool = True) -> ElasticsearchNode:
        home = ensure_distribution()
        user = _ensure_user()
        for folder in (self.work / "data", self.work / "logs"):
            folder.mkdir(parents=True, exist_ok=True)
        if user:
            self.work.chmod(0o755)
            _run(["chown", "-R", user, str(self.work), str(home / "config"), str(home / "logs")])
        java_home = Path(shutil.which("java") or "/usr/bin/java").resolve().parent.parent
        env = {**os.environ, "ES_JAVA_HOME": str(java_home), "ES_JAVA_OPTS": "-Xms512m -Xmx512m"}
        command = self._command(home)
        if user:
            command = ["runuser", "-u", user, "--", "env", f"ES_JAVA_HOME={java_home}",
                       "ES_JAVA_OPTS=-Xms512m -Xmx512m", *command]
        self.log = open(self.work / "stdout.log", "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                break
            try:
                health = httpx.get(f"{self.url}/_cluster/health", timeout=2).json()
                if health.get("status") in ("yellow", "green"):
                    return
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.5)
        tail = (self.work / "stdout.log").read_text(errors="replace")[-3000:]
        self.stop()
        raise RuntimeError(f"Elasticsearch node {self.name} did not become ready:\n{tail}")

    def stop(self) -> None:
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait(10)
        self.process = None
        self.log.close()

    def kill(self) -> None:
        """The node dies at once (SIGKILL to its process group), keeping its data for a restart with start()."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(30)
        self.process = None
        self.log.close()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.work, ignore_errors=True)


class ElasticsearchCluster:
    """Two data nodes on loopback: ``node-a`` is also the master, ``node-b`` holds data only.

    With two master-eligible nodes, stopping either loses the voting majority and the cluster stops
    answering; one master keeps the cluster up while the data-only node is stopped, which is the
    failure the distributed tests exercise (replicas on the surviving node keep serving).
    """

    def __init__(self) -> None:
        ports = [free_port(), free_port()]
        seeds = [f"127.0.0.1:{p}" for p in ports]
        self.nodes = [ElasticsearchNode("node-a", cluster="kb-test", seeds=seeds, masters=["node-a"],
                                        transport_port=ports[0], roles="[master,data]"),
                      ElasticsearchNode("node-b", cluster="kb-test", seeds=seeds, masters=["node-a"],
                                        transport_port=ports[1], roles="[data]")]

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    @property
    def url(self) -> str:
        """The first node's address, for a test's own requests (any node answers for the whole cluster)."""
        return self.nodes[0].url

    def start(self) -> ElasticsearchCluster:
        for node in self.nodes:
            node.start(wait=False)
        for node in self.nodes:
            node.wait_ready()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            health = httpx.get(f"{self.nodes[0].url}/_cluster/health", timeout=2).json()
            if health.get("number_of_nodes") == 2:
                return self
            time.sleep(0.5)
        raise RuntimeError("the two Elasticsearch nodes did not form a cluster")

    def cleanup(self) -> None:
        for node in self.nodes:
            node.cleanup()

"""A real Ray cluster on this machine for tests and benchmarks: a head and more nodes, each its own process.

Each node is ``ray start --block`` in a session of its own, with its own CPUs and object store, every port
picked free (several clusters may run at once: pytest-xdist, other users of the machine) and its files in a
fresh temporary directory. Stopping kills exactly those sessions (never ``ray stop``, which would stop every
Ray cluster of the machine). The nodes import kb from this tree (PYTHONPATH).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.support.openai_embeddings_server import free_port

ROOT = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).with_name("ray"))


def cluster_env() -> dict[str, str]:
    """What every process of the cluster (and a driver run as a subprocess) needs."""
    return {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0",
            "KB_ONNX_THREADS": "1", "RAY_AUTH_MODE": "disabled"}


class RayCluster:
    def __init__(self, node_cpus: tuple[int, ...] = (1, 1), object_store_bytes: int = 300 * 2**20) -> None:
        self.node_cpus = node_cpus
        self.object_store_bytes = object_store_bytes
        # short: Ray's unix sockets live under it, and their paths may not exceed 107 bytes
        self.temp_dir = Path(tempfile.mkdtemp(prefix="kbray-", dir="/tmp"))
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.nodes: list[subprocess.Popen[bytes]] = []

    def _node_args(self, cpus: int) -> list[str]:
        ports = [("--node-manager-port", free_port()), ("--object-manager-port", free_port()),
                 ("--metrics-export-port", free_port()), ("--dashboard-agent-listen-port", free_port()),
                 ("--dashboard-agent-grpc-port", free_port()), ("--runtime-env-agent-port", free_port())]
        return ["--block", "--num-cpus", str(cpus), "--object-store-memory", str(self.object_store_bytes),
                "--disable-usage-stats", "--node-ip-address", "127.0.0.1", "--min-worker-port", "0",
                "--max-worker-port", "0", *[str(x) for pair in ports for x in pair]]

    def _spawn(self, args: list[str], name: str) -> None:
        log = open(self.temp_dir / f"{name}.log", "wb")  # noqa: SIM115 - the node keeps writing to it
        self.nodes.append(subprocess.Popen([RAY, "start", *args], env=cluster_env(), stdout=log, stderr=log,
                                           start_new_session=True, cwd=str(ROOT)))

    def start(self) -> RayCluster:
        try:
            head = ["--head", "--port", str(self.port), "--include-dashboard", "false", "--ray-client-server-port",
                    str(free_port()), "--temp-dir", str(self.temp_dir)]
            self._spawn(head + self._node_args(self.node_cpus[0]), "head")
            self.wait_for_nodes(1)
            for n, cpus in enumerate(self.node_cpus[1:], start=1):
                self.add_node(cpus, n)
            return self
        except BaseException:
            self.stop()
            raise

    def add_node(self, cpus: int, n: int) -> None:
        self._spawn(["--address", self.address, *self._node_args(cpus)], f"node{n}")
        self.wait_for_nodes(n + 1)

    def wait_for_nodes(self, count: int, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            # `ray status` asks the GCS (the dashboard, which `ray list` needs, is off)
            done = subprocess.run([RAY, "status", "--address", self.address], env=cluster_env(),
                                  capture_output=True, text=True)
            active = done.stdout.partition("Active:")[2].partition("Pending:")[0]
            if active.count(" node_") >= count:
                return
            for node in self.nodes:
                if node.poll() is not None:
                    raise RuntimeError(f"a ray node exited with {node.returncode}; logs in {self.temp_dir}")
            time.sleep(1.0)
        raise RuntimeError(f"the Ray cluster did not reach {count} nodes in {timeout:.0f}s; logs in {self.temp_dir}")

    def processes(self, title: str) -> list[int]:
        """Pids of this cluster's processes whose command line holds ``title`` (Ray names a worker after its
        task or actor), read from /proc."""
        sessions = {node.pid for node in self.nodes}
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if os.getsid(int(entry.name)) not in sessions:
                    continue
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except (ProcessLookupError, PermissionError, FileNotFoundError):
                continue
            if title in command:
                found.append(int(entry.name))
        return found

    def stop(self) -> None:
        for node in self.nodes:
            try:
                os.killpg(node.pid, signal.SIGTERM)  # the node's whole session: raylet, GCS, its workers
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 20
        for node in self.nodes:
            try:
                node.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for pid in self.processes(""):  # whatever ignored SIGTERM, and workers left in the sessions
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for node in self.nodes:
            try:
                os.killpg(node.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.nodes = []
        shutil.rmtree(self.temp_dir, ignore_errors=True)

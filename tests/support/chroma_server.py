"""A real ``chroma run`` server process on a free loopback port, for tests: start, stop, kill, freeze, restart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import httpx

from tests.support.openai_embeddings_server import free_port


class ChromaServer:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.log: IO[bytes] | None = None

    def start(self, timeout: float = 60.0) -> ChromaServer:
        """Start (or start again, on the same port and data folder) and wait for the heartbeat."""
        chroma = Path(sys.executable).parent / "chroma"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.log = open(self.path.parent / f"chroma-{self.port}.log", "ab")  # noqa: SIM115 - closed in _reap()
        self.process = subprocess.Popen([str(chroma), "run", "--path", str(self.path), "--host", "127.0.0.1",
                                         "--port", str(self.port)], stdout=self.log, stderr=subprocess.STDOUT,
                                        env={**os.environ, "ANONYMIZED_TELEMETRY": "False"})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._reap()
                raise RuntimeError(f"chroma run exited early; see {self.path.parent}/chroma-{self.port}.log")
            try:
                if httpx.get(f"{self.url}/api/v2/heartbeat", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"chroma run did not answer its heartbeat within {timeout:g} s")

    def stop(self) -> None:
        """A clean shutdown (SIGTERM), SIGKILL after 15 s."""
        if self.process is not None:
            self.resume()
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(15)
            self._reap()

    def kill(self) -> None:
        """The server dies at once, as in a crash or an OOM kill."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(15)
            self._reap()

    def pause(self) -> None:
        """Freeze the server: connections are accepted by the kernel but never answered."""
        if self.process is not None:
            self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)

    def restart(self) -> ChromaServer:
        self.stop()
        return self.start()

    def _reap(self) -> None:
        self.process = None
        if self.log is not None:
            self.log.close()
            self.log = None

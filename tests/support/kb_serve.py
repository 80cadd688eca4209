"""``kb serve`` as an operator runs it (the CLI, several uvicorn workers), on a free loopback port, for tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.support.openai_embeddings_server import API_KEY, EmbeddingsServer, free_port
from tests.support.server import ADMIN_KEY, ROOT

STUB_MODEL = "openai:stub:text-embedding-3-small"


def connect_stub_model(home: Path, embeddings: EmbeddingsServer) -> str:
    """Register the OpenAI-compatible test server as connection ``stub`` in ``home``'s catalog; its model id."""
    import kb

    client = kb.api_client(home=home)
    client.create_connection("stub", "openai-compatible", {"base_url": embeddings.url, "api_key": API_KEY,
                                                           "models": ["text-embedding-3-small"]})
    client.close()
    return STUB_MODEL


class KBServe:
    def __init__(self, home: Path, workers: int = 2, env: dict[str, str] | None = None) -> None:
        self.home, self.workers, self.extra_env = home, workers, env or {}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.log = home / f"kb-serve-{self.port}.log"

    def start(self, timeout: float = 90) -> KBServe:
        self.home.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "KB_HOME": str(self.home), "KB_AUTH": "on", "KB_BOOTSTRAP_ADMIN_KEY": ADMIN_KEY,
               "HF_HUB_OFFLINE": "1", "KB_WARMUP": "off", **self.extra_env}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # kb serve chooses and empties its own
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [str(Path(sys.executable).parent / "kb"), "serve", "--port", str(self.port), "--workers",
                 str(self.workers), "--log-level", "warning"], cwd=ROOT, env=env, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"kb serve exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"kb serve did not become ready: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)  # its own session: the workers go with it
            self.process.wait()
        self.process = None

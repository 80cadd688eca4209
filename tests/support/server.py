"""A real kb service process (uvicorn on a free loopback port) for tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from api.config import ServiceSettings
from api.keys import KeyStore
from tests.support.openai_embeddings_server import free_port

ROOT = Path(__file__).resolve().parents[2]
ADMIN_KEY = "kb_bootstrap_0123456789abcdefghijklmnop"


def create_test_app():  # noqa: ANN201 - uvicorn factory
    """The real app, plus LangChain's deterministic fake embeddings registered as ``custom:fake6``."""
    from langchain_core.embeddings import DeterministicFakeEmbedding

    from api.app import create_app
    from kb.custom_models import LangChainEmbeddingModel

    def register(client) -> None:  # noqa: ANN001
        client.register_embedding_model(LangChainEmbeddingModel("fake6", DeterministicFakeEmbedding(size=6)))

    return create_app(ServiceSettings.from_env(), configure_client=register)


class KBServer:
    def __init__(self, home: Path, auth: bool = True, env: dict[str, str] | None = None) -> None:
        self.home, self.auth, self.extra_env = home, auth, env or {}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.log = home / "server.log"

    def start(self) -> KBServer:
        self.home.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "KB_HOME": str(self.home), "KB_AUTH": "on" if self.auth else "off",
               "KB_BOOTSTRAP_ADMIN_KEY": ADMIN_KEY, "HF_HUB_OFFLINE": "1", "KB_WARMUP": "off",
               **self.extra_env}
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "tests.support.server:create_test_app", "--factory", "--host",
                 "127.0.0.1", "--port", str(self.port), "--log-level", "warning"], cwd=ROOT, env=env,
                stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"kb server exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"kb server did not become ready: {self.log.read_text()[-2000:]}")

    def keys(self) -> KeyStore:
        return KeyStore.for_home(self.home)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
            self.process = None

"""Start the Azure AI Search emulator (``tests/support/azure_search/``) as its own uvicorn process on loopback.

``AzureSearchEmulator().start()`` gives ``url`` and ``api_key`` for a kb connection; ``fault(...)`` queues a
429/503/partial-207 fault, ``violations()`` returns every schema violation seen (requests and responses),
``requests()`` the log of (method, route, status).
"""

from __future__ import annotations

import os
import secrets
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

import httpx

from tests.support.openai_embeddings_server import free_port

ROOT = Path(__file__).resolve().parents[2]


class AzureSearchEmulator:
    def __init__(self, log_dir: Path, reranker_url: str | None = None, bearer_token: str | None = None,
                 tls: bool = False) -> None:
        self.port = free_port()
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.api_key = secrets.token_hex(16)
        self.log_path = log_dir / f"azure-emulator-{self.port}.log"
        self.reranker_url, self.bearer_token, self.tls = reranker_url, bearer_token, tls
        self.certificate = log_dir / f"azure-emulator-{self.port}.crt"  # self-signed; also the CA to trust
        self.verify: ssl.SSLContext | bool = True  # set once the certificate exists
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self, timeout: float = 30.0) -> AzureSearchEmulator:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        env = {**os.environ, "AZURE_EMULATOR_API_KEY": self.api_key, "PYTHONPATH": str(ROOT)}
        if self.reranker_url:
            env["AZURE_EMULATOR_RERANKER_URL"] = self.reranker_url
        if self.bearer_token:
            env["AZURE_EMULATOR_BEARER_TOKEN"] = self.bearer_token
        tls: list[str] = []
        if self.tls:
            key = self.certificate.with_suffix(".key")
            subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                            "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key),
                            "-out", str(self.certificate)], check=True, capture_output=True)
            tls = ["--ssl-keyfile", str(key), "--ssl-certfile", str(self.certificate)]
            self.verify = ssl.create_default_context(cafile=str(self.certificate))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "tests.support.azure_search.app:make_app",
             "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning", *tls],
            cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the Azure AI Search emulator exited early; see {self.log_path}")
            try:
                httpx.get(f"{self.url}/_emulator/violations", timeout=1, verify=self.verify)
                return self
            except httpx.TransportError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the Azure AI Search emulator did not start within {timeout:g} s")

    def fault(self, **fault: Any) -> None:
        httpx.post(f"{self.url}/_emulator/faults", json=fault, timeout=5, verify=self.verify).raise_for_status()

    def violations(self) -> list[dict[str, Any]]:
        return httpx.get(f"{self.url}/_emulator/violations", timeout=5, verify=self.verify).json()

    def requests(self) -> list[dict[str, Any]]:
        return httpx.get(f"{self.url}/_emulator/requests", timeout=5, verify=self.verify).json()

    def reset(self) -> None:
        httpx.post(f"{self.url}/_emulator/reset", timeout=5, verify=self.verify).raise_for_status()

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
            self.process = None
        if self._log is not None:
            self._log.close()
            self._log = None

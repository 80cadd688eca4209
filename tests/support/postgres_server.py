"""A real PostgreSQL 15 cluster for tests: a temporary data directory, a free loopback port, trust auth.

Debian's server binaries (``postgresql-15``: ``/usr/lib/postgresql/15/bin``) are used in place; nothing is
installed or downloaded here (``make system-packages`` installs the package when missing). PostgreSQL
refuses to run as root, so as root the cluster runs as the system user ``kbtest`` (the one the
Elasticsearch nodes use). ``fsync=off`` and friends keep it fast: a test cluster, not a durable one.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from tests.support.elasticsearch_server import _ensure_user
from tests.support.openai_embeddings_server import free_port

BIN = Path(os.environ.get("KB_PG_BIN", "/usr/lib/postgresql/15/bin"))


class PostgresServer:
    """One temporary cluster; ``url(database)`` gives a SQLAlchemy URL for kb (driver pg8000)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.work = Path(tempfile.mkdtemp(prefix="kb-pg-"))
        self.data = self.work / "data"
        self.log = self.work / "postgres.log"
        self.user = _ensure_user()
        self.process: subprocess.Popen[bytes] | None = None

    def _as_user(self, command: list[str]) -> list[str]:
        return ["runuser", "-u", self.user, "--", *command] if self.user else command

    def _run(self, command: list[str]) -> str:
        result = subprocess.run(self._as_user(command), capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"command failed ({result.returncode}): {' '.join(command)}\n"
                               f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        return result.stdout

    def start(self) -> PostgresServer:
        if not (BIN / "postgres").exists():
            raise RuntimeError(f"PostgreSQL server binaries not found in {BIN}: install Debian's postgresql-15 "
                               "(make system-packages does, as root) or set KB_PG_BIN")
        if self.user:
            self.work.chmod(0o755)
            subprocess.run(["chown", "-R", self.user, str(self.work)], check=True)
        self._run([str(BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                   "--no-sync"])
        self._log_file = open(self.log, "ab")  # noqa: SIM115 - closed in stop()
        self._launch()
        return self

    def _launch(self) -> None:
        command = [str(BIN / "postgres"), "-D", str(self.data), "-p", str(self.port),
                   "-c", "listen_addresses=127.0.0.1",
                   "-c", f"unix_socket_directories={self.work}", "-c", "fsync=off", "-c", "synchronous_commit=off",
                   "-c", "full_page_writes=off", "-c", "max_connections=200"]
        self.process = subprocess.Popen(self._as_user(command), stdout=self._log_file, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        self._wait_ready()

    def shut_down(self) -> None:
        """A fast shutdown that keeps the data (an outage): ``start_again()`` brings the same cluster back."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            self.process.wait(timeout=30)

    def start_again(self) -> None:
        self._launch()

    def _wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                break
            ready = subprocess.run([str(BIN / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                                   capture_output=True)
            if ready.returncode == 0:
                return
            time.sleep(0.2)
        tail = self.log.read_text(errors="replace")[-3000:]
        self.stop()
        raise RuntimeError(f"PostgreSQL did not become ready on port {self.port}:\n{tail}")

    def create_database(self, name: str) -> str:
        """Create database ``name`` and return its SQLAlchemy URL."""
        subprocess.run([str(BIN / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name],
                       check=True, capture_output=True)
        return self.url(name)

    def create_kb_database(self, name: str) -> str:
        """Create database ``name`` at kb's schema head (what ``kb db upgrade`` does) and return its URL."""
        return kb_schema(self.create_database(name))

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+pg8000://postgres@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            # "fast" shutdown (SIGTERM, "smart", waits for clients); to the group: runuser does not pass SIGINT on
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if getattr(self, "_log_file", None):
            self._log_file.close()
        shutil.rmtree(self.work, ignore_errors=True)


def kb_schema(url: str) -> str:
    """Bring the database at ``url`` (PostgreSQL or ``sqlite:///``) to kb's schema head, as ``kb db upgrade`` does:
    the catalog's tables and the commit point's (the code no longer creates them). Returns ``url``."""
    from kb.catalog_db.engine import make_engine, normalise_url
    from kb.catalog_db.schema import upgrade

    engine = make_engine(normalise_url(url))
    try:
        upgrade(engine)
    finally:
        engine.dispose()
    return url

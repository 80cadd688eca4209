"""A multi-server deployment for tests, as an operator runs one: a PostgreSQL catalog (upgraded first with
``kb db upgrade``), a two-node Elasticsearch cluster (indexes of two shards with a replica each, so both nodes
hold data), the OpenAI-compatible stub model, and two ``kb serve`` processes with separate ``$KB_HOME``s on
loopback ports, one shared ``KB_FOLDERS_ROOT``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from kb.catalog import Catalog
from tests.support.elasticsearch_server import ElasticsearchCluster
from tests.support.kb_serve import KBServe
from tests.support.openai_embeddings_server import API_KEY, EmbeddingsServer
from tests.support.postgres_server import PostgresServer
from tests.support.server import ROOT


class Deployment:
    """``server_env``: more environment for the servers only (e.g. shorter job heartbeats)."""

    def __init__(self, root: Path, server_env: dict[str, str] | None = None) -> None:
        self.root = root
        self.server_env = server_env or {}
        self.postgres = PostgresServer().start()
        self.url = self.postgres.create_database("kb")
        self.folders = root / "shared-folders"
        self.es = ElasticsearchCluster()
        self.embeddings = EmbeddingsServer()
        self.servers: list[KBServe] = []

    def start(self) -> Deployment:
        self.es.start()
        self.embeddings.start()
        upgraded = self.kb("db", "upgrade", home=self.root / "operator")
        assert upgraded.returncode == 0, upgraded.stderr
        catalog = Catalog(self.url)
        catalog.save_connection("stub", "openai-compatible", {"base_url": self.embeddings.url, "api_key": API_KEY,
                                                              "models": ["text-embedding-3-small"]})
        catalog.save_connection("es", "elasticsearch", {"url": self.es.urls, "index_prefix": "multi-", "shards": 2,
                                                        "replicas": 1})
        catalog.save_connection("chroma", "chroma", {"url": "http://127.0.0.1:9"})  # refused before it is used
        catalog.close()
        for name in ("a", "b"):
            self.servers.append(KBServe(self.root / f"home-{name}", workers=1,
                                        env={**self.env(), **self.server_env}).start())
        return self

    def env(self) -> dict[str, str]:
        return {"KB_DATABASE_URL": self.url, "KB_FOLDERS_ROOT": str(self.folders)}

    def kb(self, *args: str, home: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(Path(sys.executable).parent / "kb"), *args], capture_output=True, text=True,
                              cwd=ROOT, timeout=120, env={**os.environ, "KB_HOME": str(home), **self.env()})

    def stop(self) -> None:
        for server in self.servers:
            server.stop()
        self.embeddings.stop()
        self.es.cleanup()
        self.postgres.stop()

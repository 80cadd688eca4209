"""Module fixtures for tests that run one scenario on the embedded and on the remote client and compare.

``server`` is a real ``kb serve`` (uvicorn) with its own home and the JSON request log on (so a test can look
for secrets in it); ``remote`` talks to it over HTTP with the admin key, and so does ``http`` (an httpx client
for tests of the REST API itself); ``embedded`` is an in-process client
with its own home and the same deterministic 6-dimension model the server registers. A test module takes them
with ``from tests.support.remote_pair import embedded, remote, server  # noqa: F401``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

import kb
from kb.client import EmbeddedClient
from tests.support.server import ADMIN_KEY, KBServer


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KBServer]:
    process = KBServer(tmp_path_factory.mktemp("pair-server-home"), env={"KB_LOG_LEVEL": "INFO"}).start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def remote(server: KBServer) -> Iterator[Any]:
    client = kb.api_client(url=server.url, api_key=ADMIN_KEY)
    yield client
    client.close()


@pytest.fixture(scope="module")
def http(server: KBServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedClient]:
    from langchain_core.embeddings import DeterministicFakeEmbedding

    from kb.custom_models import LangChainEmbeddingModel

    client = kb.api_client(home=tmp_path_factory.mktemp("pair-embedded-home"))
    client.register_embedding_model(LangChainEmbeddingModel("fake6", DeterministicFakeEmbedding(size=6)))
    yield client
    client.close()

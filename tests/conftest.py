"""Shared fixtures: a fresh kb home per test, the embedded client, a fake embedding model for fast tests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import kb  # noqa: E402
from kb.client import EmbeddedClient  # noqa: E402

FAKE_MODEL_NAME = "fake6"
FAKE_MODEL_ID = f"custom:{FAKE_MODEL_NAME}"


@pytest.fixture
def kb_home(tmp_path: Path) -> Path:
    return tmp_path / "kb-home"


@pytest.fixture
def client(kb_home: Path) -> Iterator[EmbeddedClient]:
    """An embedded client with LangChain's deterministic fake embeddings registered as ``custom:fake6``."""
    from langchain_core.embeddings import DeterministicFakeEmbedding

    from kb.custom_models import LangChainEmbeddingModel

    c = kb.api_client(home=kb_home)
    c.register_embedding_model(LangChainEmbeddingModel(FAKE_MODEL_NAME, DeterministicFakeEmbedding(size=6)))
    yield c
    c.close()

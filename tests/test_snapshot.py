"""Backup and restore: Parquet snapshots that round-trip FAISS → Chroma → FAISS without re-embedding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from langchain_core.embeddings import Embeddings

import kb
from api.cli_snapshot import main_export, main_import
from kb.custom_models import LangChainEmbeddingModel
from writers.snapshot import export_knowledge_bank, import_knowledge_bank


class RefusingEmbeddings(Embeddings):
    """Import must never embed: this model fails loudly if called for documents."""

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        raise AssertionError(f"import tried to embed {len(texts)} texts")

    def embed_query(self, text: str) -> list[float]:
        rng = np.random.default_rng(abs(hash(text)) % 2**32)
        return rng.normal(size=8).tolist()


def _search_all(core: object, queries: list[np.ndarray]) -> list[list[tuple[str, float]]]:
    return [[(r.id, round(r.score, 5)) for r in core.search(vector=q.tolist(), k=10)] for q in queries]  # type: ignore[attr-defined]


def test_round_trip_faiss_chroma_faiss(tmp_path: Path) -> None:
    client = kb.api_client(home=tmp_path / "home")
    client.register_embedding_model(LangChainEmbeddingModel("refusing", RefusingEmbeddings()))
    project = client.get_default_project()
    source = project.create_knowledge_bank("source", embedding_llm_id="custom:refusing",
                                           settings={"metadata_schema": {"n": "int", "tag": "string"}})
    core = source.as_core_knowledge_bank()
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(250, 8)).astype(np.float32)
    core.write_texts([f"text {i}" for i in range(250)], [{"n": i, "tag": "ab"[i % 2]} for i in range(250)],
                     [f"d{i}" for i in range(250)], vectors=vectors)
    queries = [rng.normal(size=8).astype(np.float32) for _ in range(10)]
    expected = _search_all(core, queries)
    first = export_knowledge_bank(core, tmp_path / "a.parquet", progress=False)
    assert first.rows == 250 and first.dimension == 8
    on_chroma = import_knowledge_bank(project, tmp_path / "a.parquet", "on-chroma", "CHROMA", progress=False)
    chroma_core = on_chroma.as_core_knowledge_bank()
    assert chroma_core.count() == 250 and chroma_core.count({"tag": "a"}) == 125
    assert _search_all(chroma_core, queries) == expected
    export_knowledge_bank(chroma_core, tmp_path / "b.parquet", progress=False)
    back = import_knowledge_bank(project, tmp_path / "b.parquet", "back", "FAISS", progress=False)
    back_core = back.as_core_knowledge_bank()
    assert _search_all(back_core, queries) == expected
    assert back_core.get_documents(["d7"])[0].metadata == {"n": 7, "tag": "b"}
    assert back.get_settings().get_metadata_schema() == {"n": "int", "tag": "string"}


def test_bad_snapshots_are_refused_and_leave_nothing(tmp_path: Path, client: kb.EmbeddedClient) -> None:
    project = client.get_default_project()
    not_parquet = tmp_path / "x.parquet"
    not_parquet.write_bytes(b"definitely not parquet")
    with pytest.raises(kb.InvalidInputError, match="not a readable Parquet"):
        import_knowledge_bank(project, not_parquet, progress=False)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": ["a"]}), tmp_path / "plain.parquet")
    with pytest.raises(kb.InvalidInputError, match="not a kb snapshot"):
        import_knowledge_bank(project, tmp_path / "plain.parquet", progress=False)
    assert project.list_knowledge_banks() == []


def test_cli_export_import(tmp_path: Path) -> None:
    home = tmp_path / "home"
    client = kb.api_client(home=home)
    core = client.get_default_project().create_knowledge_bank("cli").as_core_knowledge_bank()
    core.write_texts(["one", "two"], [{}, {}], ["1", "2"], vectors=np.eye(384, dtype=np.float32)[:2])
    assert main_export([str(tmp_path / "s.parquet"), "--kb", core.id, "--home", str(home)]) == 0
    assert main_import([str(tmp_path / "s.parquet"), "--name", "copy", "--home", str(home)]) == 0
    copy = [i for i in kb.api_client(home=home).get_default_project().list_knowledge_banks() if i.name == "copy"][0]
    assert copy.to_knowledge_bank().as_core_knowledge_bank().count() == 2
    assert main_import([str(tmp_path / "missing.parquet"), "--home", str(home)]) == 2

"""A full disk (a small tmpfs the test mounts): commits, ingestions and uploads fail whole with DiskFullError
(507 over REST), the previous commit stays readable and intact, and the next write succeeds once space is back."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from langchain_core.embeddings import DeterministicFakeEmbedding

import kb
from kb.custom_models import LangChainEmbeddingModel
from tests.conftest import FAKE_MODEL_ID, FAKE_MODEL_NAME
from tests.support.server import ADMIN_KEY, KBServer
from tests.support.tmpfs import small_disk
from writers.ingest import IngestOptions, ingest

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
BIG_TEXT = "word " * 20_000  # 100 KB of text per document


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs."""
    with small_disk(tmp_path, "8m") as mount:
        yield mount


def fill(disk: Path, leave: int = 150_000) -> Path:
    """Take all but ``leave`` bytes of the disk with one file; deleting it gives the space back."""
    stats = os.statvfs(disk)
    filler = disk / "filler"
    with open(filler, "ab") as handle:
        handle.write(b"\0" * max(0, stats.f_bavail * stats.f_frsize - leave))
    return filler


def _client(home: Path) -> kb.EmbeddedClient:
    client = kb.api_client(home=home)
    client.register_embedding_model(LangChainEmbeddingModel(FAKE_MODEL_NAME, DeterministicFakeEmbedding(size=6)))
    return client


def _snapshot(core: kb.core.CoreKnowledgeBank) -> tuple:  # type: ignore[name-defined]
    ids = sorted(d.id for d in core.get_documents([f"d{i}" for i in range(200)] + ["first", "second"]))
    return core.count(), ids, [r.id for r in core.search(query="first document", k=3)]


def test_a_commit_on_a_full_disk_fails_whole_and_the_next_succeeds(disk: Path) -> None:
    client = _client(disk / "home")
    core = client.get_default_project().create_knowledge_bank("full", embedding_llm_id=FAKE_MODEL_ID) \
        .as_core_knowledge_bank()
    core.write_texts(["first document", "second document"], [{"n": 1}, {"n": 2}], ["first", "second"])
    before = _snapshot(core)
    filler = fill(disk)
    with pytest.raises(kb.errors.DiskFullError, match="disk is full") as caught:
        with core.get_writer() as writer:
            writer.delete(["first"])
            core.write_texts([BIG_TEXT] * 30, [{}] * 30, [f"d{i}" for i in range(30)], tx=writer.transaction)
    assert caught.value.http_status == 507 and isinstance(caught.value, kb.errors.StoreError)
    assert _snapshot(core) == before  # the delete of the same writer was not committed either
    fresh = _client(disk / "home")  # a new process's view: the same, whole previous commit
    assert _snapshot(fresh.get_default_project().get_knowledge_bank(core.id).as_core_knowledge_bank()) == before
    filler.unlink()
    core.write_texts([BIG_TEXT] * 30, [{}] * 30, [f"d{i}" for i in range(30)])
    assert core.count() == 32
    staging = list((core.folder / "store" / "staging").glob("*")) if (core.folder / "store" / "staging").exists() \
        else []
    assert staging == []  # nothing half-written left behind
    client.close()
    fresh.close()


def test_an_ingestion_on_a_full_disk_stops_with_its_earlier_commits_and_resumes(disk: Path, tmp_path: Path) -> None:
    client = _client(disk / "home")
    core = client.get_default_project().create_knowledge_bank("ingested", embedding_llm_id=FAKE_MODEL_ID) \
        .as_core_knowledge_bank()
    rows = tmp_path / "rows.jsonl"  # the input lives elsewhere, as it would
    rows.write_text("\n".join(json.dumps({"id": f"r{i}", "text": f"row {i} " + BIG_TEXT}) for i in range(60)))
    options = IngestOptions(chunk_size=0, id_column="id", commit_every=10)
    filler = fill(disk, leave=2_500_000)
    with pytest.raises(kb.errors.DiskFullError):
        ingest(core, rows, options, progress=False)
    committed = core.count()
    assert committed % 10 == 0 and 0 <= committed < 60  # whole commits only
    assert all(d.page_content.startswith("row ") for d in core.get_documents([f"r{i}#0" for i in range(60)]))
    filler.unlink()
    report = ingest(core, rows, options, progress=False)
    assert core.count() == 60 and report.chunks_skipped == committed  # the earlier commits were kept
    client.close()


def test_an_upload_on_a_full_disk_leaves_no_partial_file(disk: Path) -> None:
    client = _client(disk / "home")
    folder = client.get_default_project().create_managed_folder("uploads")
    folder.upload_data("/kept.bin", b"k" * 1000)
    filler = fill(disk)
    with pytest.raises(kb.errors.DiskFullError, match="upload of 'big.bin'"):
        folder.upload_data("/big.bin", os.urandom(1_000_000))
    assert folder.list_paths() == ["/kept.bin"] and folder.read("/kept.bin") == b"k" * 1000
    assert [p.name for p in Path(folder.root).rglob("*") if p.name.startswith(".upload-")] == []
    filler.unlink()
    folder.upload_data("/big.bin", b"b" * 1_000_000)
    assert sorted(folder.list_paths()) == ["/big.bin", "/kept.bin"]
    client.close()


def test_rest_answers_507_on_a_full_disk_and_recovers(disk: Path, tmp_path: Path) -> None:
    server = KBServer(disk / "home")
    server.log = tmp_path / "server.log"  # the log must not be what fills the disk
    server.start()
    try:
        created = httpx.post(f"{server.url}/v1/projects/DEFAULT/knowledge-banks", headers=ADMIN,
                             json={"name": "rest-full", "embedding_llm_id": FAKE_MODEL_ID}).json()
        path = f"{server.url}/v1/projects/DEFAULT/knowledge-banks/{created['id']}"
        folder = httpx.post(f"{server.url}/v1/projects/DEFAULT/folders", headers=ADMIN, json={"name": "f"}).json()
        files = f"{server.url}/v1/projects/DEFAULT/folders/{folder['id']}/files"
        first = {"documents": [{"id": "first", "text": "first document"}]}
        assert httpx.post(f"{path}/documents", headers=ADMIN, json=first).status_code == 200
        big = {"documents": [{"id": f"d{i}", "text": BIG_TEXT} for i in range(30)]}
        jsonl = "\n".join(json.dumps({"id": f"r{i}", "text": BIG_TEXT}) for i in range(30)).encode()
        filler = fill(disk)
        answers = [httpx.post(f"{path}/documents", headers=ADMIN, json=big, timeout=60),
                   httpx.post(f"{path}/commits", headers=ADMIN, timeout=60,
                              json={"deletes": ["first"], "upserts": big["documents"]}),
                   httpx.post(f"{path}/ingest", headers=ADMIN, content=jsonl, timeout=60,
                              params={"format": "jsonl", "id_column": "id", "chunk_size": 0}),
                   httpx.put(f"{files}/big.bin", headers=ADMIN, content=b"x" * 1_000_000, timeout=60)]
        for answer in answers:
            assert answer.status_code == 507, answer.text
            assert answer.json()["error"]["code"] == "insufficient_storage"
            assert "disk is full" in answer.json()["error"]["message"]
        assert httpx.get(f"{path}/count", headers=ADMIN).json() == {"count": 1}
        searched = httpx.post(f"{path}/search", headers=ADMIN, json={"query": "first", "k": 5})
        assert searched.status_code == 200, searched.text  # reads need no space
        assert [r["id"] for r in searched.json()["results"]] == ["first"]
        assert httpx.get(files, headers=ADMIN).json() == []
        metrics = httpx.get(f"{server.url}/metrics", headers=ADMIN).text
        assert 'kb_store_errors_total{code="insufficient_storage"' in metrics
        filler.unlink()
        assert httpx.post(f"{path}/documents", headers=ADMIN, json=big, timeout=60).status_code == 200
        assert httpx.put(f"{files}/big.bin", headers=ADMIN, content=b"x" * 1_000_000).status_code == 201
        assert httpx.get(f"{path}/count", headers=ADMIN).json() == {"count": 31}
    finally:
        server.stop()

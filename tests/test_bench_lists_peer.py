"""kb bench's peer for the path LangChain users take (``kb-flat-lists``: lists of floats through
``add_embeddings``, several batches) holds exactly what the corpus holds, and the harness's work inside a peer's
ingestion (the vectors turned into lists) is left out of that peer's seconds."""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import pytest

from benchmarks import corpus as bench_corpus
from benchmarks import peer_run, peers


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory: pytest.TempPathFactory) -> bench_corpus.Corpus:
    return bench_corpus.load(250, cache=tmp_path_factory.mktemp("bench-corpus"))


def test_lists_peer_writes_the_corpus_in_batches_as_langchain_faiss_does(
        small_corpus: bench_corpus.Corpus, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(peers.KBListsPeer, "batch", 100)  # three add_embeddings calls, the last one short
    calls: list[int] = []
    original = peers.KBListsPeer.vector_lists

    def counted(self: peers.Peer, corpus: bench_corpus.Corpus, start: int, end: int) -> list[list[float]]:
        lists = original(self, corpus, start, end)
        assert type(lists[0]) is list and type(lists[0][0]) is float  # what LangChain callers hold
        calls.append(end - start)
        return lists

    monkeypatch.setattr(peers.Peer, "vector_lists", counted)
    lists_peer = peers.make("kb-flat-lists")
    lists_peer.ingest(small_corpus, tmp_path / "kb")
    assert calls[:3] == [100, 100, 50]
    assert lists_peer.harness_seconds > 0
    langchain = peers.make("langchain-faiss")
    langchain.ingest(small_corpus, tmp_path / "langchain")
    assert langchain.harness_seconds > 0  # its lists are the harness's work too

    reader = peers.make("kb-flat-lists")
    reader.open(tmp_path / "kb")
    langchain.open(tmp_path / "langchain")
    try:
        assert reader.core.count() == small_corpus.size
        for row in (0, 99, 100, 249):  # either side of a batch boundary, and the last chunk
            vector = np.asarray(small_corpus.vectors[row])
            assert reader.ids(reader.search(vector, 3))[0] == f"chunk-{row}"
            assert langchain.ids(langchain.search(vector, 3))[0] == f"chunk-{row}"
        (document,) = reader.core.get_documents(["chunk-137"])
        assert document.page_content == small_corpus.texts[137]
        assert document.metadata == small_corpus.metadatas()[137]
    finally:
        reader.client.close()


class _HarnessHeavyPeer(peers.Peer):
    name = "harness-heavy"

    def ingest(self, corpus: bench_corpus.Corpus, folder: Path) -> None:
        folder.mkdir(parents=True)
        (folder / "data").write_bytes(b"x" * 250)
        self.harness_seconds = 2.0


def test_peer_seconds_leave_out_the_harness_work(small_corpus: bench_corpus.Corpus, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter([100.0, 105.0, 105.5])
    monkeypatch.setattr(peer_run, "load", lambda size: small_corpus)
    monkeypatch.setattr(peer_run.time, "perf_counter", lambda: next(clock))
    try:
        out = peer_run.ingest(_HarnessHeavyPeer(), small_corpus.size, tmp_path / "peer")
    finally:
        gc.unfreeze()
    assert out["seconds"] == 3.0 and out["harness_seconds"] == 2.0  # 5 s in ingest, 2 of them the harness's
    assert out["chunks_per_second"] == small_corpus.size / 3.0
    assert out["settle_seconds"] == 0.5 and out["disk_bytes_per_chunk"] == 1.0


def test_langchain_ingest_writes_real_chunks_through_each_peer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmarks import langchain_ingest

    if not (langchain_ingest.SCIFACT / "corpus-all-MiniLM-L6-v2.npy").exists():
        pytest.skip("SciFact's vectors are not on this machine")
    chunks, sources = langchain_ingest.debian_chunks(300)
    assert len(chunks) == len(sources) == 300
    counts = [len(chunk.split()) for chunk in chunks]
    assert all(31 <= n <= 60 for n in counts) and counts.count(60) > 150  # a file's last chunk may be shorter
    monkeypatch.setattr(langchain_ingest, "BATCH", 120)  # three batches, the last one short
    for peer in langchain_ingest.PEERS:
        out = langchain_ingest.run_one(peer, 300, tmp_path / peer)  # kb's runs check their count themselves
        assert out["seconds"] > 0
    from langchain_community.vectorstores import FAISS

    from benchmarks.peers import PrecomputedEmbeddings

    saved = FAISS.load_local(str(tmp_path / "langchain-faiss"), PrecomputedEmbeddings(),
                             allow_dangerous_deserialization=True)  # written by this test just now
    assert saved.index.ntotal == 300

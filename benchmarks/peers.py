"""The systems compared by ``kb bench``, behind one small interface: ingest a corpus, open it cold, search it.

- ``kb-flat`` / ``kb-hnsw``: a kb knowledge bank (FAISS store, exact or HNSW, with its BM25 index), written through
  ``writer.as_langchain_vectorstore().add_embeddings`` and searched through its LangChain vector store;
  its keyword and hybrid searches through ``core.search`` with the query vector given.
- ``kb-flat-vectors``: a vector-only kb knowledge bank (``keyword.index`` false: no BM25 index), the
  like-for-like peer of LangChain's FAISS for ingestion.
- ``kb-flat-lists``: kb-flat's knowledge bank written the way a LangChain user writes it: vectors as Python lists
  of floats (what embedding APIs return) through ``add_embeddings``, in batches of 10,000, in a process that
  imported only ``kb`` and LangChain before the clock (kb's keyword kernels and embedding modules load during
  its first write, as in a user's script). Ingestion only (it searches as kb-flat does).
- ``faiss-flat`` / ``faiss-hnsw``: raw faiss, the floor. Searched on kb's own index file too
  (``raw_on_kb_index``), so kb's overhead is measured on the very same index.
- ``langchain-faiss``: langchain-community's FAISS, ``add_embeddings`` (via ``from_embeddings``) + ``save_local``.

LangChain takes vectors as lists of floats, and so does ``kb-flat-lists``: the corpus' rows are turned into lists
a batch at a time (all 1M at once would not fit in memory), and that conversion is the harness's work, timed
apart and left out of a peer's seconds (``harness_seconds``), as the decoding of texts and metadata is.
- ``langchain-chroma``: langchain-chroma over an embedded Chroma (PersistentClient), embeddings precomputed.

Every peer gets the same vectors, texts and metadata, and the same queries.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from langchain_core.embeddings import Embeddings

import kb
from benchmarks.corpus import Corpus
from stores.sqlite.background_io import fsync_path

# ef_search 192 (kb's default): at 1M chunks (M 32, ef_construction 64) ef_search 128 gave recall@10 0.941,
# 160 gave 0.958, 192 gave 0.968 (p50 ~1.1 ms), 256 gave 0.983 (~1.4 ms)
HNSW = {"m": 32, "ef_construction": 64, "ef_search": 192}
FILTER = {"category": "c3"}  # one in twelve chunks
BATCH = 20_000
LISTS_BATCH = 10_000  # kb-flat-lists: the batch size of the user report it reproduces (issue 27)


def fsync_tree(folder: Path) -> None:
    for path in [*folder.rglob("*"), folder]:
        fsync_path(path)


class PrecomputedEmbeddings(Embeddings):
    """Answers with the corpus' vectors (looked up by text), so peers that only take texts skip the model."""

    def __init__(self, corpus: Corpus | None = None) -> None:
        self.rows = {text: i for i, text in enumerate(corpus.texts)} if corpus is not None else {}
        self.vectors = corpus.vectors if corpus is not None else None

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        assert self.vectors is not None
        return np.asarray(self.vectors[[self.rows[t] for t in texts]]).tolist()

    def embed_query(self, text: str) -> list[float]:
        raise RuntimeError("benchmark queries are vectors")


class Peer:
    name = ""
    modules: tuple[str, ...] = ()  # imported before any clock starts
    harness_seconds = 0.0  # spent inside ``ingest`` on the harness's work (vectors into lists): not the peer's

    def vector_lists(self, corpus: Corpus, start: int, end: int) -> list[list[float]]:
        """Rows ``start:end`` as lists of floats, the form LangChain callers hold; the time is the harness's."""
        started = time.perf_counter()
        lists = np.asarray(corpus.vectors[start:end]).tolist()
        self.harness_seconds += time.perf_counter() - started
        return lists

    def ingest(self, corpus: Corpus, folder: Path) -> None:
        raise NotImplementedError

    def settle(self) -> None:
        """Wait for work an ingestion or an open left running after it returned (off the clock, timed apart)."""

    def open(self, folder: Path) -> None:
        raise NotImplementedError

    def search(self, vector: np.ndarray, k: int) -> Any:
        raise NotImplementedError

    def filtered(self, vector: np.ndarray, k: int) -> Any:
        raise NotImplementedError

    def ids(self, result: Any) -> list[str]:
        return [doc.id for doc, _ in result]


class KBPeer(Peer):
    # kb.embeddings and the modules after it: a write asks the knowledge bank's embedding model for its dimension
    modules = ("kb", "kb.client", "kb.core", "stores.langchain", "writers.writer", "stores.faiss.store",
               "stores.keyword.kernels",
               "langchain_community.vectorstores", "kb.embeddings", "kb.local_minilm", "kb.embedding_cache", "kb.llm")

    def __init__(self, index_type: str, keyword_index: bool = True) -> None:
        self.index_type = index_type
        self.keyword_index = keyword_index
        self.name = f"kb-{index_type.lower()}" + ("" if keyword_index else "-vectors")

    def _settings(self) -> dict[str, Any]:
        index: dict[str, Any] = {"type": self.index_type}
        if self.index_type == "HNSW":
            index.update(HNSW)
        return {"store": {"index": index}, "keyword": {"index": self.keyword_index}}

    batch = BATCH

    def vectors_of(self, corpus: Corpus, start: int, end: int) -> Any:
        """The vectors as this peer hands them to ``add_embeddings``: numpy rows."""
        return np.asarray(corpus.vectors[start:end])

    def ingest(self, corpus: Corpus, folder: Path) -> None:
        client = kb.api_client(home=folder)
        core = client.get_default_project().create_knowledge_bank("bench", settings=self._settings()) \
            .as_core_knowledge_bank()
        texts, metadatas, ids = corpus.texts, corpus.metadatas(), corpus.ids
        with core.get_writer() as writer:
            store = writer.as_langchain_vectorstore()
            for start in range(0, corpus.size, self.batch):
                end = min(corpus.size, start + self.batch)
                store.add_embeddings(zip(texts[start:end], self.vectors_of(corpus, start, end), strict=True),
                                     metadatas[start:end], ids=ids[start:end])
        client.close()

    def settle(self) -> None:
        # The commit left the copy of its WAL into the database file to a checkpoint thread
        # (stores.sqlite.wal_checkpoint): the data is durable already, the folder's size is not final until it ends.
        # A loaded index is moved onto huge pages by a thread of its own (stores.faiss.huge_pages): searches run
        # meanwhile, faster once it is done.
        for thread in threading.enumerate():
            if thread.name in ("kb-wal-checkpoint", "kb-huge-pages"):
                thread.join()

    def open(self, folder: Path) -> None:
        self.client = kb.api_client(home=folder)
        handle = self.client.get_default_project().list_knowledge_banks(as_type="objects")[0]
        self.core = handle.as_core_knowledge_bank()
        self.store = self.core.as_langchain_vectorstore()

    def search(self, vector: np.ndarray, k: int) -> Any:
        return self.store.similarity_search_with_score_by_vector(vector, k=k)

    def filtered(self, vector: np.ndarray, k: int) -> Any:
        return self.store.similarity_search_with_score_by_vector(vector, k=k, filter=FILTER)

    def hybrid_search(self, text: str, vector: np.ndarray, k: int) -> Any:
        return self.core.search(query=text, vector=vector, k=k, search_type="hybrid")

    def keyword_search(self, text: str, k: int) -> Any:
        return self.core.search(query=text, k=k, search_type="keyword")

    def served_index(self) -> Any:
        """The FAISS index object this peer's searches run on (raw faiss is timed on it too)."""
        return self.core.driver.committed_index()


class KBListsPeer(KBPeer):
    """kb-flat written as a LangChain user writes it (see the module docstring)."""

    modules = ("kb", "langchain_community.vectorstores")  # what a user's script imports; the rest loads in the write

    def __init__(self) -> None:
        super().__init__("FLAT")
        self.name = "kb-flat-lists"

    batch = LISTS_BATCH

    def vectors_of(self, corpus: Corpus, start: int, end: int) -> Any:
        return self.vector_lists(corpus, start, end)  # lists of floats, as a user's script has them


class RawFaissPeer(Peer):
    def __init__(self, index_type: str, first_id: int = 0) -> None:
        self.index_type = index_type
        self.name = f"faiss-{index_type.lower()}"
        self.first_id = first_id  # kb's index ids are SQLite rowids, which start at 1

    def ingest(self, corpus: Corpus, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        if self.index_type == "HNSW":
            inner = faiss.IndexHNSWFlat(corpus.vectors.shape[1], HNSW["m"], faiss.METRIC_INNER_PRODUCT)
            inner.hnsw.efConstruction = HNSW["ef_construction"]
        else:
            inner = faiss.IndexFlatIP(corpus.vectors.shape[1])
        index = faiss.IndexIDMap2(inner)
        for start in range(0, corpus.size, BATCH):
            end = min(corpus.size, start + BATCH)
            index.add_with_ids(np.asarray(corpus.vectors[start:end]), np.arange(start, end, dtype=np.int64))
        faiss.write_index(index, str(folder / "index.faiss"))
        fsync_tree(folder)

    def open(self, folder: Path) -> None:
        self.open_file(folder / "index.faiss")

    def open_file(self, path: Path) -> None:
        self.index = faiss.read_index(str(path))
        if self.index_type == "HNSW":
            faiss.downcast_index(self.index.index).hnsw.efSearch = HNSW["ef_search"]

    def use_index(self, index: Any) -> None:
        """Search an index already in memory (kb's own: then both peers read the same bytes)."""
        self.index = index

    def search(self, vector: np.ndarray, k: int) -> Any:
        return self.index.search(vector.reshape(1, -1), k)

    def ids(self, result: Any) -> list[str]:
        return [f"chunk-{i - self.first_id}" for i in result[1][0].tolist()]


class LangChainFaissPeer(Peer):
    name = "langchain-faiss"
    modules = ("langchain_community.vectorstores", "langchain_community.vectorstores.faiss",
               "langchain_community.docstore.in_memory")

    def ingest(self, corpus: Corpus, folder: Path) -> None:
        from langchain_community.vectorstores import FAISS

        # In batches, as for kb: LangChain takes vectors as lists of floats, and the whole 1M corpus as one
        # list of lists (24 bytes a float) went past the machine's 24 GiB.
        texts, metadatas, ids = corpus.texts, corpus.metadatas(), corpus.ids
        store = None
        for start in range(0, corpus.size, BATCH):
            end = min(corpus.size, start + BATCH)
            pairs = list(zip(texts[start:end], self.vector_lists(corpus, start, end), strict=True))
            if store is None:
                store = FAISS.from_embeddings(pairs, PrecomputedEmbeddings(), metadatas=metadatas[start:end],
                                              ids=ids[start:end])
            else:
                store.add_embeddings(pairs, metadatas=metadatas[start:end], ids=ids[start:end])
        assert store is not None
        store.save_local(str(folder))

    def open(self, folder: Path) -> None:
        from langchain_community.vectorstores import FAISS

        # LangChain's own format is a pickle; this benchmark only reads back what it just wrote
        self.store = FAISS.load_local(str(folder), PrecomputedEmbeddings(), allow_dangerous_deserialization=True)

    def search(self, vector: np.ndarray, k: int) -> Any:
        return self.store.similarity_search_with_score_by_vector(vector, k=k)

    def filtered(self, vector: np.ndarray, k: int) -> Any:
        return self.store.similarity_search_with_score_by_vector(vector, k=k, filter=FILTER, fetch_k=200)


class LangChainChromaPeer(Peer):
    name = "langchain-chroma"
    modules = ("langchain_chroma", "chromadb")

    def ingest(self, corpus: Corpus, folder: Path) -> None:
        from langchain_chroma import Chroma

        store = Chroma("bench", PrecomputedEmbeddings(corpus), persist_directory=str(folder),
                       collection_metadata={"hnsw:space": "cosine"})
        texts, metadatas, ids = corpus.texts, corpus.metadatas(), corpus.ids
        for start in range(0, corpus.size, 5000):  # under Chroma's maximum batch size
            end = min(corpus.size, start + 5000)
            store.add_texts(texts[start:end], metadatas[start:end], ids=ids[start:end])

    def open(self, folder: Path) -> None:
        from langchain_chroma import Chroma

        self.store = Chroma("bench", PrecomputedEmbeddings(), persist_directory=str(folder))

    def search(self, vector: np.ndarray, k: int) -> Any:
        return self.store.similarity_search_by_vector_with_relevance_scores(vector.tolist(), k=k)

    def filtered(self, vector: np.ndarray, k: int) -> Any:
        return self.store.similarity_search_by_vector_with_relevance_scores(vector.tolist(), k=k, filter=FILTER)


def make(name: str) -> Peer:
    peers: dict[str, Any] = {
        "kb-flat": lambda: KBPeer("FLAT"), "kb-hnsw": lambda: KBPeer("HNSW"),
        "kb-flat-vectors": lambda: KBPeer("FLAT", keyword_index=False),  # vector-only, like LangChain's FAISS
        "kb-flat-lists": KBListsPeer,  # lists of floats through LangChain's API, as users write
        "faiss-flat": lambda: RawFaissPeer("FLAT"), "faiss-hnsw": lambda: RawFaissPeer("HNSW"),
        "langchain-faiss": LangChainFaissPeer, "langchain-chroma": LangChainChromaPeer,
    }
    if name not in peers:
        raise SystemExit(f"unknown peer {name!r}; choose from {', '.join(peers)}")
    return peers[name]()

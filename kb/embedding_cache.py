"""Persistent embedding cache and the cached embedder every knowledge bank uses.

Vectors are stored as raw float32 bytes in SQLite (WAL, one connection per
thread), keyed by (model id, sha256 of the text): writing the same text twice
never embeds it twice, across processes and restarts. Query embeddings also
go through a small in-memory LRU, so repeated queries cost a dict lookup.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from kb.embeddings import EmbeddingModel
from kb.errors import EmbeddingError

_BATCH = 500


def text_key(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


class EmbeddingCache:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._conn().execute(
            "CREATE TABLE IF NOT EXISTS embeddings (model TEXT NOT NULL, key BLOB NOT NULL, dim INTEGER NOT NULL, "
            "vector BLOB NOT NULL, PRIMARY KEY (model, key)) WITHOUT ROWID"
        )

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=60.0, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")  # a lost cache entry is only re-embedded
            self._local.conn = conn
        return conn

    def get_many(self, model_id: str, texts: Sequence[str]) -> list[np.ndarray | None]:
        keys = [text_key(t) for t in texts]
        found: dict[bytes, np.ndarray] = {}
        conn = self._conn()
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), _BATCH):
            part = unique[start : start + _BATCH]
            marks = ",".join("?" * len(part))
            for key, dim, blob in conn.execute(
                f"SELECT key, dim, vector FROM embeddings WHERE model = ? AND key IN ({marks})", [model_id, *part]
            ):
                vector = np.frombuffer(blob, dtype=np.float32)
                if vector.size == dim:
                    found[key] = vector
        return [found.get(k) for k in keys]

    def put_many(self, model_id: str, texts: Sequence[str], vectors: np.ndarray) -> None:
        rows = [(model_id, text_key(t), int(v.size), np.ascontiguousarray(v, dtype=np.float32).tobytes())
                for t, v in zip(texts, vectors, strict=True)]
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany("INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?, ?)", rows)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")


class CachedEmbedder:
    """Embeds through the cache; counts hits and misses (texts actually sent to the model)."""

    def __init__(self, model: EmbeddingModel, cache: EmbeddingCache, lru_size: int = 4096) -> None:
        self.model = model
        self.cache = cache
        self.hits = 0
        self.misses = 0
        self._lru: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lru_size = lru_size
        self._lock = threading.Lock()

    @property
    def model_id(self) -> str:
        return self.model.id

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.model.dimension or 0), dtype=np.float32)
        cached = self.cache.get_many(self.model.id, texts)
        missing = list(dict.fromkeys(t for t, v in zip(texts, cached, strict=True) if v is None))
        fresh: dict[str, np.ndarray] = {}
        if missing:
            vectors = np.asarray(self.model.embed(missing), dtype=np.float32)
            if vectors.shape[0] != len(missing):
                raise EmbeddingError(f"embedding model {self.model.id} returned {vectors.shape[0]} vectors "
                                     f"for {len(missing)} texts")
            self.cache.put_many(self.model.id, missing, vectors)
            fresh = dict(zip(missing, vectors, strict=True))
        with self._lock:
            self.misses += len(missing)
            self.hits += len(texts) - len(missing)
        rows = [v if v is not None else fresh[t] for t, v in zip(texts, cached, strict=True)]
        dims = {r.size for r in rows}
        if len(dims) != 1:
            raise EmbeddingError(f"embedding model {self.model.id} produced vectors of different sizes {sorted(dims)}")
        return np.stack(rows).astype(np.float32, copy=False)

    def embed_query(self, text: str) -> np.ndarray:
        with self._lock:
            vector = self._lru.get(text)
            if vector is not None:
                self._lru.move_to_end(text)
                self.hits += 1
                return vector
        vector = self.embed_documents([text])[0]
        with self._lock:
            self._lru[text] = vector
            if len(self._lru) > self._lru_size:
                self._lru.popitem(last=False)
        return vector

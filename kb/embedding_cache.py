"""Persistent embedding cache and the cached embedder every knowledge bank uses.

Vectors are stored as raw float32 bytes in SQLite (WAL, one connection per
thread), keyed by (model id, sha256 of the text): writing the same text twice
never embeds it twice, across processes and restarts. Inside a process, texts
being embedded right now are tracked too, so two threads writing the same text
at the same moment still call the model once. Query embeddings also go through
a small in-memory LRU, so repeated queries cost a dict lookup.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from kb.embeddings import EmbeddingModel
from kb_base import events
from kb_base.disk import is_disk_full
from kb_base.errors import EmbeddingError, InvalidInputError
from kb_base.input_checks import string_problem

_BATCH = 500  # keys per IN (...) query: well under SQLite's bound-parameter limit

log = logging.getLogger(__name__)


def text_key(text: str) -> bytes:
    # surrogatepass: a lone surrogate (from a badly decoded file) must hash, not crash the write
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


class InFlight:
    """The (model, text key) pairs some thread of this process is embedding right now."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[tuple[str, bytes], threading.Event] = {}

    def claim(self, model_id: str, keys: Sequence[bytes]) -> tuple[list[bytes], list[threading.Event], threading.Event]:
        """Split keys into those the caller now owns and the events of those another thread owns."""
        done = threading.Event()
        mine: list[bytes] = []
        theirs: list[threading.Event] = []
        with self._lock:
            for key in keys:
                event = self._pending.get((model_id, key))
                if event is None:
                    self._pending[(model_id, key)] = done
                    mine.append(key)
                else:
                    theirs.append(event)
        return mine, theirs, done

    def release(self, model_id: str, keys: Sequence[bytes], done: threading.Event) -> None:
        with self._lock:
            for key in keys:
                self._pending.pop((model_id, key), None)
        done.set()


class EmbeddingCache:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self.inflight = InFlight()
        # this process's writers queue here rather than in SQLite's busy handler, which sleeps 1-100 ms when the
        # lock is taken: calls answered by one batched model run all write at the same moment
        self._write_lock = threading.Lock()
        self._conn().execute(
            "CREATE TABLE IF NOT EXISTS embeddings (model TEXT NOT NULL, key BLOB NOT NULL, dim INTEGER NOT NULL, "
            "vector BLOB NOT NULL, PRIMARY KEY (model, key)) WITHOUT ROWID"
        )

    def _conn(self) -> sqlite3.Connection:
        # SQLite connections must not be used by two threads at once: one per thread, closed when it ends
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=60.0, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")  # a cache entry lost in a power cut is only re-embedded
            self._local.conn = conn
        return conn

    def close(self) -> None:
        """Close the calling thread's connection (other threads' close when they end)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def get_many(self, model_id: str, texts: Sequence[str]) -> list[np.ndarray | None]:
        """The cached vector of each text (read-only float32), or None where there is none."""
        return self.get_keys(model_id, [text_key(t) for t in texts])

    def get_keys(self, model_id: str, keys: Sequence[bytes]) -> list[np.ndarray | None]:
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
                if vector.size == dim:  # anything else is a damaged row: treat it as a miss, it gets rewritten
                    found[key] = vector
        return [found.get(k) for k in keys]

    def put_many(self, model_id: str, texts: Sequence[str], vectors: np.ndarray) -> None:
        self.put_keys(model_id, [text_key(t) for t in texts], vectors)

    def put_keys(self, model_id: str, keys: Sequence[bytes], vectors: np.ndarray) -> None:
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[0] != len(keys):
            raise InvalidInputError(f"put_many: {len(keys)} texts but vectors of shape {vectors.shape}")
        rows = [(model_id, key, int(v.size), np.ascontiguousarray(v).tobytes())
                for key, v in zip(keys, vectors, strict=True)]
        conn = self._conn()
        try:
            with self._write_lock:
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany("INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?, ?)", rows)
                conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if not is_disk_full(exc):
                raise
            # a cache that cannot grow must not fail the search or write it serves: the texts are embedded again
            log.warning("embedding cache %s: disk full, %d vectors not cached", self.path, len(rows))


class CachedEmbedder:
    """Embeds through the cache; ``misses`` counts texts actually sent to the model, ``hits`` the others."""

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
        """float32 (len(texts), d), rows in input order; only texts in neither the cache nor flight are embedded."""
        texts = list(texts)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise InvalidInputError(f"text #{i} to embed is a {type(text).__name__}, not a string")
            problem = string_problem(text)
            if problem is not None:  # the model would fail on it, and answer as if it were down
                raise InvalidInputError(f"text #{i} to embed {problem}")
        if not texts:
            return np.zeros((0, self.model.dimension or 0), dtype=np.float32)
        keys = [text_key(t) for t in texts]
        rows: dict[bytes, np.ndarray] = {k: v for k, v in zip(keys, self.cache.get_keys(self.model_id, keys),
                                                              strict=True) if v is not None}
        first_text = dict(zip(keys, texts, strict=True))  # equal keys mean equal texts
        missing = [k for k in dict.fromkeys(keys) if k not in rows]
        sent = 0
        while missing:
            sent += self._embed_missing(missing, first_text, rows)
            # whatever is still missing was owned by a thread that failed: try it here
            missing = [k for k in missing if k not in rows]
        with self._lock:
            self.misses += sent
            self.hits += len(texts) - sent
        events.emit("embedding", model=self.model_id, hits=len(texts) - sent, misses=sent)
        out = [rows[k] for k in keys]
        dims = {r.size for r in out}
        if len(dims) != 1:
            raise EmbeddingError(f"embedding model {self.model_id} produced vectors of different sizes {sorted(dims)}")
        return np.stack(out).astype(np.float32, copy=False)

    def _embed_missing(self, missing: list[bytes], first_text: dict[bytes, str], rows: dict[bytes, np.ndarray]) -> int:
        """Embed the keys no other thread is embedding, wait for the rest; returns how many texts were sent."""
        inflight = self.cache.inflight
        mine, theirs, done = inflight.claim(self.model_id, missing)
        sent = 0
        try:
            if mine:
                # another thread may have finished these between our cache read and the claim
                for key, vector in zip(mine, self.cache.get_keys(self.model_id, mine), strict=True):
                    if vector is not None:
                        rows[key] = vector
                todo = [k for k in mine if k not in rows]
                if todo:
                    started = time.perf_counter()
                    vectors = np.asarray(self.model.embed([first_text[k] for k in todo]), dtype=np.float32)
                    events.emit("model_call", model=self.model_id, texts=len(todo),
                                seconds=time.perf_counter() - started)
                    if vectors.ndim != 2 or vectors.shape[0] != len(todo):
                        raise EmbeddingError(f"embedding model {self.model_id} returned an array of shape "
                                             f"{vectors.shape} for {len(todo)} texts")
                    self.cache.put_keys(self.model_id, todo, vectors)
                    rows.update(zip(todo, vectors, strict=True))
                    sent = len(todo)
        finally:
            inflight.release(self.model_id, mine, done)
        if theirs:
            for event in set(theirs):
                event.wait()
            waited = [k for k in missing if k not in rows]
            for key, vector in zip(waited, self.cache.get_keys(self.model_id, waited), strict=True):
                if vector is not None:
                    rows[key] = vector
        return sent

    def embed_query(self, text: str) -> np.ndarray:
        """One float32 vector; a fresh copy, so callers may normalise it in place without touching the LRU."""
        if not isinstance(text, str):
            raise InvalidInputError(f"the query to embed is a {type(text).__name__}, not a string")
        with self._lock:
            cached = self._lru.get(text)
            if cached is not None:
                self._lru.move_to_end(text)
                self.hits += 1
                cached = cached.copy()
        if cached is not None:
            events.emit("embedding", model=self.model_id, hits=1, misses=0)
            return cached
        vector = self.embed_documents([text])[0].copy()
        with self._lock:
            self._lru[text] = vector
            if len(self._lru) > self._lru_size:
                self._lru.popitem(last=False)
        return vector.copy()

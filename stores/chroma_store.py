"""Chroma driver: embedded (PersistentClient in the KB folder) or a Chroma server (HttpClient).

Chroma has no multi-record transactions, so kb keeps its guarantees with
generations. Every physical Chroma record carries ``__kb_gen`` (the
generation that wrote it) and ``__kb_del`` (the generation that deleted or
replaced it, or "never"); its Chroma id is ``<gen>:<id>``. A reader at
committed generation C sees exactly the records with ``__kb_gen <= C`` and
``__kb_del > C``. A writer at generation G = C + 1 adds new physical records
and marks replaced ones ``__kb_del = G``: invisible to readers until the
commit point. The commit point is one SQLite transaction in the KB folder
(``chroma-meta.sqlite``: the committed generation, the id → physical record
map and the BM25 keyword index), so vectors, keywords and visibility flip
together. A crash before it leaves only invisible leftovers, removed by the
next writer; a rollback removes them at once. Cost: a replace or delete is an
extra metadata update per record, and physical records replaced in
generation G are vacuumed one commit later (readers still on G-1 need them).

Filters: kb's language maps onto Chroma's ``where`` (``$ne``/``$nin`` match a
missing key in both); ``$not`` is pushed down by De Morgan; what Chroma cannot
express (ordering of strings, negated ordering) is a FilterError. Keyword
search uses kb's BM25 index (Chroma 1.5 has no local BM25 ranking; its
``$contains`` is a filter, not a ranking).
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kb.errors import FilterError, InvalidInputError, StoreUnavailableError, WriterClosedError
from kb.filters import And, Comparison, Filter, Not, Or, matches
from stores.base import (
    Capabilities,
    DelegatingReader,
    Hit,
    Record,
    StoreContext,
    StoreReader,
    StoreTransaction,
    VectorStoreDriver,
    acquire_writer_lock,
    check_query_vector,
    check_records,
    normalise,
)
from stores.keyword_index import KeywordIndex
from stores.sqlite_meta import ThreadConnections, connect_durable, create_meta, read_meta

NEVER = 2**62
SYSTEM = ("__kb_id", "__kb_gen", "__kb_del", "__kb_json", "__kb_ints")
_BATCH = 500


def to_where(flt: Filter | None) -> dict[str, Any] | None:
    """kb filter → Chroma ``where``; FilterError for what Chroma cannot express exactly."""
    if flt is None:
        return None
    return _where(flt, negate=False)


def _operand(value: Any) -> Any:
    # Integers are stored as floats (see _encode), so numeric operands are compared as floats too.
    return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _kind(value: Any) -> str:
    return "bool" if isinstance(value, bool) else "number" if isinstance(value, int | float) else "str"


def _where(flt: Filter, negate: bool) -> dict[str, Any]:
    if isinstance(flt, Not):
        return _where(flt.clause, not negate)
    if isinstance(flt, And | Or):
        parts = [_where(c, negate) for c in flt.clauses]
        use_and = isinstance(flt, And) != negate  # De Morgan
        return parts[0] if len(parts) == 1 else {"$and" if use_and else "$or": parts}
    assert isinstance(flt, Comparison)
    op = flt.op
    if negate:
        flipped = {"$eq": "$ne", "$ne": "$eq", "$in": "$nin", "$nin": "$in"}.get(op)
        if flipped is None:
            raise FilterError(f"Chroma cannot express a negated {op} on {flt.key!r} exactly (missing keys would "
                              "be lost); rewrite the filter without $not around an ordering")
        op = flipped
    if op in ("$gt", "$gte", "$lt", "$lte") and isinstance(flt.value, str):
        raise FilterError(f"Chroma cannot order strings ({op} on {flt.key!r}); filter on numbers instead")
    if op in ("$in", "$nin"):
        groups: dict[str, list[Any]] = {}
        for value in flt.value:
            groups.setdefault(_kind(value), []).append(value)
        parts = [{flt.key: {op: [_operand(v) for v in values]}} for values in groups.values()]  # one type per list
        return parts[0] if len(parts) == 1 else {"$or" if op == "$in" else "$and": parts}
    return {flt.key: {op: _operand(flt.value)}}


def _visible(generation: int, user: dict[str, Any] | None = None) -> dict[str, Any]:
    clauses: list[dict[str, Any]] = [{"__kb_gen": {"$lte": generation}}, {"__kb_del": {"$gt": generation}}]
    if user:
        clauses.append(user)
    return {"$and": clauses}


def _encode(metadata: dict[str, Any]) -> dict[str, Any]:
    """Chroma holds scalars only: other values are JSON-encoded and listed in ``__kb_json``.

    Integers are stored as floats and listed in ``__kb_ints``: Chroma 1.5 compares a float operand
    with an integer value after truncating it (``{"a": -1.5}`` matches ``a = -1``), floats compare exactly.
    """
    out: dict[str, Any] = {}
    encoded, ints = [], []
    for key, value in metadata.items():
        if key.startswith("__kb_"):
            raise InvalidInputError(f"metadata key {key!r} is reserved for kb's Chroma driver")
        if isinstance(value, bool | float | str):
            out[key] = value
        elif isinstance(value, int):
            out[key] = float(value)
            ints.append(key)
        else:
            out[key] = json.dumps(value)
            encoded.append(key)
    out["__kb_json"] = json.dumps(encoded)
    out["__kb_ints"] = json.dumps(ints)
    return out


def _decode(metadata: dict[str, Any]) -> dict[str, Any]:
    encoded = set(json.loads(metadata.get("__kb_json", "[]")))
    ints = set(json.loads(metadata.get("__kb_ints", "[]")))
    return {k: (json.loads(v) if k in encoded else int(v) if k in ints else v)
            for k, v in metadata.items() if k not in SYSTEM}


class ChromaStore(DelegatingReader, VectorStoreDriver):
    store_type = "CHROMA"
    capabilities = Capabilities(keyword=True, approximate=True)

    def __init__(self, context: StoreContext) -> None:
        super().__init__(context)
        os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
        self.dir = Path(context.folder) / "chroma-store"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.connection = dict(context.connection or {})
        self.collection_name = f"kb-{context.kb_id}".lower() if len(context.kb_id) >= 1 else "kb-default"
        self.keywords = KeywordIndex(context.keyword_analyzer)
        self._connections = ThreadConnections(self.dir / "chroma-meta.sqlite")
        self._client: Any = None
        self._collection: Any = None
        self._lock = threading.Lock()
        conn = self._connect()
        conn.execute("BEGIN IMMEDIATE")
        create_meta(conn)
        conn.execute("CREATE TABLE IF NOT EXISTS records (rowid INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, "
                     "physical TEXT NOT NULL, gen INTEGER NOT NULL)")
        self.keywords.create(conn)
        conn.execute("COMMIT")
        conn.close()

    # --- plumbing -------------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        return connect_durable(self._connections.path)

    def _conn(self) -> sqlite3.Connection:
        return self._connections.get()

    @property
    def where(self) -> str:
        return self.connection.get("url") or str(self.dir / "chroma")

    def collection(self) -> Any:
        with self._lock:
            if self._collection is None:
                import chromadb
                from chromadb.config import Settings

                settings = Settings(anonymized_telemetry=False, allow_reset=False)
                try:
                    if self.connection.get("url"):
                        from urllib.parse import urlparse

                        url = urlparse(self.connection["url"])
                        headers = {"Authorization": f"Bearer {self.connection['api_key']}"} \
                            if self.connection.get("api_key") else None
                        self._client = chromadb.HttpClient(
                            host=url.hostname or "127.0.0.1", port=url.port or 8000, ssl=url.scheme == "https",
                            headers=headers, settings=settings,
                            tenant=self.connection.get("tenant", chromadb.DEFAULT_TENANT),
                            database=self.connection.get("database", chromadb.DEFAULT_DATABASE))
                    else:
                        self._client = chromadb.PersistentClient(path=str(self.dir / "chroma"), settings=settings)
                    self._collection = self._client.get_or_create_collection(
                        self.collection_name, metadata={"hnsw:space": "cosine"}, embedding_function=None)
                except Exception as exc:
                    raise self._unavailable(exc) from exc
            return self._collection

    def _unavailable(self, exc: BaseException) -> StoreUnavailableError:
        return StoreUnavailableError(f"Chroma at {self.where} is unavailable for knowledge bank "
                                     f"{self.context.kb_id}: {type(exc).__name__}: {str(exc)[:300]}")

    def call(self, method: str, **kwargs: Any) -> Any:
        try:
            return getattr(self.collection(), method)(**kwargs)
        except (InvalidInputError, FilterError):
            raise
        except Exception as exc:  # chromadb raises many types for a server that is down or restarting
            name = type(exc).__name__
            if "Connect" in name or "Timeout" in name or "connect" in str(exc).lower():
                with self._lock:
                    self._collection = None  # reconnect next time
                raise self._unavailable(exc) from exc
            raise

    read_meta = staticmethod(read_meta)

    def _view(self) -> _ChromaView:
        generation, dim = self.read_meta(self._conn())
        return _ChromaView(self, self._conn(), generation, dim)

    # --- reads ------------------------------------------------------------------------------------

    # --- writes -----------------------------------------------------------------------------------

    def begin(self, timeout: float = 30.0) -> ChromaTransaction:
        lock = acquire_writer_lock(self.dir / "writer.lock", timeout, self.context.kb_id)
        conn = self._connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
            generation, dim = self.read_meta(conn)
            self._clean_leftovers(generation)
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            conn.close()
            lock.close()
            raise
        return ChromaTransaction(self, conn, lock, generation, dim)

    def _clean_leftovers(self, committed: int) -> None:
        """Undo what a crashed writer left: records of uncommitted generations, uncommitted deletion marks."""
        stale = self.call("get", where={"__kb_gen": {"$gt": committed}}, include=[])["ids"]
        for start in range(0, len(stale), _BATCH):
            self.call("delete", ids=stale[start : start + _BATCH])
        marked = self.call("get", where={"$and": [{"__kb_del": {"$gt": committed}},
                                                  {"__kb_del": {"$lt": NEVER}}]}, include=["metadatas"])
        if marked["ids"]:
            metadatas = [{**m, "__kb_del": NEVER} for m in marked["metadatas"]]
            self.call("update", ids=marked["ids"], metadatas=metadatas)

    def langchain_vectorstore(self, core: Any, tx: StoreTransaction | None, **kwargs: Any) -> Any:
        from stores.chroma_langchain import KBChromaVectorStore

        if kwargs:
            raise InvalidInputError(f"unexpected vector store options: {', '.join(sorted(kwargs))}")
        return KBChromaVectorStore(core, tx)

    def close(self) -> None:
        self._connections.close()

    def destroy(self) -> None:
        try:
            self.collection()
            self._client.delete_collection(self.collection_name)
        except Exception:  # noqa: BLE001 - the folder goes anyway; a server-side leftover is logged by Chroma
            pass
        self.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class _ChromaView(StoreReader):
    """Reads at one generation (the committed one, or a transaction's own)."""

    def __init__(self, store: ChromaStore, conn: sqlite3.Connection, generation: int, dim: int | None) -> None:
        self.store, self.conn, self.generation, self._dim = store, conn, generation, dim

    @property
    def dimension(self) -> int | None:
        return self._dim

    def _records(self, result: dict[str, Any], with_vectors: bool, index: int | None = None) -> list[Record]:
        pick = (lambda key: result[key][index]) if index is not None else (lambda key: result[key])
        docs, metas = pick("documents"), pick("metadatas")
        vectors = pick("embeddings") if with_vectors else None
        return [Record(m["__kb_id"], d or "", _decode(m), np.asarray(vectors[i], dtype=np.float32)
                       if vectors is not None else None) for i, (d, m) in enumerate(zip(docs, metas, strict=True))]

    def get(self, ids: Sequence[str], with_vectors: bool = False) -> list[Record]:
        found: dict[str, Record] = {}
        include = ["documents", "metadatas", *(["embeddings"] if with_vectors else [])]
        unique = list(dict.fromkeys(ids))
        for start in range(0, len(unique), _BATCH):
            part = unique[start : start + _BATCH]
            result = self.store.call("get", where=_visible(self.generation, {"__kb_id": {"$in": part}}),
                                     include=include)
            found.update((r.id, r) for r in self._records(result, with_vectors))
        return [found[i] for i in ids if i in found]

    def _all(self, flt: Filter | None, include: list[str]) -> dict[str, Any]:
        return self.store.call("get", where=_visible(self.generation, to_where(flt)), include=include)

    def count(self, flt: Filter | None = None) -> int:
        return len(self._all(flt, [])["ids"])

    def ids_where(self, flt: Filter | None) -> list[str]:
        return [m["__kb_id"] for m in self._all(flt, ["metadatas"])["metadatas"]]

    def iter_records(self, batch_size: int = 1000, with_vectors: bool = False) -> Iterator[list[Record]]:
        include = ["documents", "metadatas", *(["embeddings"] if with_vectors else [])]
        offset = 0
        while True:
            result = self.store.call("get", where=_visible(self.generation), include=include, limit=batch_size,
                                     offset=offset)
            if not result["ids"]:
                return
            yield self._records(result, with_vectors)
            offset += len(result["ids"])

    def similarity(self, vector: np.ndarray, k: int, flt: Filter | None = None,
                   with_vectors: bool = False) -> list[Hit]:
        query = normalise(check_query_vector(vector, self._dim).reshape(1, -1))[0]
        if k <= 0 or self._dim is None:
            return []
        where = _visible(self.generation, to_where(flt))
        include = ["documents", "metadatas", "distances", *(["embeddings"] if with_vectors else [])]
        # Chroma 1.x answers with fewer results when fewer records match, so no count round trip is needed.
        result = self.store.call("query", query_embeddings=[query.tolist()], n_results=k, where=where,
                                 include=include)
        records = self._records(result, with_vectors, index=0)
        return [Hit(r, 1.0 - float(d)) for r, d in zip(records, result["distances"][0], strict=True)]

    def keyword(self, query: str, k: int, flt: Filter | None = None) -> list[Hit]:
        if k <= 0:
            return []
        depth = max(k * 20, 200)
        while True:
            pairs = self.store.keywords.search(self.conn, query, depth)
            if not pairs:
                return []
            physical = dict(self.conn.execute(
                f"SELECT rowid, id FROM records WHERE rowid IN ({','.join('?' * len(pairs))})", [p[0] for p in pairs]))
            records = {r.id: r for r in self.get([physical[p] for p, _ in pairs if p in physical])}
            hits = [Hit(records[physical[p]], s) for p, s in pairs
                    if p in physical and physical[p] in records and matches(flt, records[physical[p]].metadata)]
            if len(hits) >= k or len(pairs) < depth:
                return hits[:k]
            depth *= 4


class ChromaTransaction(DelegatingReader, StoreTransaction):
    def __init__(self, store: ChromaStore, conn: sqlite3.Connection, lock: Any, committed: int,
                 dim: int | None) -> None:
        self.store, self.conn, self.lock = store, conn, lock
        self.committed, self.generation, self._dim = committed, committed + 1, dim
        self._open = True
        self._next_rowid = int(conn.execute("SELECT COALESCE(MAX(rowid), 0) FROM records").fetchone()[0]) + 1

    def _view(self) -> _ChromaView:
        if not self._open:
            raise WriterClosedError("this transaction is already committed or rolled back")
        return _ChromaView(self.store, self.conn, self.generation, self._dim)

    @property
    def dimension(self) -> int | None:
        return self._dim

    def _retire(self, ids: Sequence[str]) -> int:
        """Hide the live records of ``ids`` from this generation on; returns how many existed."""
        rows: list[tuple[int, str, str, int]] = []
        for start in range(0, len(ids), _BATCH):
            part = list(ids[start : start + _BATCH])
            rows += self.conn.execute(f"SELECT rowid, id, physical, gen FROM records WHERE id IN "
                                      f"({','.join('?' * len(part))})", part).fetchall()
        if not rows:
            return 0
        own = [physical for _, _, physical, gen in rows if gen == self.generation]
        older = [physical for _, _, physical, gen in rows if gen != self.generation]
        if own:
            self.store.call("delete", ids=own)
        for start in range(0, len(older), _BATCH):
            part = older[start : start + _BATCH]
            current = self.store.call("get", ids=part, include=["metadatas"])
            self.store.call("update", ids=current["ids"],
                            metadatas=[{**m, "__kb_del": self.generation} for m in current["metadatas"]])
        self.store.keywords.remove(self.conn, [r[0] for r in rows])
        self.conn.executemany("DELETE FROM records WHERE rowid = ?", [(r[0],) for r in rows])
        return len(rows)

    def upsert(self, records: Sequence[Record]) -> None:
        self._view()
        if not records:
            return
        dim = check_records(records, self._dim)
        for r in records:
            try:
                json.dumps(r.metadata, allow_nan=False)
            except (TypeError, ValueError) as exc:
                raise InvalidInputError(f"document {r.id!r}: metadata is not JSON-serialisable: {exc}") from exc
        metadatas = [_encode(dict(r.metadata)) for r in records]
        self._retire([r.id for r in records])
        vectors = normalise(np.stack([np.asarray(r.vector, dtype=np.float32) for r in records]))
        physical = [f"{self.generation}:{r.id}" for r in records]
        for meta, record in zip(metadatas, records, strict=True):
            meta.update({"__kb_id": record.id, "__kb_gen": self.generation, "__kb_del": NEVER})
        for start in range(0, len(records), _BATCH):
            end = start + _BATCH
            self.store.call("add", ids=physical[start:end], embeddings=vectors[start:end].tolist(),
                            metadatas=metadatas[start:end], documents=[r.text for r in records[start:end]])
        rows = [(self._next_rowid + i, r.id, p, self.generation) for i, (r, p) in
                enumerate(zip(records, physical, strict=True))]
        self._next_rowid += len(rows)
        self.conn.executemany("INSERT INTO records VALUES (?, ?, ?, ?)", rows)
        self.store.keywords.add(self.conn, [(row[0], r.text) for row, r in zip(rows, records, strict=True)])
        if self._dim is None:
            self._dim = dim
            self.conn.execute("UPDATE meta SET value = ? WHERE key = 'dimension'", (str(dim),))

    def delete(self, ids: Sequence[str]) -> int:
        self._view()
        return self._retire(list(dict.fromkeys(ids)))

    def clear(self) -> None:
        self._view()
        self._retire([row[0] for row in self.conn.execute("SELECT id FROM records")])
        self.conn.execute("UPDATE meta SET value = '' WHERE key = 'dimension'")
        self._dim = None

    def commit(self) -> None:
        self._view()
        try:
            self.conn.execute("UPDATE meta SET value = ? WHERE key = 'generation'", (str(self.generation),))
            self.conn.execute("COMMIT")  # the commit point: visibility, keywords and the id map flip together
        except BaseException:
            self.rollback()
            raise
        self._finish()
        try:  # vacuum records replaced before the previous generation (no reader can still see them)
            stale = self.store.call("get", where={"__kb_del": {"$lte": self.committed}}, include=[])["ids"]
            for start in range(0, len(stale), _BATCH):
                self.store.call("delete", ids=stale[start : start + _BATCH])
        except StoreUnavailableError:
            pass  # invisible garbage; the next commit vacuums it

    def rollback(self) -> None:
        if not self._open:
            return
        try:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            self.store._clean_leftovers(self.committed)
        finally:
            self._finish()

    def _finish(self) -> None:
        self._open = False
        self.conn.close()
        self.lock.close()

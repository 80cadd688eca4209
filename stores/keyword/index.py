"""``KeywordIndex``: BM25 over the ``kw_*`` tables of a store's SQLite database.

The tables, their encodings and the format's history are described in the package docstring
(``stores/keyword/__init__.py``); this module creates and migrates them, writes analysed batches,
removes documents, merges segments and scores queries (with ``search``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

from kb_base.errors import StoreError
from stores.keyword import doc_blocks, lexicon, postings
from stores.keyword import packing as segment_packing
from stores.keyword.analysis import Analyzer, analyzer_settings
from stores.keyword.batch import AnalysedBatch, analyse_batch
from stores.keyword.search import PostingsCache, ScoredPostings, TermIdCache, idf, top_k
from stores.keyword.writes import _BATCH, BatchWrites, _marks

MERGE_AT = 8  # the tiered merge's fan-out: rows of a bucket's newest tier merged into one (``postings.merge_plans``)
FORMAT = 4  # 4: lexicon blocks and bucket rows (see ``lexicon``, ``postings``), unreadable by format 3's code
_TERM = np.dtype("<i8")  # term ids in kw_docs and kw_deleted, indexes made before 'doc_term_bytes' existed
_TERM32 = np.dtype("<i4")  # ... and since: half the bytes (a tenth of a store's SQLite file, written twice)


def _member(values: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """``np.isin`` against an already sorted array, without sorting it again for every call."""
    positions = np.minimum(np.searchsorted(sorted_set, values), sorted_set.size - 1)
    return sorted_set[positions] == values


class KeywordIndex(BatchWrites):
    def __init__(self, analyzer: dict[str, Any] | None = None) -> None:
        self.settings = analyzer_settings(analyzer)
        self.analyzer = Analyzer(self.settings)
        self.k1 = float(self.settings["k1"])
        self.b = float(self.settings["b"])
        self._cache = PostingsCache()  # scored postings of hot terms, per committed generation
        self._term_ids = TermIdCache()  # and the ids of queried terms

    # --- schema -------------------------------------------------------------------------------

    def create(self, conn: sqlite3.Connection) -> None:
        """Create the tables, or bring an index of an earlier format to this one: its term rows become lexicon
        blocks (cheap: a row per term), its segment rows stay where they are, read beside the buckets and folded
        into them as their buckets merge (no pass over an old index's postings at open)."""
        existing = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'kw_docs'").fetchone() is not None
        if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'kw_stats'").fetchone() is not None:
            written = conn.execute("SELECT value FROM kw_stats WHERE key = 'format'").fetchone()
            if written is not None and written[0] > FORMAT:  # a later version's index: refuse, never half-read it
                raise StoreError(f"keyword index format {written[0]} is newer than this code's ({FORMAT}): "
                                 "open it with the kb version that wrote it")
        first_format = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'kw_postings'").fetchone() is not None
        lexicon.create(conn)
        postings.create(conn)
        if self._legacy(conn):
            columns = {row[1] for row in conn.execute("PRAGMA table_info(kw_segments)")}
            if "packing" not in columns:
                # rows of format 1-2 code read the default: int64 / uint32 / uint32, as they were written
                conn.execute("ALTER TABLE kw_segments ADD COLUMN packing INTEGER NOT NULL "
                             f"DEFAULT {segment_packing.LEGACY}")
            if "doc_base" not in columns:
                conn.execute("ALTER TABLE kw_segments ADD COLUMN doc_base INTEGER NOT NULL DEFAULT 0")
        conn.execute("CREATE TABLE IF NOT EXISTS kw_docs (doc INTEGER PRIMARY KEY, length INTEGER NOT NULL, "
                     "term_ids BLOB NOT NULL)")
        doc_blocks.create(conn)
        conn.execute("CREATE TABLE IF NOT EXISTS kw_deleted (doc INTEGER PRIMARY KEY, term_ids BLOB NOT NULL)")
        conn.execute("CREATE TABLE IF NOT EXISTS kw_stats (key TEXT PRIMARY KEY, value INTEGER NOT NULL)")
        conn.execute("INSERT OR IGNORE INTO kw_stats VALUES ('docs', 0), ('length', 0), ('next_term', 1), "
                     "('next_seg', 1), ('deleted', 0), ('postings', 0)")
        conn.execute("INSERT OR IGNORE INTO kw_stats VALUES ('doc_term_bytes', ?)",
                     (_TERM.itemsize if existing else _TERM32.itemsize,))
        if first_format:
            self._convert_first_format(conn)
        if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'kw_terms'").fetchone() is not None:
            lexicon.convert_terms(conn)
        conn.execute("INSERT OR REPLACE INTO kw_stats VALUES ('format', ?)", (FORMAT,))

    @staticmethod
    def _legacy(conn: sqlite3.Connection) -> bool:
        """Whether segment rows of formats 2-3 (``kw_segments``, a row per term and write) may be left."""
        return conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'kw_segments'").fetchone() is not None

    def _convert_first_format(self, conn: sqlite3.Connection) -> None:
        rows = conn.execute("SELECT p.term_id, p.doc, p.tf, d.length FROM kw_postings p JOIN kw_docs d "
                            "ON d.doc = p.doc ORDER BY p.term_id, p.doc").fetchall()
        if rows:
            data = np.asarray(rows, dtype=np.int64)  # sorted by the query: grouped by term, documents ascending
            terms, starts = np.unique(data[:, 0], return_index=True)
            seg = self._stats(conn)["next_seg"]
            self._bump(conn, "next_seg", 1)
            postings.insert(conn, postings.encode(seg, terms, np.append(starts, len(rows)), data[:, 1], data[:, 2],
                                                  data[:, 3]))
        conn.execute("UPDATE kw_stats SET value = ? WHERE key = 'postings'", (len(rows),))
        conn.execute("DROP TABLE kw_postings")

    def _stats(self, conn: sqlite3.Connection) -> dict[str, int]:
        return dict(conn.execute("SELECT key, value FROM kw_stats"))

    def _term_dtype(self, conn: sqlite3.Connection) -> np.dtype:
        """How this index stores a document's term ids (kw_docs, kw_deleted)."""
        return _TERM32 if self._stats(conn).get("doc_term_bytes") == _TERM32.itemsize else _TERM

    def _bump(self, conn: sqlite3.Connection, key: str, delta: int) -> None:
        conn.execute("UPDATE kw_stats SET value = value + ? WHERE key = ?", (delta, key))

    # --- writing ------------------------------------------------------------------------------

    def add(self, conn: sqlite3.Connection, rows: Sequence[tuple[int, str]]) -> None:
        if rows:
            self.write(conn, [self.analyse([r[0] for r in rows], [r[1] for r in rows])])

    def analyse(self, rowids: Sequence[int], texts: Sequence[str]) -> AnalysedBatch | None:
        """The CPU half of an add, without the database (thread-safe: a writer may run it on a helper thread)."""
        return analyse_batch(self.analyzer, rowids, texts)

    def remove(self, conn: sqlite3.Connection, rowids: Sequence[int]) -> None:
        dtype = self._term_dtype(conn)
        removed: list[tuple[int, int, np.ndarray]] = []  # (doc, length, term ids) of each removed document
        for start in range(0, len(rowids), _BATCH):
            part = list(rowids[start : start + _BATCH])
            rows = conn.execute(f"SELECT doc, length, term_ids FROM kw_docs WHERE doc IN ({_marks(len(part))})",
                                part).fetchall()
            removed += [(doc, length, np.frombuffer(blob, dtype=dtype)) for doc, length, blob in rows]
            if rows:
                conn.execute(f"DELETE FROM kw_docs WHERE doc IN ({_marks(len(part))})", part)
        in_rows = {doc for doc, _, _ in removed}
        removed += doc_blocks.take(conn, np.asarray([r for r in rowids if r not in in_rows], dtype=np.int64))
        if not removed:
            return
        conn.executemany("INSERT OR REPLACE INTO kw_deleted VALUES (?, ?)",
                         [(doc, terms.astype(dtype).tobytes()) for doc, _, terms in removed])
        # no document frequencies to lower: a term's are its live postings, counted when they are read
        all_terms = np.concatenate([terms for _, _, terms in removed])
        self._bump(conn, "docs", -len(removed))
        self._bump(conn, "length", -sum(length for _, length, _ in removed))
        self._bump(conn, "deleted", int(all_terms.size))
        stats = self._stats(conn)
        if stats["deleted"] > max(10_000, stats["postings"] // 4):
            self._compact_all(conn)

    def _forget_reused(self, conn: sqlite3.Connection, rowids: np.ndarray) -> None:
        """A store may reuse the rowid of a removed document: drop that document's old postings first."""
        if self._stats(conn)["deleted"] == 0:
            return
        reused: list[tuple[int, bytes]] = []
        for start in range(0, rowids.size, _BATCH):
            part = rowids[start : start + _BATCH].tolist()
            reused += conn.execute(f"SELECT doc, term_ids FROM kw_deleted WHERE doc IN ({_marks(len(part))})",
                                   part).fetchall()
        if reused:
            dtype = self._term_dtype(conn)
            terms = np.concatenate([np.frombuffer(blob, dtype=dtype) for _, blob in reused])
            # merging drops every tombstoned posting of these terms' buckets
            self._merge_buckets(conn, [(bucket, 0) for bucket in np.unique(postings.bucket_of(terms)).tolist()])
            # a document's postings are only under its own terms, so after that merge none are left
            conn.executemany("DELETE FROM kw_deleted WHERE doc = ?", [(doc,) for doc, _ in reused])

    def _merge_crowded(self, conn: sqlite3.Connection, buckets: list[int]) -> None:
        plans = postings.merge_plans(conn, buckets, MERGE_AT, self._legacy(conn))
        if plans:
            self._merge_buckets(conn, plans)

    def _merge_buckets(self, conn: sqlite3.Connection, plans: Sequence[tuple[int, int]]) -> None:
        """Rewrite each ``(bucket, first seg)``'s rows from that seg on as one, without tombstoned postings."""
        deleted = self._deleted(conn)
        legacy = self._legacy(conn)
        dropped = sum(postings.merge(conn, bucket, deleted, legacy, first) for bucket, first in plans)
        if dropped:
            self._bump(conn, "deleted", -dropped)
            self._bump(conn, "postings", -dropped)
            if self._stats(conn)["deleted"] <= 0:  # no tombstoned posting is left anywhere
                conn.execute("DELETE FROM kw_deleted")
                conn.execute("UPDATE kw_stats SET value = 0 WHERE key = 'deleted'")

    def _compact_all(self, conn: sqlite3.Connection) -> None:
        self._merge_buckets(conn, [(bucket, 0) for bucket in postings.buckets(conn, self._legacy(conn))])
        if self._legacy(conn):
            conn.execute("DROP TABLE kw_segments")  # every row of it is in the buckets now
        conn.execute("DELETE FROM kw_deleted")
        conn.execute("UPDATE kw_stats SET value = 0 WHERE key = 'deleted'")

    def highest_tombstone(self, conn: sqlite3.Connection) -> int:
        """The highest rowid a tombstone holds; stores allocate new rowids above it so none is reused."""
        return int(conn.execute("SELECT COALESCE(MAX(doc), 0) FROM kw_deleted").fetchone()[0])

    def clear(self, conn: sqlite3.Connection) -> None:
        if self._legacy(conn):
            conn.execute("DROP TABLE kw_segments")
        for table in ("kw_buckets", "kw_docs", "kw_doc_blocks", "kw_lexicon", "kw_deleted"):
            conn.execute(f"DELETE FROM {table}")
        conn.execute("UPDATE kw_stats SET value = 0 WHERE key IN ('docs', 'length', 'deleted', 'postings')")

    # --- reading ------------------------------------------------------------------------------

    def _deleted(self, conn: sqlite3.Connection) -> np.ndarray:
        """Tombstoned rowids, sorted."""
        return np.fromiter((r[0] for r in conn.execute("SELECT doc FROM kw_deleted ORDER BY doc")), dtype=np.int64)

    def _postings(self, conn: sqlite3.Connection, term: int, deleted: np.ndarray | None,
                  legacy: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A term's live postings (``deleted``: tombstones, sorted), oldest rows first: its documents ascending
        as they were written, frequencies and lengths as float64."""
        parts = postings.term_postings(conn, term)
        if legacy:
            parts += [(seg, segment_packing.unpack(*row)) for seg, *row in conn.execute(
                "SELECT seg, packing, docs, tfs, lengths, doc_base FROM kw_segments WHERE term_id = ?", (term,))]
            parts.sort(key=lambda part: part[0])
        if not parts:
            empty = np.zeros(0, np.int64)
            return empty, empty, empty
        docs = np.concatenate([p[0] for _, p in parts]).astype(np.int64, copy=False)
        tfs = np.concatenate([p[1] for _, p in parts]).astype(np.float64)
        lengths = np.concatenate([p[2] for _, p in parts]).astype(np.float64)
        if deleted is not None and deleted.size:
            keep = ~_member(docs, deleted)
            docs, tfs, lengths = docs[keep], tfs[keep], lengths[keep]
        return docs, tfs, lengths

    def rows_read(self, conn: sqlite3.Connection, query: str) -> list[int]:
        """How many postings rows each of the query's known terms reads (those of its bucket): what the merge
        policy bounds, for benchmarks and diagnosis."""
        ids = lexicon.lookup(conn, list(self.analyzer.term_counts(query))).values()
        return [postings.row_count(conn, term_id) for term_id in sorted(ids)]

    def search(
        self,
        conn: sqlite3.Connection,
        query: str,
        k: int,
        candidates_sql: str | None = None,
        candidates_params: Sequence[Any] = (),
        allowed: np.ndarray | None = None,
        cache_key: Hashable = None,
    ) -> list[tuple[int, float]]:
        """Best ``k`` (rowid, BM25 score) pairs, best first, ties by rowid.

        ``candidates_sql`` (``SELECT rowid ...``) or ``allowed`` (sorted rowids) restricts the documents
        considered. ``cache_key`` names the committed state ``conn`` reads (the store's generation): the
        scored postings of its terms are then kept for the next query of that state. Leave it None for a
        writer's uncommitted view.
        """
        query_terms = self.analyzer.term_counts(query)
        if not query_terms or k <= 0:
            return []
        stats = self._stats(conn)
        n_docs = stats["docs"]
        if n_docs == 0:
            return []
        avg_length = stats["length"] / n_docs
        if cache_key is None:  # a writer's uncommitted view: nothing cached
            found = lexicon.lookup(conn, list(query_terms))
        else:
            found = self._term_ids.get(cache_key, list(query_terms), lambda missing: lexicon.lookup(conn, missing))
        term_ids = sorted(found.values())  # summed in id order, as always
        if not term_ids:
            return []
        if candidates_sql:
            allowed = np.fromiter((r[0] for r in conn.execute(candidates_sql, list(candidates_params))),
                                  dtype=np.int64)
        if allowed is not None and allowed.size > 1 and np.any(allowed[1:] < allowed[:-1]):
            allowed = np.sort(allowed)  # metadata columns give rowids ascending already: no sort per query
        read: list[Any] = []  # tombstones and whether old segment rows are left: read once, if a term is read

        def load(term_id: int) -> ScoredPostings:
            if not read:
                read.append(self._deleted(conn) if stats["deleted"] else np.zeros(0, np.int64))
                read.append(self._legacy(conn))
            docs, tfs, lengths = self._postings(conn, term_id, read[0], read[1])
            # a term's document frequency is its live postings' count: a document has one posting per term
            return ScoredPostings.build(docs, tfs, lengths, idf(n_docs, docs.size), self.k1, self.b, avg_length)

        if cache_key is None:
            scored = [load(term_id) for term_id in term_ids]
        else:
            key = (cache_key, n_docs, stats["length"], self.k1, self.b)
            scored = [self._cache.get(key, term_id, lambda t=term_id: load(t)) for term_id in term_ids]
        return top_k(scored, k, allowed)


class NoKeywordIndex(KeywordIndex):
    """A vector-only knowledge bank's stand-in: writes skip the BM25 work, searches are refused upstream
    (the driver reports no keyword capability, so keyword and hybrid searches fail with a clear error)."""

    def create(self, conn: sqlite3.Connection) -> None:
        return None

    def add(self, conn: sqlite3.Connection, rows: Sequence[tuple[int, str]]) -> None:
        return None

    def analyse(self, rowids: Sequence[int], texts: Sequence[str]) -> AnalysedBatch | None:
        return None

    def write(self, conn: sqlite3.Connection, analysed: Sequence[AnalysedBatch | None]) -> None:
        return None

    def remove(self, conn: sqlite3.Connection, rowids: Sequence[int]) -> None:
        return None

    def highest_tombstone(self, conn: sqlite3.Connection) -> int:
        return 0

    def clear(self, conn: sqlite3.Connection) -> None:
        return None

    def search(self, conn: sqlite3.Connection, query: str, k: int, candidates_sql: str | None = None,
               candidates_params: Sequence[Any] = (), allowed: np.ndarray | None = None,
               cache_key: Hashable = None) -> list[tuple[int, float]]:
        return []

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

from stores.keyword import doc_blocks
from stores.keyword import packing as segment_packing
from stores.keyword.analysis import Analyzer, analyzer_settings
from stores.keyword.batch import AnalysedBatch, analyse_batch
from stores.keyword.search import PostingsCache, ScoredPostings, idf, top_k
from stores.keyword.writes import _BATCH, BatchWrites, _marks

MERGE_AT = 8  # segments per term before they are merged into one
FORMAT = 3  # 3: gapped segment rowids and uint16 block term ids, unreadable by format 2's code
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

    # --- schema -------------------------------------------------------------------------------

    def create(self, conn: sqlite3.Connection) -> None:
        """Create the tables, or bring an index of the first format (a row per posting) to this one."""
        existing = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'kw_docs'").fetchone() is not None
        legacy = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'kw_postings'").fetchone() is not None
        conn.execute("CREATE TABLE IF NOT EXISTS kw_terms (term TEXT PRIMARY KEY, id INTEGER NOT NULL UNIQUE, "
                     "df INTEGER NOT NULL)")
        if "segments" not in {row[1] for row in conn.execute("PRAGMA table_info(kw_terms)")}:
            conn.execute("ALTER TABLE kw_terms ADD COLUMN segments INTEGER NOT NULL DEFAULT 0")
        # A rowid table, so that a batch's segments (seg ascending) are appended at the end of the table and
        # only the small (term_id, seg) index takes scattered inserts. Keyed by (term_id, seg) itself, every
        # batch inserted a blob next to each earlier segment of each of its terms, rewriting pages all over
        # the table (100k chunks: 1.7 s of inserts for 5 batches instead of 0.5 s). Indexes made by earlier
        # versions (WITHOUT ROWID, same columns and key) are kept: every query works on both.
        conn.execute("CREATE TABLE IF NOT EXISTS kw_segments (term_id INTEGER NOT NULL, seg INTEGER NOT NULL, "
                     "docs BLOB NOT NULL, tfs BLOB NOT NULL, lengths BLOB NOT NULL)")
        if "packing" not in {row[1] for row in conn.execute("PRAGMA table_info(kw_segments)")}:
            # rows of earlier versions read the default: int64 / uint32 / uint32, as they were written
            conn.execute("ALTER TABLE kw_segments ADD COLUMN packing INTEGER NOT NULL "
                         f"DEFAULT {segment_packing.LEGACY}")
        if "doc_base" not in {row[1] for row in conn.execute("PRAGMA table_info(kw_segments)")}:
            # a GAPS16 row's first rowid (format 3); rows of other packings leave it 0
            conn.execute("ALTER TABLE kw_segments ADD COLUMN doc_base INTEGER NOT NULL DEFAULT 0")
        if not self._clustered_by_term(conn):
            conn.execute("CREATE UNIQUE INDEX IF NOT EXISTS kw_segments_term ON kw_segments (term_id, seg)")
        conn.execute("CREATE TABLE IF NOT EXISTS kw_docs (doc INTEGER PRIMARY KEY, length INTEGER NOT NULL, "
                     "term_ids BLOB NOT NULL)")
        doc_blocks.create(conn)
        conn.execute("CREATE TABLE IF NOT EXISTS kw_deleted (doc INTEGER PRIMARY KEY, term_ids BLOB NOT NULL)")
        conn.execute("CREATE TABLE IF NOT EXISTS kw_stats (key TEXT PRIMARY KEY, value INTEGER NOT NULL)")
        conn.execute("INSERT OR IGNORE INTO kw_stats VALUES ('docs', 0), ('length', 0), ('next_term', 1), "
                     "('next_seg', 1), ('deleted', 0), ('postings', 0)")
        conn.execute("INSERT OR IGNORE INTO kw_stats VALUES ('doc_term_bytes', ?)",
                     (_TERM.itemsize if existing else _TERM32.itemsize,))
        if legacy:
            self._convert_first_format(conn)
        conn.execute("INSERT OR REPLACE INTO kw_stats VALUES ('format', ?)", (FORMAT,))

    @staticmethod
    def _clustered_by_term(conn: sqlite3.Connection) -> bool:
        """Whether kw_segments is the earlier WITHOUT ROWID table keyed by (term_id, seg)."""
        sql = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'kw_segments'").fetchone()[0]
        return "WITHOUT ROWID" in sql.upper()

    def _convert_first_format(self, conn: sqlite3.Connection) -> None:
        rows = conn.execute("SELECT p.term_id, p.doc, p.tf, d.length FROM kw_postings p JOIN kw_docs d "
                            "ON d.doc = p.doc ORDER BY p.term_id, p.doc").fetchall()
        conn.execute("DELETE FROM kw_segments")
        conn.execute("UPDATE kw_terms SET df = 0, segments = 0")  # recounted from the postings below
        if rows:
            data = np.asarray(rows, dtype=np.int64)
            self._write_segments(conn, data[:, 0], data[:, 1], data[:, 2], data[:, 3])  # sorted by the query
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

    def _write_segments(self, conn: sqlite3.Connection, term_ids: np.ndarray, docs: np.ndarray, tfs: np.ndarray,
                        lengths: np.ndarray) -> None:
        """One new segment per distinct term of the given postings, grouped by term (a conversion's path)."""
        if term_ids.size == 0:
            return
        starts = np.flatnonzero(np.concatenate(([True], term_ids[1:] != term_ids[:-1])))
        ends = np.append(starts[1:], term_ids.size)
        packing = segment_packing.choose(docs, tfs, lengths)
        packed = segment_packing.pack(packing, docs, tfs, lengths)
        self._insert_segments(conn, term_ids[starts].tolist(), (ends - starts).tolist(),
                              segment_packing.rows(packing, *packed, starts, ends), {})

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
        all_terms = np.concatenate([terms for _, _, terms in removed]).astype(np.int64)
        terms, df_delta = np.unique(all_terms, return_counts=True)
        conn.executemany("UPDATE kw_terms SET df = df - ? WHERE id = ?",
                         list(zip(df_delta.tolist(), terms.tolist(), strict=True)))
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
            terms = sorted({t for _, blob in reused for t in np.frombuffer(blob, dtype=dtype).tolist()})
            self._merge_terms(conn, terms)  # merging drops every tombstoned posting of these terms
            # a document's postings are only under its own terms, so after that merge none are left
            conn.executemany("DELETE FROM kw_deleted WHERE doc = ?", [(doc,) for doc, _ in reused])

    def _merge_crowded(self, conn: sqlite3.Connection, term_ids: list[int]) -> None:
        crowded: list[int] = []
        for start in range(0, len(term_ids), _BATCH):
            part = term_ids[start : start + _BATCH]
            crowded += [r[0] for r in conn.execute(
                f"SELECT id FROM kw_terms WHERE id IN ({_marks(len(part))}) AND segments >= ?", [*part, MERGE_AT])]
        if crowded:
            self._merge_terms(conn, crowded)

    def _merge_terms(self, conn: sqlite3.Connection, term_ids: Sequence[int]) -> None:
        """Rewrite each term's segments as one, without tombstoned postings."""
        deleted = self._deleted(conn)
        dropped = 0
        for term in term_ids:
            docs, tfs, lengths = self._postings(conn, term, None)
            conn.execute("DELETE FROM kw_segments WHERE term_id = ?", (term,))
            if deleted.size:
                keep = ~_member(docs, deleted)
                dropped += int(docs.size - keep.sum())
                docs, tfs, lengths = docs[keep], tfs[keep], lengths[keep]
            if docs.size:
                conn.execute("INSERT INTO kw_segments (term_id, seg, docs, tfs, lengths, packing, doc_base) "
                             "VALUES (?, 0, ?, ?, ?, ?, ?)", (term, *segment_packing.row(docs, tfs, lengths)))
            conn.execute("UPDATE kw_terms SET segments = ? WHERE id = ?", (int(docs.size > 0), term))
        if dropped:
            self._bump(conn, "deleted", -dropped)
            self._bump(conn, "postings", -dropped)
            if self._stats(conn)["deleted"] <= 0:  # no tombstoned posting is left anywhere
                conn.execute("DELETE FROM kw_deleted")
                conn.execute("UPDATE kw_stats SET value = 0 WHERE key = 'deleted'")

    def _compact_all(self, conn: sqlite3.Connection) -> None:
        terms = [r[0] for r in conn.execute("SELECT DISTINCT term_id FROM kw_segments")]
        self._merge_terms(conn, terms)
        conn.execute("DELETE FROM kw_deleted")
        conn.execute("UPDATE kw_stats SET value = 0 WHERE key = 'deleted'")
        conn.execute("DELETE FROM kw_terms WHERE df <= 0 AND segments = 0")

    def highest_tombstone(self, conn: sqlite3.Connection) -> int:
        """The highest rowid a tombstone holds; stores allocate new rowids above it so none is reused."""
        return int(conn.execute("SELECT COALESCE(MAX(doc), 0) FROM kw_deleted").fetchone()[0])

    def clear(self, conn: sqlite3.Connection) -> None:
        for table in ("kw_segments", "kw_docs", "kw_doc_blocks", "kw_terms", "kw_deleted"):
            conn.execute(f"DELETE FROM {table}")
        conn.execute("UPDATE kw_stats SET value = 0 WHERE key IN ('docs', 'length', 'deleted', 'postings')")

    # --- reading ------------------------------------------------------------------------------

    def _deleted(self, conn: sqlite3.Connection) -> np.ndarray:
        """Tombstoned rowids, sorted."""
        return np.fromiter((r[0] for r in conn.execute("SELECT doc FROM kw_deleted ORDER BY doc")), dtype=np.int64)

    def _postings(self, conn: sqlite3.Connection, term: int,
                  deleted: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        parts = [segment_packing.unpack(*row) for row in conn.execute(
            "SELECT packing, docs, tfs, lengths, doc_base FROM kw_segments WHERE term_id = ?", (term,))]
        if not parts:
            empty = np.zeros(0, np.int64)
            return empty, empty, empty
        docs = np.concatenate([p[0] for p in parts]).astype(np.int64, copy=False)  # gapped rows: int64 already
        tfs = np.concatenate([p[1] for p in parts]).astype(np.float64)
        lengths = np.concatenate([p[2] for p in parts]).astype(np.float64)
        if deleted is not None and deleted.size:
            keep = ~_member(docs, deleted)
            docs, tfs, lengths = docs[keep], tfs[keep], lengths[keep]
        return docs, tfs, lengths

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
        terms = list(conn.execute(f"SELECT id, df FROM kw_terms WHERE term IN ({_marks(len(query_terms))}) "
                                  "AND df > 0 ORDER BY id", list(query_terms)))
        if not terms:
            return []
        if candidates_sql:
            allowed = np.fromiter((r[0] for r in conn.execute(candidates_sql, list(candidates_params))),
                                  dtype=np.int64)
        if allowed is not None and allowed.size > 1 and np.any(allowed[1:] < allowed[:-1]):
            allowed = np.sort(allowed)  # metadata columns give rowids ascending already: no sort per query
        deleted: list[np.ndarray] = []  # read once, and only if a term has to be read from SQLite

        def load(term_id: int, df: int) -> ScoredPostings:
            if not deleted:
                deleted.append(self._deleted(conn) if stats["deleted"] else np.zeros(0, np.int64))
            docs, tfs, lengths = self._postings(conn, term_id, deleted[0])
            return ScoredPostings.build(docs, tfs, lengths, idf(n_docs, df), self.k1, self.b, avg_length)

        if cache_key is None:
            scored = [load(term_id, df) for term_id, df in terms]
        else:
            key = (cache_key, n_docs, stats["length"], self.k1, self.b)
            scored = [self._cache.get(key, term_id, lambda t=term_id, d=df: load(t, d)) for term_id, df in terms]
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

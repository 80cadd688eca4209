"""BM25 keyword index kept in a store's SQLite database.

Why our own tables and not FTS5, tantivy or bm25s: the index must commit in
the same transaction as the records (FTS5 and our tables do; tantivy and
bm25s keep separate files that would need a two-phase commit), and BM25's
k1 and b must be tunable (FTS5 hard-codes k1=1.2, b=0.75, which costs
nDCG on SciFact). Postings are ordinary SQLite rows, so the index is
persistent, crash-safe and transactional for free; scoring happens in numpy.

Tables (prefix ``kw_``): ``kw_terms`` (term → id, document frequency),
``kw_postings`` (term id, rowid, term frequency), ``kw_docs`` (rowid →
length and its term ids, needed to undo a document), ``kw_stats`` (document
count and total length). The caller owns the connection and the
transaction; nothing here commits.
"""

from __future__ import annotations

import math
import sqlite3
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from stores.analysis import Analyzer, analyzer_settings

_BATCH = 500


class KeywordIndex:
    def __init__(self, analyzer: dict[str, Any] | None = None) -> None:
        self.settings = analyzer_settings(analyzer)
        self.analyzer = Analyzer(self.settings)
        self.k1 = float(self.settings["k1"])
        self.b = float(self.settings["b"])

    def create(self, conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE IF NOT EXISTS kw_terms (term TEXT PRIMARY KEY, id INTEGER NOT NULL UNIQUE, "
                     "df INTEGER NOT NULL)")
        conn.execute("CREATE TABLE IF NOT EXISTS kw_postings (term_id INTEGER NOT NULL, doc INTEGER NOT NULL, "
                     "tf INTEGER NOT NULL, PRIMARY KEY (term_id, doc)) WITHOUT ROWID")
        conn.execute("CREATE TABLE IF NOT EXISTS kw_docs (doc INTEGER PRIMARY KEY, length INTEGER NOT NULL, "
                     "term_ids BLOB NOT NULL)")
        conn.execute("CREATE TABLE IF NOT EXISTS kw_stats (key TEXT PRIMARY KEY, value INTEGER NOT NULL)")
        conn.execute("INSERT OR IGNORE INTO kw_stats VALUES ('docs', 0), ('length', 0), ('next_term', 1)")

    def _stats(self, conn: sqlite3.Connection) -> dict[str, int]:
        return dict(conn.execute("SELECT key, value FROM kw_stats"))

    def add(self, conn: sqlite3.Connection, rows: Sequence[tuple[int, str]]) -> None:
        if not rows:
            return
        docs = [(rowid, Counter(self.analyzer.terms(text))) for rowid, text in rows]
        vocabulary = sorted({term for _, counts in docs for term in counts})
        term_ids = self._term_ids(conn, vocabulary)
        df_delta: Counter[int] = Counter()
        postings, doc_rows, total = [], [], 0
        for rowid, counts in docs:
            ids = np.fromiter((term_ids[t] for t in counts), dtype=np.int64, count=len(counts))
            for term, tf in counts.items():
                postings.append((term_ids[term], rowid, tf))
            df_delta.update(ids.tolist())
            length = sum(counts.values())
            total += length
            doc_rows.append((rowid, length, ids.tobytes()))
        conn.executemany("INSERT INTO kw_postings VALUES (?, ?, ?)", postings)
        conn.executemany("INSERT INTO kw_docs VALUES (?, ?, ?)", doc_rows)
        conn.executemany("UPDATE kw_terms SET df = df + ? WHERE id = ?", [(n, t) for t, n in df_delta.items()])
        conn.execute("UPDATE kw_stats SET value = value + ? WHERE key = 'docs'", (len(docs),))
        conn.execute("UPDATE kw_stats SET value = value + ? WHERE key = 'length'", (total,))

    def _term_ids(self, conn: sqlite3.Connection, terms: list[str]) -> dict[str, int]:
        found: dict[str, int] = {}
        for start in range(0, len(terms), _BATCH):
            part = terms[start : start + _BATCH]
            marks = ",".join("?" * len(part))
            found.update(conn.execute(f"SELECT term, id FROM kw_terms WHERE term IN ({marks})", part))
        missing = [t for t in terms if t not in found]
        if missing:
            next_id = self._stats(conn)["next_term"]
            new = {t: next_id + i for i, t in enumerate(missing)}
            conn.executemany("INSERT INTO kw_terms VALUES (?, ?, 0)", list(new.items()))
            conn.execute("UPDATE kw_stats SET value = ? WHERE key = 'next_term'", (next_id + len(missing),))
            found.update(new)
        return found

    def remove(self, conn: sqlite3.Connection, rowids: Sequence[int]) -> None:
        removed_docs, removed_length = 0, 0
        df_delta: Counter[int] = Counter()
        for start in range(0, len(rowids), _BATCH):
            part = list(rowids[start : start + _BATCH])
            marks = ",".join("?" * len(part))
            for doc, length, blob in conn.execute(
                f"SELECT doc, length, term_ids FROM kw_docs WHERE doc IN ({marks})", part
            ):
                ids = np.frombuffer(blob, dtype=np.int64).tolist()
                df_delta.update(ids)
                conn.executemany("DELETE FROM kw_postings WHERE term_id = ? AND doc = ?", [(t, doc) for t in ids])
                removed_docs += 1
                removed_length += length
            conn.execute(f"DELETE FROM kw_docs WHERE doc IN ({marks})", part)
        if removed_docs:
            conn.executemany("UPDATE kw_terms SET df = df - ? WHERE id = ?", [(n, t) for t, n in df_delta.items()])
            conn.execute("UPDATE kw_stats SET value = value - ? WHERE key = 'docs'", (removed_docs,))
            conn.execute("UPDATE kw_stats SET value = value - ? WHERE key = 'length'", (removed_length,))

    def clear(self, conn: sqlite3.Connection) -> None:
        for table in ("kw_postings", "kw_docs", "kw_terms"):
            conn.execute(f"DELETE FROM {table}")
        conn.execute("UPDATE kw_stats SET value = 0 WHERE key IN ('docs', 'length')")

    def search(
        self,
        conn: sqlite3.Connection,
        query: str,
        k: int,
        candidates_sql: str | None = None,
        candidates_params: Sequence[Any] = (),
    ) -> list[tuple[int, float]]:
        """Best ``k`` (rowid, BM25 score) pairs, best first; ``candidates_sql`` (``SELECT rowid ...``) restricts."""
        query_terms = Counter(self.analyzer.terms(query))
        if not query_terms or k <= 0:
            return []
        stats = self._stats(conn)
        n_docs = stats["docs"]
        if n_docs == 0:
            return []
        avg_length = stats["length"] / n_docs
        marks = ",".join("?" * len(query_terms))
        terms = list(conn.execute(f"SELECT id, df FROM kw_terms WHERE term IN ({marks}) AND df > 0",
                                  list(query_terms)))
        if not terms:
            return []
        allowed: set[int] | None = None
        if candidates_sql:
            allowed = {r[0] for r in conn.execute(candidates_sql, list(candidates_params))}
            if not allowed:
                return []
        scores: dict[int, float] = {}
        for term_id, df in terms:
            idf = math.log(1.0 + (n_docs - df + 0.5) / (df + 0.5))
            rows = conn.execute(
                "SELECT p.doc, p.tf, d.length FROM kw_postings p JOIN kw_docs d ON d.doc = p.doc WHERE p.term_id = ?",
                (term_id,),
            ).fetchall()
            if not rows:
                continue
            data = np.asarray(rows, dtype=np.float64)
            docs, tf, lengths = data[:, 0].astype(np.int64), data[:, 1], data[:, 2]
            norm = self.k1 * (1.0 - self.b + self.b * lengths / avg_length)
            contribution = idf * tf * (self.k1 + 1.0) / (tf + norm)
            for doc, value in zip(docs.tolist(), contribution.tolist(), strict=True):
                if allowed is None or doc in allowed:
                    scores[doc] = scores.get(doc, 0.0) + value
        ranked = sorted(scores.items(), key=lambda item: (-item[1], item[0]))[:k]
        return [(int(doc), float(score)) for doc, score in ranked]

"""Keyword (BM25) index kept inside a store's SQLite database.

It lives in the same database, and so in the same transaction, as the records
it indexes: a commit updates vectors, records and keyword index together.
Rows are keyed by the records table's rowid. The caller owns the connection
and the transaction; this class never commits.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Sequence
from typing import Any

_WORD = re.compile(r"\w+", re.UNICODE)


class KeywordIndex:
    """SQLite FTS5 with the Porter stemmer over unicode61 tokens, ranked by FTS5's BM25."""

    def __init__(self, table: str = "records_fts", analyzer: dict[str, Any] | None = None) -> None:
        self.table = table
        self.analyzer = dict(analyzer or {})

    def create(self, conn: sqlite3.Connection) -> None:
        tokenizer = "porter unicode61 remove_diacritics 2"
        conn.execute(
            f"CREATE VIRTUAL TABLE IF NOT EXISTS {self.table} USING fts5(text, tokenize='{tokenizer}')"
        )

    def add(self, conn: sqlite3.Connection, rows: Sequence[tuple[int, str]]) -> None:
        conn.executemany(f"INSERT INTO {self.table}(rowid, text) VALUES (?, ?)", rows)

    def remove(self, conn: sqlite3.Connection, rowids: Sequence[int]) -> None:
        conn.executemany(f"DELETE FROM {self.table} WHERE rowid = ?", [(r,) for r in rowids])

    def clear(self, conn: sqlite3.Connection) -> None:
        conn.execute(f"DELETE FROM {self.table}")

    def search(
        self,
        conn: sqlite3.Connection,
        query: str,
        k: int,
        candidates_sql: str | None = None,
        candidates_params: Sequence[Any] = (),
    ) -> list[tuple[int, float]]:
        """Best ``k`` (rowid, score) pairs, higher score first.

        ``candidates_sql`` is a ``SELECT rowid ...`` restricting the result (metadata filters).
        """
        terms = [t for t in _WORD.findall(query.lower()) if t]
        if not terms:
            return []
        match = " OR ".join('"' + t.replace('"', '""') + '"' for t in terms)
        sql = f"SELECT rowid, -bm25({self.table}) AS score FROM {self.table} WHERE {self.table} MATCH ?"
        params: list[Any] = [match]
        if candidates_sql:
            sql += f" AND rowid IN ({candidates_sql})"
            params.extend(candidates_params)
        sql += " ORDER BY score DESC, rowid LIMIT ?"
        params.append(int(k))
        return [(int(r), float(s)) for r, s in conn.execute(sql, params)]

"""The segmented BM25 index against a plain reference BM25: adds, removes, merges, compaction, rowid reuse."""

from __future__ import annotations

import math
import random
import sqlite3
import unicodedata
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from stores.keyword import index as keyword_index
from stores.keyword import postings as keyword_postings
from stores.keyword.analysis import Analyzer, analyzer_settings
from stores.keyword.index import KeywordIndex

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho".split()


def reference_bm25(docs: dict[int, str], query: str, k: int, k1: float = 0.9,
                   b: float = 0.4) -> list[tuple[int, float]]:
    analyzer = Analyzer(analyzer_settings(None))
    terms = {doc: Counter(analyzer.terms(text)) for doc, text in docs.items()}
    if not terms:
        return []
    avg = sum(sum(c.values()) for c in terms.values()) / len(terms)
    scores: dict[int, float] = {}
    for term in Counter(analyzer.terms(query)):
        df = sum(1 for c in terms.values() if term in c)
        if not df:
            continue
        idf = math.log(1 + (len(terms) - df + 0.5) / (df + 0.5))
        for doc, counts in terms.items():
            tf = counts.get(term, 0)
            if tf:
                length = sum(counts.values())
                scores[doc] = scores.get(doc, 0.0) + idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * length / avg))
    return sorted(scores.items(), key=lambda item: (-item[1], item[0]))[:k]


def assert_same(index: KeywordIndex, conn: sqlite3.Connection, live: dict[int, str], queries: list[str]) -> None:
    for query in queries:
        got = index.search(conn, query, 7)
        expected = reference_bm25(live, query, 7)
        assert [d for d, _ in got] == [d for d, _ in expected], query
        assert np.allclose([s for _, s in got], [s for _, s in expected])


@pytest.fixture
def conn(tmp_path):
    # the default isolation level opens a transaction before writes, as the stores do
    connection = sqlite3.connect(tmp_path / "kw.sqlite")
    yield connection
    connection.close()


@pytest.mark.parametrize("bucket_bits", [8, 2])
def test_random_history_matches_reference(conn, monkeypatch, bucket_bits):
    monkeypatch.setattr(keyword_index, "MERGE_AT", 3)  # merge often so merged and unmerged buckets mix
    # 17 words: all in one bucket of 256 term ids, or spread over buckets of 4
    monkeypatch.setattr(keyword_postings, "BUCKET_BITS", bucket_bits)
    if bucket_bits == 2:  # and every postings row read by the term's slices, not whole
        monkeypatch.setattr(keyword_postings, "_WHOLE_ROW", 0)
    rng = random.Random(11)
    index = KeywordIndex()
    index.create(conn)
    live: dict[int, str] = {}
    next_rowid = 1
    queries = ["alpha beta", "gamma", "pi rho sigma", "delta delta epsilon", "nothing here"]
    for step in range(40):
        if live and rng.random() < 0.4:
            gone = rng.sample(sorted(live), k=min(len(live), rng.randint(1, 6)))
            index.remove(conn, gone)
            for doc in gone:
                del live[doc]
        added = {}
        for _ in range(rng.randint(0, 8)):
            added[next_rowid] = " ".join(rng.choices(WORDS, k=rng.randint(0, 12)))
            next_rowid += 1
        if step == 20 and live:  # a store that reuses the rowid of a removed document
            reused = max(live)
            index.remove(conn, [reused])
            del live[reused]
            added[reused] = "omega omega alpha"
        index.add(conn, sorted(added.items()))
        live.update(added)
        conn.commit()
        assert_same(index, conn, live, queries + ["omega"])
    stats = dict(conn.execute("SELECT key, value FROM kw_stats"))
    assert stats["docs"] == len(live)
    rows = within_tiered_bound(conn, 3)
    assert (len(rows) > 1) == (bucket_bits == 2)


def within_tiered_bound(conn: sqlite3.Connection, fan_out: int) -> dict[int, int]:
    """Rows per bucket, checked against the tiered merge's bound: fewer than ``fan_out`` per tier of the bucket's
    size (what keeps the rows a query reads bounded)."""
    rows = {bucket: (count, size) for bucket, count, size in conn.execute(
        "SELECT bucket, COUNT(*), SUM(length(gaps)) / 2 FROM kw_buckets GROUP BY bucket")}
    for bucket, (count, size) in rows.items():
        assert count <= (fan_out - 1) * (keyword_postings.tier(size, fan_out) + 1), (bucket, count, size)
    return {bucket: count for bucket, (count, _) in rows.items()}


def test_compaction_drops_tombstones(conn):
    index = KeywordIndex()
    index.create(conn)
    docs = {i: f"alpha beta {'gamma ' * (i % 5)} doc{i}" for i in range(1, 30_001)}
    index.add(conn, list(docs.items()))
    index.remove(conn, list(range(1, 25_001)))  # far past a quarter of the postings: everything is rewritten
    for doc in range(1, 25_001):
        del docs[doc]
    assert conn.execute("SELECT COUNT(*) FROM kw_deleted").fetchone()[0] == 0
    postings = sum(len(gaps) // 2 for (gaps,) in conn.execute("SELECT gaps FROM kw_buckets"))
    assert postings == sum(len(set(Analyzer(analyzer_settings(None)).terms(t))) for t in docs.values())
    got = index.search(conn, "gamma doc25009", 5)
    assert got[0][0] == 25009
    assert [d for d, _ in got] == [d for d, _ in reference_bm25(docs, "gamma doc25009", 5)]


def test_filter_restricts_candidates(conn):
    index = KeywordIndex()
    index.create(conn)
    conn.execute("CREATE TABLE records (rowid INTEGER PRIMARY KEY, grp INTEGER)")
    conn.executemany("INSERT INTO records VALUES (?, ?)", [(i, i % 2) for i in range(1, 11)])
    index.add(conn, [(i, "alpha " * i) for i in range(1, 11)])
    got = index.search(conn, "alpha", 3, "SELECT rowid FROM records WHERE grp = ?", [1])
    assert [d for d, _ in got] == [9, 7, 5]


def test_first_format_index_is_converted(conn):
    """A KB written by the first format (a row per posting) opens with the same scores."""
    analyzer = Analyzer(analyzer_settings(None))
    docs = {1: "alpha beta beta", 2: "gamma alpha", 3: "delta"}
    conn.execute("CREATE TABLE kw_terms (term TEXT PRIMARY KEY, id INTEGER NOT NULL UNIQUE, df INTEGER NOT NULL)")
    conn.execute("CREATE TABLE kw_postings (term_id INTEGER, doc INTEGER, tf INTEGER, PRIMARY KEY (term_id, doc))")
    conn.execute("CREATE TABLE kw_docs (doc INTEGER PRIMARY KEY, length INTEGER NOT NULL, term_ids BLOB NOT NULL)")
    conn.execute("CREATE TABLE kw_stats (key TEXT PRIMARY KEY, value INTEGER NOT NULL)")
    ids: dict[str, int] = {}
    for doc, text in docs.items():
        counts = Counter(analyzer.terms(text))
        for term, tf in counts.items():
            ids.setdefault(term, len(ids) + 1)
            conn.execute("INSERT INTO kw_postings VALUES (?, ?, ?)", (ids[term], doc, tf))
        conn.execute("INSERT INTO kw_docs VALUES (?, ?, ?)", (doc, sum(counts.values()),
                                                              np.array([ids[t] for t in counts]).tobytes()))
    for term, term_id in ids.items():
        df = sum(1 for text in docs.values() if term in analyzer.terms(text))
        conn.execute("INSERT INTO kw_terms VALUES (?, ?, ?)", (term, term_id, df))
    conn.executemany("INSERT INTO kw_stats VALUES (?, ?)", [("docs", 3), ("length", 6), ("next_term", len(ids) + 1)])
    index = KeywordIndex()
    index.create(conn)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    assert "kw_postings" not in tables and "kw_terms" not in tables and "kw_segments" not in tables
    assert_same(index, conn, docs, ["alpha", "beta gamma", "delta alpha"])
    index.remove(conn, [1])
    index.add(conn, [(4, "beta beta beta")])
    assert_same(index, conn, {2: docs[2], 3: docs[3], 4: "beta beta beta"}, ["alpha", "beta"])


def test_analyzer_fast_path_agrees_with_regex():
    analyzer = Analyzer(analyzer_settings(None))
    import re

    text = "Hello, world! x_y 3.14 don't e-mail A\tB\nC (parenthesised) [brackets] über Café"
    ascii_part = text.split(" über")[0]
    assert analyzer.tokens(ascii_part) == re.findall(r"\w+", ascii_part.lower())
    assert analyzer.tokens("Café über") == ["cafe", "uber"]
    assert analyzer.terms("The running dogs ran") == ["run", "dog", "ran"]
    assert analyzer.term_counts("dogs dog the DOG") == {"dog": 3}


def test_accent_folding_drops_exactly_the_combining_marks():
    """The folding (a character class and a table, built once) drops what a test of every character would:
    every combining mark lies below the bound the scan stops at, and real non-ASCII text folds the same."""
    from stores.keyword import analysis

    assert all(not unicodedata.combining(chr(c)) for c in range(analysis._COMBINING_BELOW, 0x110000))
    marks = [chr(c) for c in range(analysis._COMBINING_BELOW) if unicodedata.combining(chr(c))]
    texts = ["Café über naïve Ångström façade", "".join(marks), "x" + "".join(marks[::-1]) + "y\U0001e94a z",
             *_debian_non_ascii(200)]
    for text in texts:
        normal = unicodedata.normalize("NFKD", text.lower())
        assert analysis._fold_accents(text.lower()) == "".join(c for c in normal if not unicodedata.combining(c))


def _debian_non_ascii(count: int) -> list[str]:
    """Non-ASCII lines of the Debian documentation on this machine (changelogs, copyright files)."""
    found: list[str] = []
    for path in sorted(Path("/usr/share/doc").glob("*/copyright")):
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError):
            continue
        found += [line for line in lines if not line.isascii()]
        if len(found) >= count:
            break
    return found[:count]

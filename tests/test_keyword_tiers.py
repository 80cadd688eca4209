"""Tiered merges of the keyword index's bucket rows (issue 34): a small commit costs what it changes, scores stay
exactly those of whole-bucket merges and of a brute-force BM25, indexes written before open and answer the same.

The whole-bucket policy they replace (a bucket's rows merged into one once it had ``MERGE_AT``) is kept here as
``WholeMerges``, the twin every history is replayed on."""

from __future__ import annotations

import json
import random
import re
import shutil
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stores.keyword import index as keyword_index
from stores.keyword import postings as keyword_postings
from stores.keyword.index import KeywordIndex
from tests.test_keyword_index import reference_bm25, within_tiered_bound

ROOT = Path(__file__).resolve().parents[1]
SCIFACT = ROOT.parent / "shared" / "datasets" / "scifact" / "corpus.jsonl"
FIXTURE = ROOT / "fixtures" / "keyword_index_format4_whole_merges.sqlite"


class WholeMerges(KeywordIndex):
    """The policy before tiers: every bucket with ``MERGE_AT`` rows merged whole."""

    def _merge_crowded(self, conn: sqlite3.Connection, buckets: list[int]) -> None:
        crowded = keyword_postings.crowded(conn, buckets, keyword_index.MERGE_AT)
        if crowded:
            self._merge_buckets(conn, [(bucket, 0) for bucket in crowded])


def sentences(limit: int) -> list[str]:
    """Real text: SciFact's abstracts cut into sentences, read in place."""
    if not SCIFACT.exists():
        pytest.skip(f"the SciFact corpus is not on this machine ({SCIFACT})")
    out: list[str] = []
    with open(SCIFACT, encoding="utf-8") as lines:
        for line in lines:
            row = json.loads(line)
            out += [s for s in re.split(r"(?<=[.!?])\s+", row["text"]) if s.strip()]
            if len(out) >= limit:
                break
    return out[:limit]


def answers(index: KeywordIndex, conn: sqlite3.Connection, queries: Sequence[str]) -> list[list[tuple[int, float]]]:
    return [index.search(conn, query, 10) for query in queries]


def assert_like_reference(got: list[tuple[int, float]], live: dict[int, str], query: str) -> None:
    expected = reference_bm25(live, query, 10)
    assert [d for d, _ in got] == [d for d, _ in expected], query
    assert np.allclose([s for _, s in got], [s for _, s in expected], rtol=1e-12, atol=0), query


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.integers(1, 4), st.integers(1, 5_000), st.integers(1, 200_000)), min_size=1,
                max_size=400), st.sampled_from([3, 4, 8]))
def test_the_policy_keeps_fewer_than_fan_out_rows_per_tier(sizes, fan_out):
    rows: list[int] = []
    for size in sizes:
        rows.append(size)
        at = keyword_postings.tiered_suffix(rows, fan_out)
        if at is not None:
            assert len(rows) - at >= fan_out  # a merge takes at least a full tier's rows
            rows[at:] = [sum(rows[at:])]
        assert keyword_postings.tiered_suffix(rows, fan_out) is None  # one pass leaves nothing to merge
        assert len(rows) <= (fan_out - 1) * (keyword_postings.tier(sum(rows), fan_out) + 1)


def test_small_commits_beside_a_large_bucket_do_not_rewrite_it(tmp_path, monkeypatch):
    """A bulk write of 6,000 sentences, then 300 commits of one document, on both policies: the bulk write's rows
    past the smallest tier are never rewritten by tiered merges (whole-bucket merges rewrote a bucket at every
    seventh commit that touched it), and they insert a fraction of the postings bytes whole merges do."""
    inserted = [0]
    real_insert = keyword_postings.insert

    def counting_insert(conn: sqlite3.Connection, rows) -> None:
        rows = list(rows)
        inserted[0] += sum(sum(len(bytes(column)) for column in row[2:9]) for row in rows)
        real_insert(conn, rows)

    monkeypatch.setattr(keyword_postings, "insert", counting_insert)
    texts = sentences(6_300)
    written = {}
    for name, index in (("tiered", KeywordIndex()), ("whole", WholeMerges())):
        rng = random.Random(5)
        conn = sqlite3.connect(tmp_path / f"{name}.sqlite")
        index.create(conn)
        index.add(conn, list(enumerate(texts[:6_000], start=1)))
        conn.commit()
        large = {rowid for (rowid,) in conn.execute("SELECT rowid FROM kw_buckets WHERE length(gaps) / 2 >= ?",
                                                    (keyword_postings.TIER_BASE,))}
        assert len(large) > 10
        inserted[0] = 0
        for doc in range(6_001, 6_301):
            index.add(conn, [(doc, texts[doc - 1] + " " + rng.choice(texts))])
            conn.commit()
        written[name] = inserted[0]
        remaining = {rowid for (rowid,) in conn.execute("SELECT rowid FROM kw_buckets")}
        if name == "tiered":
            assert large <= remaining  # every large row of the bulk write still there, as written
            within_tiered_bound(conn, keyword_index.MERGE_AT)
        else:
            assert not large <= remaining
        conn.close()
    assert written["tiered"] * 3 < written["whole"], written


@pytest.mark.parametrize("tier_base", [4, 512])
def test_many_small_commits_with_removals_and_replacements_score_exactly(tmp_path, monkeypatch, tier_base):
    """Real sentences, 400 commits of one to three documents (a fifth also remove one, a tenth replace one: the
    removal and the new text in one commit), on two indexes: tiered merges and the whole-bucket merges they
    replace. After every commit both give the same top 10 to the last bit, equal to a brute-force BM25; with
    ``TIER_BASE`` 4, rows of several tiers form and merge with tombstones among them."""
    monkeypatch.setattr(keyword_postings, "TIER_BASE", tier_base)
    texts = sentences(2_000)
    rng = random.Random(34)
    queries = [rng.choice(texts)[:60] for _ in range(6)] + ["cancer cells", "protein expression in mice"]
    tiered_conn, whole_conn = sqlite3.connect(tmp_path / "tiered.sqlite"), sqlite3.connect(tmp_path / "whole.sqlite")
    tiered, whole = KeywordIndex(), WholeMerges()
    live: dict[int, str] = {}
    for index, conn in ((tiered, tiered_conn), (whole, whole_conn)):
        index.create(conn)
        index.add(conn, list(enumerate(texts[:300], start=1)))
        conn.commit()
    live.update(enumerate(texts[:300], start=1))
    next_doc = 301
    for step in range(400):
        gone: list[int] = []
        if step % 5 == 0 or step % 10 == 7:
            gone = [rng.choice(sorted(live))]
        added = {}
        for _ in range(rng.randint(1, 3)):
            added[next_doc] = rng.choice(texts)
            next_doc += 1
        for index, conn in ((tiered, tiered_conn), (whole, whole_conn)):
            if gone:
                index.remove(conn, gone)
            index.add(conn, sorted(added.items()))
            conn.commit()
        for doc in gone:
            del live[doc]
        live.update(added)
        if step % 20 == 19 or step == 399:
            got = answers(tiered, tiered_conn, queries)
            assert got == answers(whole, whole_conn, queries)  # to the last bit
            for query, result in zip(queries, got, strict=True):
                assert_like_reference(result, live, query)
    rows = within_tiered_bound(tiered_conn, keyword_index.MERGE_AT)
    assert max(rows.values()) > 1  # rows of later commits sit beside merged ones
    assert dict(tiered_conn.execute("SELECT key, value FROM kw_stats"))["docs"] == len(live)


def test_a_merge_rolled_back_leaves_the_index_as_it_was(tmp_path, monkeypatch):
    """A tiered merge runs inside the caller's transaction: a rollback (a kill before the commit) undoes it with
    the write that caused it."""
    monkeypatch.setattr(keyword_postings, "TIER_BASE", 4)
    texts = sentences(200)
    conn = sqlite3.connect(tmp_path / "kw.sqlite")
    index = KeywordIndex()
    index.create(conn)
    for doc, text in enumerate(texts[:150], start=1):
        index.add(conn, [(doc, text)])
        conn.commit()
    before_rows = conn.execute("SELECT bucket, seg, gaps FROM kw_buckets ORDER BY bucket, seg").fetchall()
    queries = [texts[3][:50], texts[77][:50], "cells"]
    before = answers(index, conn, queries)
    index.add(conn, [(doc, text) for doc, text in enumerate(texts[150:], start=151)])
    assert conn.execute("SELECT bucket, seg, gaps FROM kw_buckets ORDER BY bucket, seg").fetchall() != before_rows
    conn.rollback()
    assert conn.execute("SELECT bucket, seg, gaps FROM kw_buckets ORDER BY bucket, seg").fetchall() == before_rows
    assert answers(index, conn, queries) == before


def test_an_index_of_whole_bucket_merges_opens_and_answers_as_its_code_did(tmp_path):
    """fixtures/keyword_index_format4_whole_merges.sqlite (written by the code before tiers, see its .py): today's
    code opens it, gives that code's answers to the last bit, then goes on with commits of one document, removals
    and replacements, exactly like the whole-bucket policy on another copy and like a brute-force BM25."""
    copies = [tmp_path / "tiered.sqlite", tmp_path / "whole.sqlite"]
    for copy in copies:
        shutil.copy(FIXTURE, copy)
    tiered_conn, whole_conn = (sqlite3.connect(copy) for copy in copies)
    tiered, whole = KeywordIndex(), WholeMerges()
    tiered.create(tiered_conn)
    whole.create(whole_conn)
    recorded: dict[str, list[tuple[int, float]]] = {}
    for query, _, doc, score in tiered_conn.execute("SELECT * FROM fixture_answers ORDER BY query, rank"):
        recorded.setdefault(query, []).append((doc, score))
    queries = ["alpha beta", "gamma", "pi rho sigma", "delta delta epsilon", "omega café", "naïve Über tau",
               "nothing here", "kappa lambda mu nu xi"]
    assert {q: a for q, a in zip(queries, answers(tiered, tiered_conn, queries), strict=True) if a} == recorded
    live = dict(tiered_conn.execute("SELECT doc, text FROM fixture_live"))
    assert tiered_conn.execute("SELECT COUNT(*) FROM kw_deleted").fetchone()[0] > 0  # tombstones, as written
    words = sorted({word for text in live.values() for word in text.split()})
    rng = random.Random(27)
    next_doc = max(live) + 1
    for step in range(60):
        gone = [rng.choice(sorted(live))] if step % 4 == 1 else []
        text = " ".join(rng.choices(words, k=rng.randint(1, 15)))
        for index, conn in ((tiered, tiered_conn), (whole, whole_conn)):
            if gone:
                index.remove(conn, gone)
            index.add(conn, [(next_doc, text)])
            conn.commit()
        for doc in gone:
            del live[doc]
        live[next_doc] = text
        next_doc += 1
        got = answers(tiered, tiered_conn, queries)
        assert got == answers(whole, whole_conn, queries)
        for query, result in zip(queries, got, strict=True):
            assert_like_reference(result, live, query)
    within_tiered_bound(tiered_conn, keyword_index.MERGE_AT)

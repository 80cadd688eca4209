"""Issue 34: a FAISS generation's metadata columns are built per segment, so a small commit's first filtered search
reads the commit's rows only, and filters answer exactly as a brute-force check over the live records does.

Real FAISS segments and SQLite in a temporary folder; the expected answers come from a Python model of the live
records (``kb_base.filters.matches``, numpy inner products), kept beside the store through every commit.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kb_base.filters import matches, parse_filter
from stores.base import Record, StoreContext
from stores.faiss import merge
from stores.faiss.segment_columns import generation_columns
from stores.faiss.store import FaissStore

DIM = 16
FILTERS = [
    {"group": 3},
    {"group": {"$ne": 3}},
    {"group": {"$gte": 2, "$lt": 5}},
    {"tag": {"$in": ["alpha", "gamma"]}},
    {"tag": {"$nin": ["alpha"]}},
    {"tag": {"$gt": "beta"}},
    {"flag": True},
    {"$or": [{"flag": False}, {"group": 0}]},
    {"$and": [{"tag": "delta"}, {"group": {"$lte": 4}}]},
    {"missing_key": "x"},
    {"rare": {"$ne": 1}},
]


@pytest.fixture(autouse=True)
def _no_background_merges(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(merge, "ENABLED", False)  # merges happen where the test asks for them


def _store(folder: Path, kind: str = "FLAT") -> FaissStore:
    return FaissStore(StoreContext("cols", folder, settings={"index": {"type": kind}}))


def _metadata(rng: np.random.Generator, version: int) -> dict[str, Any]:
    """Mixed kinds per key across records (numbers, strings, booleans, missing, a list), as real metadata has."""
    out: dict[str, Any] = {"group": int(rng.integers(0, 8)), "tag": str(rng.choice(["alpha", "beta", "gamma",
                                                                                      "delta"])), "v": version}
    if rng.random() < 0.6:
        out["flag"] = bool(rng.random() < 0.5)
    if rng.random() < 0.1:
        out["group"] = str(out["group"])  # a string where most rows hold a number
    if rng.random() < 0.05:
        out["rare"] = 1
    if rng.random() < 0.05:
        out["tag"] = ["alpha", "beta"]  # a list: matches no comparison
    return out


class Model:
    """The live records, as the store should hold them."""

    def __init__(self) -> None:
        self.records: dict[str, tuple[dict[str, Any], np.ndarray]] = {}

    def expected_ids(self, query: np.ndarray, k: int, flt: dict[str, Any]) -> tuple[list[str], int]:
        parsed = parse_filter(flt)
        chosen = [(i, v) for i, (m, v) in self.records.items() if matches(parsed, m)]
        scores = np.array([float(v @ query) for _, v in chosen])
        order = np.argsort(-scores, kind="stable")[:k]
        return [chosen[i][0] for i in order], len(chosen)


def _commit(store: FaissStore, model: Model, rng: np.random.Generator, version: int, start: int, adds: int) -> int:
    """One commit: ``adds`` new records, some replaced, some deleted (of earlier commits and of this one)."""
    vectors = rng.normal(size=(adds + 10, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    new = [Record(f"r{start + i}", f"text {start + i}", _metadata(rng, version), vectors[i]) for i in range(adds)]
    existing = sorted(model.records)
    with store.begin() as tx:
        tx.upsert(new)
        for record in new:
            model.records[record.id] = (record.metadata, record.vector)
        if existing:
            replaced = [existing[int(i)] for i in rng.integers(0, len(existing), min(4, len(existing)))]
            fresh = [Record(rid, f"text {rid} v{version}", _metadata(rng, version), vectors[adds + j])
                     for j, rid in enumerate(dict.fromkeys(replaced))]
            tx.upsert(fresh)
            for record in fresh:
                model.records[record.id] = (record.metadata, record.vector)
            doomed = [existing[int(i)] for i in rng.integers(0, len(existing), min(3, len(existing)))]
            if rng.random() < 0.3 and new:
                doomed.append(new[0].id)  # deleted in the commit that added it
            tx.delete(list(dict.fromkeys(doomed)))
            for rid in doomed:
                model.records.pop(rid, None)
    return start + adds


def _check(store: FaissStore, model: Model, rng: np.random.Generator) -> None:
    query = rng.normal(size=DIM).astype(np.float32)
    query /= np.linalg.norm(query)
    for flt in FILTERS:
        expected, matching = model.expected_ids(query, 10, flt)
        parsed = parse_filter(flt)
        assert store.count(parsed) == matching, flt
        found = [hit.record.id for hit in store.similarity(query, 10, parsed)]
        assert found == expected, flt
        rows = store.similarity_rows(query, 10, parsed)  # the no-snapshot path, once columns are read
        assert [row[0] for row in rows] == expected, flt


@pytest.mark.parametrize("kind", ["FLAT", "HNSW"])
def test_filters_answer_exactly_through_commits_deletions_replacements_and_merges(tmp_path: Path, kind: str) -> None:
    rng = np.random.default_rng(34)
    store = _store(tmp_path, kind)
    model = Model()
    start = 0
    try:
        for commit in range(40):
            start = _commit(store, model, rng, commit, start, int(rng.choice([1, 3, 40, 150])))
            if commit % 3 == 0:
                _check(store, model, rng)  # some generations are never filtered: their columns are read later
            if commit % 13 == 12:
                assert store.merger.merge_now() >= 0
                _check(store, model, rng)
        store.merger.merge_now(force=True)  # one segment again: its columns are read from the records
        _check(store, model, rng)
        # HNSW's filtered traversal answers only for more than EXACT_MATCHES_MAX matches: every filter here is exact
        assert len(model.records) < 8_000
    finally:
        store.close()


def test_a_small_commit_reads_only_its_own_rows_into_columns(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    store = _store(tmp_path)
    model = Model()
    try:
        start = _commit(store, model, rng, 0, 0, 3000)
        _check(store, model, rng)
        read = store.metadata_rows_read
        assert read >= 3000 - 10  # the first filtered search read every row once

        start = _commit(store, model, rng, 1, start, 1)  # one added, four replaced, some deleted
        _check(store, model, rng)
        assert store.metadata_rows_read - read <= 5  # the new segment's rows: 1 added + up to 4 replacements
        read = store.metadata_rows_read

        with store.begin() as tx:  # deletions only: no new segment, nothing to read
            doomed = sorted(model.records)[:50]
            tx.delete(doomed)
        for rid in doomed:
            model.records.pop(rid)
        _check(store, model, rng)
        assert store.metadata_rows_read == read

        for commit in range(2, 12):  # ten more small commits: each reads its own rows, never the old ones
            start = _commit(store, model, rng, commit, start, 2)
            before = store.metadata_rows_read
            _check(store, model, rng)
            assert store.metadata_rows_read - before <= 6

        # a merge of segments whose columns were all read: the output's are gathered from them, no record is read
        assert store.merger.merge_now(force=True) == 1
        before = store.metadata_rows_read
        _check(store, model, rng)
        assert store.metadata_rows_read == before
        assert store.loader.current is not None and len(store.loader.current.segments) == 1
    finally:
        store.close()


def test_a_reader_behind_the_columns_reads_its_own(tmp_path: Path) -> None:
    """Columns read at generation B do not answer a reader still at G < B (rows deleted in (G, B] are missing from
    them): that reader reads the segment's rows in its own snapshot, and its answer is G's."""
    rng = np.random.default_rng(11)
    store = _store(tmp_path)
    model = Model()
    flt = parse_filter({"group": {"$gte": 0}})
    try:
        _commit(store, model, rng, 0, 0, 500)
        at_g = sum(1 for m, _ in model.records.values() if matches(flt, m))
        behind = sqlite3.connect(store.db_path)  # a reader that stays at generation G
        behind.execute("BEGIN")
        generation = int(behind.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()[0])
        with store._snapshot() as view:
            segments_g = view.segments
        assert segments_g is not None and segments_g.generation == generation
        with store.begin() as tx:
            tx.delete(sorted(model.records)[:100])
        after = store.count(flt)  # segment 1's columns read at G + 1, without the deleted rows
        assert after < at_g
        layout = segments_g.segments[0].layout
        assert layout.metadata is not None and layout.metadata[0] == generation + 1

        assert generation_columns(None, segments_g.segments, generation) is None  # the newer columns may not serve
        columns = generation_columns(behind, segments_g.segments, generation)
        assert columns is not None and columns.count(flt) == at_g
        assert layout.metadata[0] == generation  # the earlier columns serve every reader from G on
        assert store.count(flt) == after  # and the current generation's answer is unchanged
        behind.execute("COMMIT")
        behind.close()
    finally:
        store.close()

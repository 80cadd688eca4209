"""The similarity hot path: commits seen through the wal-index header, rows straight from the record cache,
the one-call query normalisation, and Documents built without validation."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kb_base.errors import InvalidInputError
from stores.base import Record, StoreContext
from stores.faiss.store import FaissStore
from stores.record_checks import check_query_vector, unit_query
from stores.sqlite.wal_watch import WalWatch
from tests.conformance.store_suite import records, unit

ROOT = Path(__file__).resolve().parent.parent


def _wal_database(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE IF NOT EXISTS t (x)")
    return conn


def _run(code: str) -> None:
    subprocess.run([sys.executable, "-c", textwrap.dedent(code)], check=True, cwd=ROOT, timeout=120)


def test_the_wal_header_moves_with_every_commit_of_any_process(tmp_path: Path) -> None:
    db = tmp_path / "db.sqlite"
    reader = _wal_database(db)
    watch = WalWatch(db)
    first = watch.header()
    assert first is not None and len(first) == 48
    reader.execute("SELECT COUNT(*) FROM t").fetchone()
    assert watch.header() == first, "a read changed the header"
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("INSERT INTO t VALUES (1)")
    second = watch.header()
    assert second != first
    _run(f"""
        import sqlite3
        conn = sqlite3.connect({str(db)!r}, isolation_level=None)
        conn.execute("INSERT INTO t VALUES (2)")
        conn.close()
    """)
    assert watch.header() not in (first, second)
    watch.close()
    assert watch.header() is None
    other.close()
    reader.close()


def test_no_shared_memory_file_means_no_header(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "rollback.sqlite", isolation_level=None)  # rollback journal: no -shm
    conn.execute("CREATE TABLE t (x)")
    assert WalWatch(tmp_path / "rollback.sqlite").header() is None
    conn.close()


def test_a_search_sees_another_processs_commit_at_once(tmp_path: Path) -> None:
    store = FaissStore(StoreContext("kb", tmp_path))
    store.upsert(records(3))
    assert [row[0] for row in store.similarity_rows(unit(1), 1)] == ["doc-1"]
    assert store._local.wal_watch.header() is not None  # the check without a system call is the one in use
    for text in ("changed once", "changed twice"):
        _run(f"""
            from pathlib import Path
            from stores.base import Record, StoreContext
            from stores.faiss.store import FaissStore
            from tests.conformance.store_suite import unit
            store = FaissStore(StoreContext("kb", Path({str(tmp_path)!r})))
            store.upsert([Record("doc-1", {text!r}, {{"i": 1}}, unit(1))])
        """)
        assert store.similarity_rows(unit(1), 1)[0][1] == text
    _run(f"""
        from pathlib import Path
        from stores.base import StoreContext
        from stores.faiss.store import FaissStore
        FaissStore(StoreContext("kb", Path({str(tmp_path)!r}))).delete(["doc-1"])
    """)
    assert "doc-1" not in {row[0] for row in store.similarity_rows(unit(1), 3)}


def test_searches_skip_data_version_until_the_header_moves(tmp_path: Path) -> None:
    store = FaissStore(StoreContext("kb", tmp_path))
    writer = FaissStore(StoreContext("kb", tmp_path))  # another driver: another SQLite connection
    writer.upsert(records(3))
    store.similarity_rows(unit(1), 1)
    store.similarity_rows(unit(1), 1)  # the header is known from here on
    statements: list[str] = []
    store._conn().set_trace_callback(statements.append)
    for _ in range(5):
        assert store.similarity_rows(unit(1), 1)[0][0] == "doc-1"
    assert not [s for s in statements if "data_version" in s], "an unchanged header still ran the PRAGMA"
    writer.upsert([Record("doc-1", "changed", {"i": 1}, unit(1))])
    assert store.similarity_rows(unit(1), 1)[0][1] == "changed"
    assert sum("data_version" in s for s in statements) == 1  # the header moved: asked SQLite once
    store._conn().set_trace_callback(None)


def test_rows_equal_hits_and_are_the_callers_own(tmp_path: Path) -> None:
    store = FaissStore(StoreContext("kb", tmp_path))
    store.upsert([Record("flat", "a flat one", {"n": 1, "s": "x", "f": 0.5, "b": True, "z": None}, unit(1)),
                  Record("nested", "a nested one", {"tags": ["x"], "inner": {"k": 1}}, unit(2)),
                  Record("huge", "a big integer", {"n": 2**64 + 1}, unit(3))])
    query = unit(1) + unit(2) + unit(3)
    for _ in range(2):  # from SQLite, then from the record cache
        rows = store.similarity_rows(query, 3)
        hits = store.similarity(query, 3)
        assert rows == [(h.record.id, h.record.text, h.record.metadata, h.score) for h in hits]
        for _, _, metadata, _ in rows:
            metadata["added"] = 1
            for value in metadata.values():
                if isinstance(value, list | dict):
                    value.clear()
    again = {row[0]: row[2] for row in store.similarity_rows(query, 3)}
    assert again == {"flat": {"n": 1, "s": "x", "f": 0.5, "b": True, "z": None},
                     "nested": {"tags": ["x"], "inner": {"k": 1}}, "huge": {"n": 2**64 + 1}}


_LIMIT = float(np.float32(1e18))  # squares of 64 such values stay below float32's maximum


def _reference_unit(vector: np.ndarray) -> np.ndarray:
    """What kb computed before the one-call path: float32 dot, float32 sqrt, float32 division; norms that
    underflow or overflow in float32 are taken in double (before: left unnormalised, or zeroed)."""
    array = check_query_vector(vector, vector.size)
    squared = np.dot(array, array)
    if 0 < squared < np.inf:
        return array.reshape(1, -1) / np.float32(np.sqrt(squared))
    norm = np.linalg.norm(array.astype(np.float64))
    return (array.reshape(1, -1) / norm).astype(np.float32) if norm > 0 else array.reshape(1, -1)


@settings(max_examples=300, deadline=None)
@pytest.mark.filterwarnings("ignore:overflow encountered", "ignore:underflow encountered")
@given(st.lists(st.floats(-_LIMIT, _LIMIT, width=32), min_size=1, max_size=64))
def test_the_one_call_normalisation_equals_the_checked_one_to_the_bit(values: list[float]) -> None:
    vector = np.asarray(values, dtype=np.float32)
    assert unit_query(vector, vector.size).tobytes() == _reference_unit(vector).tobytes()


@pytest.mark.parametrize("vector, dimension, message", [
    ([1.0, float("nan")], 2, "NaN or infinite"),
    ([1.0, float("inf")], 2, "NaN or infinite"),
    ([1.0, 2.0, 3.0], 2, "3 dimensions"),
    ([[1.0, 2.0]], 2, "non-empty list"),
    ([], None, "non-empty list"),
])
def test_bad_query_vectors_are_refused(vector: list, dimension: int | None, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        unit_query(vector, dimension)


@pytest.mark.filterwarnings("ignore:overflow encountered")
def test_a_zero_vector_stays_zero_and_an_overflowing_norm_still_normalises() -> None:
    assert not unit_query([0.0, 0.0], 2).any()
    big = unit_query([3e38, 3e38], 2)  # the float32 dot product overflows; the values are finite
    assert big.shape == (1, 2) and np.allclose(big, [[0.70710677, 0.70710677]])


def test_a_record_batch_hands_over_its_matrix_only_while_every_record_holds_its_row() -> None:
    from stores.record_batch import RecordBatch
    from stores.record_checks import checked_vectors

    matrix = np.arange(12, dtype=np.float32).reshape(4, 3) + 1
    batch = RecordBatch([f"r{i}" for i in range(4)], ["t"] * 4, [{}] * 4, [None] * 4, matrix)
    assert batch.columns() is batch and batch.vectors() is matrix and checked_vectors(batch, 3) is matrix
    assert batch[0].vector is not None and batch.columns() is None  # records handed out: they are the truth
    assert batch.vectors() is matrix  # while each still holds its own row
    batch[1].vector = np.ones(3, dtype=np.float32)  # a vector reassigned: stacked from the records again
    assert batch.vectors() is None
    assert checked_vectors(batch, 3).tolist() == [list(matrix[0]), [1.0, 1.0, 1.0], *map(list, matrix[2:])]

"""The store conformance suite: the behaviour every vector store driver must have.

A driver's test module subclasses ``StoreConformanceSuite`` and provides one
fixture, ``store_factory``: a callable ``() -> VectorStoreDriver`` that opens
the *same* (initially empty) store each time it is called, so that tests can
check persistence by closing one driver and opening another. Drivers that
lack keyword search set ``supports_keyword = False``; everything else is
mandatory.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kb_base.errors import FilterError, InvalidInputError, WriterBusyError, WriterClosedError
from kb_base.filters import matches, parse_filter
from stores.base import Record, VectorStoreDriver

DIM = 8
StoreFactory = Callable[[], VectorStoreDriver]


def unit(seed: int, dim: int = DIM) -> np.ndarray:
    vector = np.random.default_rng(seed).normal(size=dim).astype(np.float32)
    return vector / np.linalg.norm(vector)


def records(n: int, start: int = 0, tag: str = "v1") -> list[Record]:
    return [Record(f"doc-{i}", f"text {i} {tag}", {"i": i, "tag": tag, "even": i % 2 == 0}, unit(i))
            for i in range(start, start + n)]


# Metadata and filters for the property test: small key and value spaces so that filters often match.
_KEYS = ["a", "b", "c"]
_VALUES = st.one_of(st.integers(-3, 3), st.sampled_from([-1.5, 0.0, 2.5]), st.sampled_from(["x", "y", "z"]),
                    st.booleans())


def _comparison() -> st.SearchStrategy[dict[str, Any]]:
    scalar_ops = st.sampled_from(["$eq", "$ne"])
    order_ops = st.sampled_from(["$gt", "$gte", "$lt", "$lte"])
    orderable = st.one_of(st.integers(-3, 3), st.sampled_from([-1.5, 0.0, 2.5]), st.sampled_from(["x", "y", "z"]))
    return st.one_of(
        st.builds(lambda k, v: {k: v}, st.sampled_from(_KEYS), _VALUES),
        st.builds(lambda k, op, v: {k: {op: v}}, st.sampled_from(_KEYS), scalar_ops, _VALUES),
        st.builds(lambda k, op, v: {k: {op: v}}, st.sampled_from(_KEYS), order_ops, orderable),
        st.builds(lambda k, op, vs: {k: {op: vs}}, st.sampled_from(_KEYS), st.sampled_from(["$in", "$nin"]),
                  st.lists(_VALUES, min_size=1, max_size=3)),
    )


_FILTERS = st.recursive(
    _comparison(),
    lambda inner: st.one_of(
        st.builds(lambda cs: {"$and": cs}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda cs: {"$or": cs}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda c: {"$not": c}, inner),
    ),
    max_leaves=6,
)


class StoreConformanceSuite:
    supports_keyword = True

    def may_refuse(self, flt: Any) -> bool:
        """Whether the driver may answer this (parsed) filter with a FilterError instead of results.

        Drivers whose engine cannot express part of the filter language exactly override this with a
        precise rule; the default is that every filter must be answered.
        """
        return False

    @pytest.fixture
    def store(self, store_factory: StoreFactory) -> VectorStoreDriver:
        return store_factory()

    # --- records --------------------------------------------------------------------------

    def test_empty_store(self, store: VectorStoreDriver) -> None:
        assert store.count() == 0
        assert store.get(["nope"]) == []
        assert store.similarity(unit(1), 5) == []
        assert store.ids_where(None) == []

    def test_upsert_get_round_trip(self, store: VectorStoreDriver) -> None:
        metadata = {"s": "ünïcødé ✓", "i": 7, "f": 2.5, "t": True, "z": 0, "neg": -3}
        store.upsert([Record("a", "hello wörld", metadata, unit(1)), *records(3)])
        [got] = store.get(["a"], with_vectors=True)
        assert (got.id, got.text, got.metadata) == ("a", "hello wörld", metadata)
        assert type(got.metadata["t"]) is bool and type(got.metadata["z"]) is int
        assert got.vector is not None and np.allclose(got.vector, unit(1), atol=1e-5)
        assert [r.id for r in store.get(["doc-2", "missing", "a", "doc-0"])] == ["doc-2", "a", "doc-0"]
        assert store.count() == 4

    def test_upsert_replaces_by_id(self, store: VectorStoreDriver) -> None:
        store.upsert(records(5))
        store.upsert([Record("doc-1", "replaced", {"i": 100}, unit(999))])
        assert store.count() == 5
        [got] = store.get(["doc-1"])
        assert (got.text, got.metadata) == ("replaced", {"i": 100})
        assert store.similarity(unit(999), 1)[0].record.id == "doc-1"
        assert all(h.record.id != "doc-1" for h in store.similarity(unit(1), 2) if h.score > 0.999)

    def test_delete_and_delete_where(self, store: VectorStoreDriver) -> None:
        store.upsert(records(10))
        assert store.delete(["doc-0", "doc-1", "not-there"]) == 2
        assert store.count() == 8
        assert store.delete_where(parse_filter({"even": True})) == 4
        assert sorted(store.ids_where(None)) == ["doc-3", "doc-5", "doc-7", "doc-9"]
        assert all(h.record.id in {"doc-3", "doc-5", "doc-7", "doc-9"} for h in store.similarity(unit(0), 10))

    def test_clear(self, store: VectorStoreDriver) -> None:
        store.upsert(records(4))
        store.clear()
        assert store.count() == 0 and store.similarity(unit(1), 3) == []
        store.upsert(records(2, start=10))
        assert store.count() == 2

    def test_count_and_ids_with_filter(self, store: VectorStoreDriver) -> None:
        store.upsert(records(10))
        assert store.count(parse_filter({"even": False})) == 5
        assert store.count(parse_filter({"i": {"$gte": 7}})) == 3
        assert sorted(store.ids_where(parse_filter({"i": {"$in": [1, 4]}}))) == ["doc-1", "doc-4"]

    def test_iter_records_covers_everything_once(self, store: VectorStoreDriver) -> None:
        store.upsert(records(23))
        seen = [r.id for batch in store.iter_records(batch_size=5) for r in batch]
        assert sorted(seen) == sorted(f"doc-{i}" for i in range(23))
        batches = list(store.iter_records(batch_size=5, with_vectors=True))
        assert all(len(b) <= 5 for b in batches) and all(r.vector is not None for b in batches for r in b)

    # --- similarity ------------------------------------------------------------------------

    def test_similarity_orders_by_cosine(self, store: VectorStoreDriver) -> None:
        data = records(30)
        store.upsert(data)
        query = unit(7) + 0.1 * unit(8)
        hits = store.similarity(query, 5)
        expected = sorted(data, key=lambda r: -float(np.dot(r.vector, query / np.linalg.norm(query))))[:5]
        assert [h.record.id for h in hits] == [r.id for r in expected]
        assert all(a.score >= b.score for a, b in zip(hits, hits[1:], strict=False))
        assert hits[0].score == pytest.approx(float(np.dot(unit(7), query / np.linalg.norm(query))), abs=1e-4)

    def test_similarity_k_bounds(self, store: VectorStoreDriver) -> None:
        store.upsert(records(3))
        assert len(store.similarity(unit(1), 50)) == 3
        assert store.similarity(unit(1), 0) == []

    def test_similarity_with_filter_is_best_among_matches(self, store: VectorStoreDriver) -> None:
        data = records(40)
        store.upsert(data)
        query = unit(3)
        hits = store.similarity(query, 4, parse_filter({"even": True}))
        evens = sorted((r for r in data if r.metadata["even"]), key=lambda r: -float(np.dot(r.vector, query)))
        assert [h.record.id for h in hits] == [r.id for r in evens[:4]]
        assert store.similarity(query, 4, parse_filter({"tag": "nothing"})) == []

    def test_similarity_with_vectors(self, store: VectorStoreDriver) -> None:
        store.upsert(records(5))
        hits = store.similarity(unit(2), 2, with_vectors=True)
        assert hits[0].record.vector is not None and np.allclose(hits[0].record.vector, unit(2), atol=1e-5)

    def test_query_vector_validation(self, store: VectorStoreDriver) -> None:
        store.upsert(records(3))
        with pytest.raises(InvalidInputError, match="dimensions"):
            store.similarity(np.ones(DIM + 1, dtype=np.float32), 2)
        with pytest.raises(InvalidInputError, match="NaN"):
            store.similarity(np.full(DIM, np.nan, dtype=np.float32), 2)

    # --- filters: the driver agrees with the reference semantics ---------------------------

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(raw=_FILTERS)
    def test_filters_match_reference_semantics(self, store_factory: StoreFactory, raw: dict[str, Any]) -> None:
        # One store per test (hypothesis re-runs the body on the same instance), with seeded random
        # metadata covering every value kind and missing keys; hypothesis draws the filters.
        if not hasattr(self, "_property_store"):
            rng = random.Random(1234)
            pool: list[Any] = [-3, -1, 0, 1, 2, 3, -1.5, 0.0, 2.5, "x", "y", "z", True, False]
            self._property_metadata = [{k: rng.choice(pool) for k in _KEYS if rng.random() < 0.7}
                                       for _ in range(40)]
            self._property_store = store_factory()
            self._property_store.upsert([Record(f"m{i}", f"t{i}", m, unit(i))
                                         for i, m in enumerate(self._property_metadata)])
        flt = parse_filter(raw)
        expected = sorted(f"m{i}" for i, m in enumerate(self._property_metadata) if matches(flt, m))
        try:
            got = sorted(self._property_store.ids_where(flt))
        except FilterError:
            assert self.may_refuse(flt), f"driver refused a filter it must answer: {raw}"
            return
        assert got == expected, raw
        assert self._property_store.count(flt) == len(expected), raw

    # --- transactions ------------------------------------------------------------------------

    def test_transaction_isolation_and_read_your_writes(self, store: VectorStoreDriver) -> None:
        store.upsert(records(3))
        with store.begin() as tx:
            tx.upsert(records(2, start=10))
            tx.delete(["doc-0"])
            assert tx.count() == 4
            assert [r.id for r in tx.get(["doc-10", "doc-0"])] == ["doc-10"]
            assert tx.similarity(unit(10), 1)[0].record.id == "doc-10"
            assert store.count() == 3  # nobody else sees it yet
            assert store.get(["doc-10"]) == []
        assert store.count() == 4
        assert store.get(["doc-0"]) == []

    def test_rollback_on_exception_leaves_store_usable(self, store: VectorStoreDriver) -> None:
        store.upsert(records(3))
        with pytest.raises(RuntimeError):
            with store.begin() as tx:
                tx.clear()
                tx.upsert(records(5, start=50))
                raise RuntimeError("boom")
        assert sorted(store.ids_where(None)) == ["doc-0", "doc-1", "doc-2"]
        store.upsert(records(1, start=99))
        assert store.count() == 4

    def test_single_writer(self, store: VectorStoreDriver) -> None:
        errors: list[BaseException] = []
        with store.begin():
            def second() -> None:
                try:
                    store.begin(timeout=0.2)
                except BaseException as exc:  # noqa: BLE001 - recorded for the assertion
                    errors.append(exc)

            thread = threading.Thread(target=second)
            thread.start()
            thread.join()
        assert len(errors) == 1 and isinstance(errors[0], WriterBusyError)
        with store.begin(timeout=1) as tx:  # released after the first commit
            tx.upsert(records(1))

    def test_closed_transaction_refuses_use(self, store: VectorStoreDriver) -> None:
        tx = store.begin()
        tx.upsert(records(1))
        tx.commit()
        with pytest.raises(WriterClosedError):
            tx.upsert(records(1, start=5))

    @pytest.mark.parametrize("bad", [
        [Record("x", "t", {}, unit(1)), Record("x", "t", {}, unit(2))],
        [Record("x", "t", {}, None)],
        [Record("x", "t", {}, np.array([np.nan] * DIM, dtype=np.float32))],
        [Record("", "t", {}, unit(1))],
        [Record("x", "t", {"o": object()}, unit(1))],
    ], ids=["duplicate-ids", "no-vector", "nan-vector", "empty-id", "non-json-metadata"])
    def test_bad_records_are_refused(self, store: VectorStoreDriver, bad: list[Record]) -> None:
        store.upsert(records(2))
        with pytest.raises(InvalidInputError):
            with store.begin() as tx:
                tx.upsert(records(1, start=20))
                tx.upsert(bad)
        assert sorted(store.ids_where(None)) == ["doc-0", "doc-1"]

    def test_wrong_dimension_is_refused(self, store: VectorStoreDriver) -> None:
        store.upsert(records(2))
        with pytest.raises(InvalidInputError, match="dimensions"):
            store.upsert([Record("x", "t", {}, np.ones(DIM * 2, dtype=np.float32))])
        assert store.count() == 2

    # --- persistence ---------------------------------------------------------------------------

    def test_persists_across_reopen(self, store_factory: StoreFactory) -> None:
        first = store_factory()
        first.upsert(records(6))
        first.delete(["doc-5"])
        first.close()
        second = store_factory()
        assert second.count() == 5
        assert second.similarity(unit(2), 1)[0].record.id == "doc-2"
        assert second.get(["doc-3"])[0].metadata == {"i": 3, "tag": "v1", "even": False}

    # --- keyword ---------------------------------------------------------------------------------

    def test_keyword_search(self, store: VectorStoreDriver) -> None:
        if not self.supports_keyword:
            pytest.skip("driver declares no keyword search")
        store.upsert([
            Record("cats", "Cats purr when they are content.", {"kind": "animal"}, unit(1)),
            Record("dogs", "Dogs bark at the mail carrier.", {"kind": "animal"}, unit(2)),
            Record("tax", "Taxes are due in April, cats or no cats.", {"kind": "money"}, unit(3)),
        ])
        hits = store.keyword("cats purr", 3)
        assert hits[0].record.id == "cats"
        assert {h.record.id for h in hits} == {"cats", "tax"}
        assert [h.record.id for h in store.keyword("cats", 5, parse_filter({"kind": "money"}))] == ["tax"]
        assert len(store.keyword("cats", 1)) == 1
        assert store.keyword("   ", 3) == []
        assert store.keyword("zebra", 3) == []

    # --- concurrency -------------------------------------------------------------------------------

    def test_readers_see_whole_commits(self, store: VectorStoreDriver) -> None:
        store.upsert(records(20, tag="v0"))
        errors: list[BaseException] = []
        mixed: list[tuple[int, list[str]]] = []  # (hits, their versions) of each read that was not one whole commit
        stop = threading.Event()

        def reader() -> None:
            try:
                while not stop.is_set():
                    hits = store.similarity(unit(5), 20)
                    tags = {h.record.metadata["tag"] for h in hits}
                    if len(tags) != 1 or len(hits) != 20:  # one version, and all of it
                        mixed.append((len(hits), sorted(tags)))
            except BaseException as exc:  # noqa: BLE001 - surfaced by the assertion below
                errors.append(exc)

        threads = [threading.Thread(target=reader) for _ in range(3)]
        for thread in threads:
            thread.start()
        for version in range(1, 16):
            with store.begin() as tx:
                tx.upsert(records(20, tag=f"v{version}"))
        stop.set()
        for thread in threads:
            thread.join()
        assert errors == [] and mixed == []
        assert {r.metadata["tag"] for r in store.get([f"doc-{i}" for i in range(20)])} == {"v15"}

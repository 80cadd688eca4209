"""Issue 31: metadata columns are compact (slots no row uses dropped, integers and string codes narrowed) and
still answer every filter exactly as ``kb_base.filters.matches`` does.

The conformance suite's property test draws mixed-kind columns; this one draws columns of one kind each (where
the compaction drops and narrows most), big integers beyond every narrow type, and merged columns.
"""

from __future__ import annotations

import json
import random
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kb_base.filters import matches, parse_filter
from stores.columnar_filter import MetadataColumns, gather_columns

_POOLS: dict[str, list[Any]] = {
    "small": [0, 1, 2, 3, 9, -4],  # int8
    "wide": [-40_000, 7, 70_000, 2**40, -(2**40)],  # beyond int32: kept as float64
    "real": [0.5, -1.25, 3.0, 1e300],
    "flag": [True, False],
    "word": ["alpha", "beta", "gamma", "delta"],
    "mixed": [1, 2.5, "x", True, None, [1, 2]],
}
_VALUES = st.one_of(st.integers(-5, 10), st.sampled_from([2**40, -(2**40), 2**62, 0.5, 3.0, 1e300, -1.25]),
                    st.sampled_from(["alpha", "beta", "delta", "zeta", "x"]), st.booleans())


def _comparison() -> st.SearchStrategy[dict[str, Any]]:
    keys = st.sampled_from(sorted(_POOLS))
    orderable = st.one_of(st.integers(-5, 10), st.sampled_from([2**40, 2**62, 0.75, 1e300, -1.5]),
                          st.sampled_from(["alpha", "beta", "delta", "zeta"]))
    return st.one_of(
        st.builds(lambda k, v: {k: v}, keys, _VALUES),
        st.builds(lambda k, op, v: {k: {op: v}}, keys, st.sampled_from(["$eq", "$ne"]), _VALUES),
        st.builds(lambda k, op, v: {k: {op: v}}, keys, st.sampled_from(["$gt", "$gte", "$lt", "$lte"]), orderable),
        st.builds(lambda k, op, vs: {k: {op: vs}}, keys, st.sampled_from(["$in", "$nin"]),
                  st.lists(_VALUES, min_size=1, max_size=3)),
    )


_FILTERS = st.recursive(_comparison(), lambda inner: st.one_of(
    st.builds(lambda cs: {"$and": cs}, st.lists(inner, min_size=1, max_size=3)),
    st.builds(lambda cs: {"$or": cs}, st.lists(inner, min_size=1, max_size=3)),
    st.builds(lambda c: {"$not": c}, inner)), max_leaves=4)


def _metadata(count: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [{key: rng.choice(pool) for key, pool in _POOLS.items() if rng.random() < 0.85} for _ in range(count)]


METADATA = _metadata(300, seed=31)
ROWIDS = np.arange(1, 301, dtype=np.int64)
COLUMNS = MetadataColumns(ROWIDS, [json.dumps(m) for m in METADATA])
# the same rows gathered from three parts, as a merged segment's columns are
_PARTS = [MetadataColumns(ROWIDS[i::3], [json.dumps(m) for m in METADATA[i::3]]) for i in range(3)]
GATHERED = gather_columns(_PARTS, ROWIDS)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(raw=_FILTERS)
def test_compact_columns_answer_filters_as_the_reference_does(raw: dict[str, Any]) -> None:
    flt = parse_filter(raw)
    assert flt is not None
    expected = [i + 1 for i, m in enumerate(METADATA) if matches(flt, m)]
    assert COLUMNS.select(flt).tolist() == expected, raw
    assert GATHERED.select(flt).tolist() == expected, raw


def test_one_kind_columns_keep_one_narrow_array() -> None:
    n = 10_000
    rows = [{"part": i % 10, "source": f"file{i // 100}.pdf", "draft": i % 7 == 0, "score": i / 3}
            for i in range(n)]
    columns = MetadataColumns(np.arange(n, dtype=np.int64), [json.dumps(r) for r in rows])
    part, source, draft, score = (columns.columns[k] for k in ("part", "source", "draft", "score"))
    assert part.kind is None and part.number is not None and part.number.dtype == np.int8
    assert part.boolean is None and part.codes is None
    assert source.codes is not None and source.codes.dtype == np.int8 and source.number is None  # 100 files
    assert draft.boolean is not None and draft.number is None and draft.codes is None
    assert score.number is not None and score.number.dtype == np.float64  # not integral: kept as it was
    dictionary = sum(len(u) + 49 for u in source.uniques) + 8 * 100 + 100  # str objects, pointers, slack
    assert columns.nbytes() <= n * (1 + 1 + 1 + 8) + dictionary  # was n * 14 per key
    for raw in ({"part": 3}, {"source": {"$gte": "file50.pdf"}}, {"draft": True}, {"part": {"$lt": 2.5}},
                {"score": {"$gt": 100}}):
        flt = parse_filter(raw)
        assert columns.select(flt).tolist() == [i for i, r in enumerate(rows) if matches(flt, r)], raw

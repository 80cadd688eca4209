"""The FAISS record cache is bounded in entries and in bytes (issue 31: chunk texts vary tenfold in size)."""

from __future__ import annotations

from stores.faiss.record_cache import RecordCache, row_bytes


def _row(i: int, text_chars: int) -> tuple[str, str, str, bool, dict]:
    return (f"id-{i}", "t" * text_chars, '{"part": 1}', True, {"part": 1})


def test_entries_bound_drops_the_oldest() -> None:
    cache = RecordCache(max_entries=3, max_bytes=1 << 30)
    cache.put_many((i, _row(i, 10)) for i in range(5))
    assert sorted(cache.get_many(range(5))) == [2, 3, 4]
    assert cache.bytes == sum(row_bytes(_row(i, 10)) for i in (2, 3, 4))


def test_bytes_bound_holds_fewer_big_rows_than_small_ones() -> None:
    budget = 200_000
    small, big = RecordCache(max_entries=50_000, max_bytes=budget), RecordCache(max_entries=50_000, max_bytes=budget)
    small.put_many((i, _row(i, 20)) for i in range(5_000))
    big.put_many((i, _row(i, 2_000)) for i in range(5_000))
    assert small.bytes <= budget and big.bytes <= budget
    assert len(big) < len(small) / 3  # same budget: a 2,000-character row weighs what ~3.6 small ones do
    assert 4_999 in big.get_many([4_999]) and 0 not in big.get_many([0])  # the newest kept, the oldest gone
    # a row put again is counted once
    before = big.bytes
    big.put_many([(4_999, _row(4_999, 2_000))])
    assert big.bytes == before
    big.clear()
    assert big.bytes == 0 and len(big) == 0

"""kb bench's paired timing (benchmarks.peer_run.paired): both searches see every query once a round, never
the same query back to back, and their results come back in query order."""

from __future__ import annotations

from benchmarks import peer_run


def test_paired_searches_every_query_once_a_round_never_the_same_back_to_back() -> None:
    calls: list[tuple[str, int]] = []
    count = 10
    (first_figures, first_results), (second_figures, second_results) = peer_run.paired(
        lambda i: calls.append(("a", i)) or f"a{i}", lambda i: calls.append(("b", i)) or f"b{i}", count)
    timed = calls[2 * min(20, count):]  # after the warm-up
    assert len(timed) == 2 * count * peer_run.ROUNDS
    for round_number in range(peer_run.ROUNDS):
        rounds = timed[2 * count * round_number : 2 * count * (round_number + 1)]
        assert sorted(i for who, i in rounds if who == "a") == list(range(count))
        assert sorted(i for who, i in rounds if who == "b") == list(range(count))
    assert all(timed[n][1] != timed[n + 1][1] for n in range(len(timed) - 1))
    # which one goes first alternates
    assert {timed[2 * n][0] for n in range(len(timed) // 2)} == {"a", "b"}
    assert first_results == [f"a{i}" for i in range(count)] and second_results == [f"b{i}" for i in range(count)]
    assert first_figures["p50_ms"] >= 0 and "first_round_p50_ms" in second_figures

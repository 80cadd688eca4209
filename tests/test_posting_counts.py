"""Counting a batch's (term, document) pairs: every path (radix, 32-bit keys, 64-bit keys) gives the same answer."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from stores.posting_counts import count_pairs


def expected(terms: np.ndarray, positions: np.ndarray) -> tuple[list[int], list[int], list[int]]:
    counts = sorted(Counter(zip(terms.tolist(), positions.tolist(), strict=True)).items())
    return [t for (t, _), _ in counts], [p for (_, p), _ in counts], [n for _, n in counts]


@pytest.mark.parametrize(("vocabulary", "documents"), [(50, 30), (2**16, 40), (2**16 + 1, 40), (2**20, 2**13)])
def test_every_path_counts_the_pairs(vocabulary, documents):
    rng = np.random.default_rng(vocabulary + documents)
    positions = np.sort(rng.integers(0, documents, 5000))  # occurrences come grouped by document
    terms = rng.integers(0, vocabulary, 5000)
    terms[:50] = vocabulary - 1  # the largest keys too
    terms[50:100] = terms[0]
    got = count_pairs(terms, positions, documents, vocabulary)
    assert [g.tolist() for g in got] == list(expected(terms, positions))


@pytest.mark.parametrize("vocabulary", [50, 2**16 + 1])
def test_documents_out_of_order_come_out_in_order(vocabulary):
    """A batch of ASCII and other texts lists the others' occurrences last: documents grouped, not ascending."""
    positions = np.array([0, 0, 2, 2, 2, 3, 1, 1, 4])
    terms = np.array([5, 7, 5, 5, 9, 7, 7, 5, 5])
    got = count_pairs(terms, positions, 5, vocabulary)
    assert [g.tolist() for g in got] == list(expected(terms, positions))


def test_no_occurrences():
    got = count_pairs(np.zeros(0, np.int64), np.zeros(0, np.int64), 3, 0)
    assert all(g.size == 0 for g in got)

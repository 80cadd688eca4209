"""The keyword index's batch analyzer (Arrow kernels for ASCII texts) gives exactly ``Analyzer.terms`` per text."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from stores.analysis import Analyzer, analyzer_settings

# Characters the tokeniser treats specially: ASCII punctuation and whitespace, NUL and control characters,
# digits, underscores, accents (composed and combining), other scripts, fullwidth forms, ligatures.
SPECIAL = list(" \t\n\r\x0b\x0c\x1c\x1f\x00\x7f_-'.,;:!?()[]{}<>/\\|@#$%^&*+=~`\"") + list(
    "éÉèüÜñçßæœøÅİıſﬁ\u0301\u0308ΣσςДжкあ漢字٣０９Ａｚ\u200b\u00a0\u2003")
TEXT = st.text(alphabet=st.one_of(st.sampled_from(SPECIAL), st.characters(codec="ascii"), st.characters()),
               max_size=60)
WORDY = st.lists(st.sampled_from(["The", "running", "DOGS", "ran", "isn't", "x_y", "3.14", "café", "naïve",
                                  "über", "a", "an", "Ünïcödé", "NUL\x00in", "  ", "\t", "__init__", "ŉ"]),
                 max_size=12).map(" ".join)


def per_text(analyzer: Analyzer, texts: list[str]) -> list[list[str]]:
    docs, terms, vocabulary = analyzer.batch_terms(texts)
    assert docs.shape == terms.shape
    assert docs.size == 0 or (docs.min() >= 0 and docs.max() < len(texts))
    return [[vocabulary[t] for t in terms[docs == i].tolist()] for i in range(len(texts))]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(TEXT, WORDY), max_size=8))
def test_batch_terms_equal_terms_per_text(texts):
    analyzer = Analyzer(analyzer_settings(None))
    assert per_text(analyzer, texts) == [analyzer.terms(text) for text in texts]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(TEXT, WORDY), max_size=6),
       st.sampled_from([{"stemmer": "none", "stop_words": "none"}, {"stemmer": "porter"},
                        {"stop_words": ["dogs", "x_y", "ünïcödé"]}, {"language": "french"}]))
def test_batch_terms_equal_terms_for_other_analyzers(texts, options):
    analyzer = Analyzer(analyzer_settings(options))
    assert per_text(analyzer, texts) == [analyzer.terms(text) for text in texts]


def test_batch_terms_over_many_chunks(monkeypatch):
    """Several Arrow chunks share one vocabulary; ASCII and non-ASCII texts mixed keep their positions."""
    from stores import arrow_tokens

    monkeypatch.setattr(arrow_tokens, "_CHUNK_TEXTS", 3)
    analyzer = Analyzer(analyzer_settings(None))
    texts = [f"Word{i % 4} shared café{i}" if i % 5 == 0 else f"word{i % 4} SHARED text {i}" for i in range(17)]
    assert per_text(analyzer, texts) == [analyzer.terms(text) for text in texts]
    _, _, vocabulary = analyzer.batch_terms(texts)
    assert len(vocabulary) == len(set(vocabulary))


def test_batch_terms_of_nothing():
    analyzer = Analyzer(analyzer_settings(None))
    docs, terms, vocabulary = analyzer.batch_terms([])
    assert docs.size == 0 and terms.size == 0 and vocabulary == []
    assert per_text(analyzer, ["", "   ", "the a an", "\x00"]) == [[], [], [], []]
    assert np.array_equal(analyzer.batch_terms(["b", "a b"])[0], [0, 1])

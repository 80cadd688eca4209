"""The keyword index's batch analysis (compiled kernels, ``stores.keyword.kernels``) gives, for every text, exactly
the terms and frequencies of ``Analyzer.term_counts``, and postings laid out as the index writes them."""

from __future__ import annotations

from collections import Counter

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from stores.keyword import kernels as keyword_kernels
from stores.keyword import packing as segment_packing
from stores.keyword.analysis import Analyzer, analyzer_settings
from stores.keyword.batch import AnalysedBatch, analyse_batch

# Characters the tokeniser treats specially: ASCII punctuation and whitespace, NUL and control characters,
# digits, underscores, accents (composed and combining), other scripts, fullwidth forms, ligatures, and
# characters whose compatibility form is uppercase ASCII (U+3386, SQUARE MB) or that lowercase to ASCII
# (U+212A, KELVIN SIGN).
SPECIAL = list(" \t\n\r\x0b\x0c\x1c\x1f\x00\x7f_-'.,;:!?()[]{}<>/\\|@#$%^&*+=~`\"") + list(
    "éÉèüÜñçßæœøÅİıſﬁ\u0301\u0308ΣσςДжкあ漢字٣０９Ａｚ\u200b\u00a0\u2003\u3386\u212a")
TEXT = st.text(alphabet=st.one_of(st.sampled_from(SPECIAL), st.characters(codec="ascii"), st.characters()),
               max_size=60)
WORDY = st.lists(st.sampled_from(["The", "running", "DOGS", "ran", "isn't", "x_y", "3.14", "café", "naïve",
                                  "über", "a", "an", "Ünïcödé", "NUL\x00in", "  ", "\t", "__init__", "ŉ", "㎆"]),
                 max_size=12).map(" ".join)


def per_text(batch: AnalysedBatch) -> list[dict[str, int]]:
    """Each text's term -> frequency, read back from the batch's postings; checks the layout on the way."""
    docs, tfs, lengths = segment_packing.unpack(batch.packing, *(a.tobytes() for a in batch.packed))
    bounds = batch.segment_bounds
    assert bounds[0] == 0 and bounds[-1] == docs.size == batch.postings
    assert np.all(np.diff(batch.segment_terms) > 0)  # one segment per term, terms ascending
    counts: list[dict[str, int]] = [{} for _ in range(batch.size)]
    position = {int(rowid): i for i, rowid in enumerate(batch.rowids.tolist())}
    for term, start, end in zip(batch.segment_terms.tolist(), bounds[:-1].tolist(), bounds[1:].tolist(),
                                strict=True):
        assert end > start and np.all(np.diff(docs[start:end]) > 0)  # documents ascending, each once per term
        for doc, tf, length in zip(docs[start:end].tolist(), tfs[start:end].tolist(), lengths[start:end].tolist(),
                                   strict=True):
            i = position[doc]
            assert length == batch.lengths[i]
            counts[i][batch.vocabulary[term]] = tf
    # what a removal reads back: each document's length and distinct terms
    assert batch.doc_counts.sum() == batch.postings
    starts = np.concatenate(([0], np.cumsum(batch.doc_counts)))
    for i, text_counts in enumerate(counts):
        terms = [batch.vocabulary[t] for t in batch.doc_terms[starts[i] : starts[i + 1]].tolist()]
        assert sorted(terms) == sorted(text_counts)
        assert batch.lengths[i] == sum(text_counts.values())
    return counts


def expected(analyzer: Analyzer, texts: list[str]) -> list[dict[str, int]]:
    return [dict(Counter(analyzer.terms(text))) for text in texts]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(TEXT, WORDY), max_size=8))
def test_batch_analysis_equals_terms_per_text(texts):
    analyzer = Analyzer(analyzer_settings(None))
    batch = analyse_batch(analyzer, range(100, 100 + len(texts)), texts)
    assert per_text(batch) == expected(analyzer, texts)
    assert len(batch.vocabulary) == len(set(batch.vocabulary))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(TEXT, WORDY), max_size=6),
       st.sampled_from([{"stemmer": "none", "stop_words": "none"}, {"stemmer": "porter"},
                        {"stop_words": ["dogs", "x_y", "ünïcödé"]}, {"language": "french"}]))
def test_batch_analysis_equals_terms_for_other_analyzers(texts, options):
    analyzer = Analyzer(analyzer_settings(options))
    batch = analyse_batch(analyzer, range(1, 1 + len(texts)), texts)
    assert per_text(batch) == expected(analyzer, texts)


def test_tables_grow_past_their_first_sizes():
    """More distinct tokens than the first hash table, distinct-token arrays and pool hold, and a token longer
    than the whole first pool: every table grows mid-scan and the scan goes on where it stopped."""
    analyzer = Analyzer(analyzer_settings({"stemmer": "none", "stop_words": "none"}))
    texts = [" ".join(f"w{i * 50 + j}" for j in range(50)) for i in range(1_400)]  # 70k: more than 2**16
    texts.insert(500, "prefix " + "x" * 300_000 + " suffix")
    texts.append("w1 w69999 café w1")
    batch = analyse_batch(analyzer, range(1, 1 + len(texts)), texts)
    assert len(batch.vocabulary) == 70_000 + 4
    assert per_text(batch) == expected(analyzer, texts)


def test_batch_of_nothing_and_of_stop_words():
    analyzer = Analyzer(analyzer_settings(None))
    empty = analyse_batch(analyzer, [], [])
    assert empty.size == 0 and empty.postings == 0 and empty.vocabulary == []
    quiet = analyse_batch(analyzer, [7, 8, 9, 10], ["", "   ", "the a an", "\x00"])
    assert quiet.postings == 0 and quiet.lengths.tolist() == [0, 0, 0, 0] and quiet.doc_counts.tolist() == [0] * 4
    assert per_text(analyse_batch(analyzer, [1, 2], ["b", "a b b"])) == [{"b": 1}, {"b": 2}]


def test_rowids_must_match_texts():
    analyzer = Analyzer(analyzer_settings(None))
    try:
        analyse_batch(analyzer, [1, 2], ["one"])
    except ValueError as error:
        assert "2 rowids for 1 texts" in str(error)
    else:
        raise AssertionError("a batch with more rowids than texts was analysed")


def test_tokenize_kernel_reads_each_text_by_its_table():
    """A raw text is lowercased and split on non-word bytes; a tokenised one (kind 1) is read as it is."""
    data = np.frombuffer("Hello, WORLD hello ÀB_c".encode(), dtype=np.uint8)
    split = len("Hello, WORLD hello ")
    token_ids, ends, pool = keyword_kernels.tokenize(data, np.array([0, split, data.size], np.int64),
                                                   np.array([keyword_kernels.RAW, keyword_kernels.TOKENISED], np.uint8),
                                                   keyword_kernels.TABLES)
    assert pool.tobytes().decode().split(" ")[:-1] == ["hello", "world", "ÀB_c"]
    assert token_ids.tolist() == [0, 1, 0, 2] and ends.tolist() == [3, 4]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["abcdefgh", "abcdefg", "abcdefghi", "abcdefgi", "bbcdefgh", "a"]),
                          st.text(alphabet="xyz\x00", max_size=3)), min_size=1, max_size=40))
def test_tokens_that_share_their_first_eight_bytes_stay_apart(parts: list[tuple[str, str]]) -> None:
    """Tokens of up to 8 bytes are told apart by their hashed bytes alone, longer ones by comparing bytes too:
    prefixes of each other, a differing ninth byte, a trailing NUL (in the tokenised table) are all distinct."""
    words = [prefix + suffix for prefix, suffix in parts]
    data = np.frombuffer(" ".join(words).encode(), np.uint8)
    for kind in (keyword_kernels.RAW, keyword_kernels.TOKENISED):
        token_ids, ends, pool = keyword_kernels.tokenize(data, np.array([0, data.size]), np.array([kind]),
                                                         keyword_kernels.TABLES)
        table = keyword_kernels.TABLES[kind]
        tokens = bytes(table[data]).decode().split(" ")
        tokens = [t for t in tokens if t]
        distinct = list(dict.fromkeys(tokens))  # numbered by first occurrence
        assert pool.tobytes().decode().split(" ")[:-1] == distinct
        assert [distinct[i] for i in token_ids.tolist()] == tokens and ends.tolist() == [len(tokens)]

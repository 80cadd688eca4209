"""Text analysis for keyword search: tokenise, lowercase, fold accents, drop stop words, stem.

Configured per knowledge bank (settings ``keyword.analyzer``)::

    {"language": "english", "stemmer": "snowball", "stop_words": "english", "k1": 0.9, "b": 0.4}

``stemmer`` is ``snowball`` (the Snowball stemmer of ``language``, via
PyStemmer), ``porter`` or ``none``; ``stop_words`` is ``english``, ``none``
or a list of words. The defaults come from the SciFact evaluation (see
``benchmarks.scifact``).
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import Stemmer

from kb_base.errors import InvalidInputError

# A common English stop-word list (articles, pronouns, auxiliaries, prepositions, conjunctions).
ENGLISH_STOP_WORDS = frozenset("""
a about above after again against all am an and any are aren't as at be because been before being below
between both but by can cannot could couldn't did didn't do does doesn't doing don't down during each few
for from further had hadn't has hasn't have haven't having he he'd he'll he's her here here's hers herself
him himself his how how's i i'd i'll i'm i've if in into is isn't it it's its itself let's me more most
mustn't my myself no nor not of off on once only or other ought our ours ourselves out over own same shan't
she she'd she'll she's should shouldn't so some such than that that's the their theirs them themselves then
there there's these they they'd they'll they're they've this those through to too under until up very was
wasn't we we'd we'll we're we've were weren't what what's when when's where where's which while who who's
whom why why's with won't would wouldn't you you'd you'll you're you've your yours yourself yourselves
""".split()) | {"s", "t", "d", "ll", "m", "re", "ve"}

DEFAULT_ANALYZER: dict[str, Any] = {"language": "english", "stemmer": "snowball", "stop_words": "english",
                                    "k1": 0.9, "b": 0.4}
_TOKEN = re.compile(r"\w+", re.UNICODE)
# For ASCII text, ``\w+`` tokens are what is left after every other ASCII character becomes a space:
# str.translate + str.split do that in C, three times faster than the regex (``stores.keyword.kernels`` does
# the same for a batch).
_ASCII_NON_WORD = str.maketrans({chr(c): " " for c in range(128) if not (chr(c).isalnum() or chr(c) == "_")})
_STEM_CACHE_LIMIT = 500_000
# Every character with a nonzero canonical combining class lies below U+20000 (checked against the whole range
# by tests/test_keyword_index.py): scanning that much takes ~30 ms, once, on the first non-ASCII text.
_COMBINING_BELOW = 0x20000


@functools.cache
def _combining_marks() -> tuple[re.Pattern[str], dict[int, None]]:
    """What accent folding drops (``unicodedata.combining`` nonzero): the marks below U+10000 as one character
    class (one C pass per text instead of a Python test per character: a tenth of real text is not ASCII), and
    the few above as a ``str.translate`` table (a class holding any of those makes ``re`` test its ranges one by
    one: 30x slower than the per-character loop it replaces)."""
    marks = [c for c in range(_COMBINING_BELOW) if unicodedata.combining(chr(c))]
    basic = "".join(chr(c) for c in marks if c <= 0xFFFF)
    return re.compile(f"[{re.escape(basic)}]+"), dict.fromkeys(c for c in marks if c > 0xFFFF)


def _fold_accents(text: str) -> str:
    folded = unicodedata.normalize("NFKD", text)
    if folded.isascii():
        return folded
    basic, astral = _combining_marks()
    folded = basic.sub("", folded)
    return folded.translate(astral) if max(folded) > "\uffff" else folded


def analyzer_settings(raw: dict[str, Any] | None) -> dict[str, Any]:
    """Validated analyzer settings with defaults."""
    out = {**DEFAULT_ANALYZER, **(raw or {})}
    unknown = set(out) - set(DEFAULT_ANALYZER)
    if unknown:
        raise InvalidInputError(f"unknown keyword analyzer settings: {', '.join(sorted(unknown))}")
    if out["stemmer"] not in ("snowball", "porter", "none"):
        raise InvalidInputError(f"keyword analyzer stemmer must be snowball, porter or none, got {out['stemmer']!r}")
    if out["stemmer"] == "snowball" and out["language"] not in Stemmer.algorithms():
        raise InvalidInputError(f"no Snowball stemmer for language {out['language']!r}")
    stop = out["stop_words"]
    if not (stop in ("english", "none") or (isinstance(stop, list) and all(isinstance(w, str) for w in stop))):
        raise InvalidInputError("keyword analyzer stop_words must be 'english', 'none' or a list of words")
    for key, low, high in (("k1", 0.0, 10.0), ("b", 0.0, 1.0)):
        value = out[key]
        if not isinstance(value, int | float) or isinstance(value, bool) or not low <= value <= high:
            raise InvalidInputError(f"BM25 {key} must be a number in [{low}, {high}], got {value!r}")
    return out


class Analyzer:
    def __init__(self, settings: dict[str, Any]) -> None:
        stop = settings["stop_words"]
        self.stop_words = ENGLISH_STOP_WORDS if stop == "english" else frozenset() if stop == "none" else \
            frozenset(w.lower() for w in stop)
        kind = settings["stemmer"]
        self._stemmer = None if kind == "none" else Stemmer.Stemmer("porter" if kind == "porter" else
                                                                     settings["language"])
        if self._stemmer is not None:
            # PyStemmer's own cache (10,000 words, pruned in Python) made stemming 3.7x slower on a real
            # vocabulary (172k distinct tokens in 100k chunks); ``_stems`` below caches every word already
            self._stemmer.maxCacheSize = 0
        self._stems: dict[str, str | None] = {}  # token -> term, None for a stop word

    def tokens(self, text: str) -> list[str]:
        folded = text.lower()
        if folded.isascii():
            return folded.translate(_ASCII_NON_WORD).split()
        # accent folding only where there are accents (it is a per-character loop)
        return _TOKEN.findall(_fold_accents(folded))

    def terms(self, text: str) -> list[str]:
        """The text's terms in order (stop words dropped, stemmed)."""
        tokens = self.tokens(text)
        stems = self._lookup(tokens)
        return [term for token in tokens if (term := stems[token]) is not None]

    def term_counts(self, text: str) -> dict[str, int]:
        """Term -> frequency in the text. Counting tokens first (in C) means each distinct token is mapped once."""
        counts = Counter(self.tokens(text))
        stems = self._lookup(counts)
        out: dict[str, int] = {}
        for token, n in counts.items():
            term = stems[token]
            if term is not None:
                out[term] = out.get(term, 0) + n
        return out

    def term_ids(self, tokens: Sequence[str]) -> tuple[np.ndarray, list[str]]:
        """``(term_of_token, vocabulary)`` for distinct ``tokens``: each one's index in ``vocabulary`` (the terms,
        numbered by first occurrence), -1 for a stop word. The batch analysis maps tokens to terms this way."""
        stems = self._lookup(tokens)
        # C-level passes over the tokens (map, dict.fromkeys, zip), no Python code per token: a batch of real
        # text has ~30k distinct tokens, and a generator here cost a fifth of the analysis
        terms = list(map(stems.__getitem__, tokens))
        vocabulary = list(dict.fromkeys(terms))  # first occurrence order
        if None in vocabulary:
            vocabulary.remove(None)  # stop words
        term_index: dict[str | None, int] = dict(zip(vocabulary, range(len(vocabulary)), strict=True))
        term_index[None] = -1
        term_of_token = np.fromiter(map(term_index.__getitem__, terms), dtype=np.int32, count=len(terms))
        return term_of_token, vocabulary

    def _lookup(self, tokens: Iterable[str]) -> dict[str, str | None]:
        """The cached term of every token; new tokens are stemmed in one call."""
        stems = self._stems
        if len(stems) > _STEM_CACHE_LIMIT:
            stems = self._stems = {}  # bounded memory (a new dict: other threads keep the one they hold)
        missing = [t for t in set(tokens) if t not in stems]
        if missing:
            kept = [t for t in missing if t not in self.stop_words]
            stemmed = self._stemmer.stemWords(kept) if self._stemmer is not None else kept
            stems.update(dict.fromkeys(missing))
            stems.update(zip(kept, stemmed, strict=True))
        return stems


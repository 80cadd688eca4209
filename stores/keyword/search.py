"""BM25 query evaluation over decoded postings: a hot-term cache and exact top-k with early termination.

A query used to decode every posting of its terms from SQLite, score them all and sort the union:
at 1M chunks a common term has hundreds of thousands of postings, so a query cost ~150 ms. Two
changes make its cost follow the answer instead of the corpus:

- **Hot terms stay decoded.** Per committed generation (the store passes it as ``cache_key``), a term's
  postings are read once, scored once (a posting's BM25 contribution depends only on the term, the
  document and the collection statistics, all fixed within a generation) and kept with their best
  contributions ordered, in a cache bounded by bytes (``KB_KEYWORD_CACHE_MB``, default 1024). A new
  commit is a new generation and starts an empty cache; a writer's uncommitted view is never cached.
- **Early termination, exact.** One round of the threshold algorithm (Fagin et al.): each term's best
  contributions, their documents scored exactly; done when the k-th score is strictly above what any
  unseen document could reach. Otherwise MaxScore with that k-th score as the bar: terms whose best
  contributions together stay below it bring no candidates, nor do postings of the other terms that
  cannot reach it with every other term's best; the candidates are scored on every term (binary search
  or an accumulator, whichever touches less). Only when pruning would not pay is every posting scored
  (an accumulator over the rowid range). The answer is exactly the exhaustive one, ties by rowid
  included, and the sums are added in the same order, so the floats are identical too.
"""

from __future__ import annotations

import math
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence

import numpy as np

_FIRST_DEPTH = 128
_BEST_KEPT = 1024  # contributions ordered when a term is scored; more only for a deeper first round
_EXHAUSTIVE_BELOW = 2048  # postings in all: scoring them all is cheaper than any bookkeeping
_SEARCH_STEPS = 20  # about log2 of a long posting list: the cost of scoring one candidate in one term
_PRUNED_WORTH_IT = 3  # MaxScore only when its candidates' postings are at most a third of all postings
_DENSE_SPAN_PER_POSTING = 16  # an accumulator over the rowid range while it is at most this many per posting


def _cache_bytes() -> int:
    return int(float(os.environ.get("KB_KEYWORD_CACHE_MB", "1024")) * 2**20)


class ScoredPostings:
    """One term's postings in a generation: documents ascending, their BM25 contributions, and the positions
    of its best contributions (only the first ``_BEST_KEPT`` are ordered at build: sorting every posting of a
    common term cost more than the queries that use it)."""

    def __init__(self, docs: np.ndarray, impacts: np.ndarray) -> None:
        self.docs, self.impacts = docs, impacts  # int64 ascending; float64 aligned with docs
        self._best = self._order(min(docs.size, _BEST_KEPT))

    def _order(self, count: int) -> np.ndarray:
        """Positions of ``count`` best contributions, best first (ties in any order: only values matter)."""
        if count >= self.impacts.size:
            return np.argsort(-self.impacts, kind="stable")
        chosen = np.argpartition(-self.impacts, count - 1)[:count]
        return chosen[np.argsort(-self.impacts[chosen], kind="stable")]

    @property
    def nbytes(self) -> int:
        return self.docs.nbytes + self.impacts.nbytes + self._best.nbytes

    @classmethod
    def build(cls, docs: np.ndarray, tfs: np.ndarray, lengths: np.ndarray, idf: float, k1: float, b: float,
              avg_length: float) -> ScoredPostings:
        if docs.size > 1 and np.any(docs[1:] < docs[:-1]):
            by_doc = np.argsort(docs, kind="stable")
            docs, tfs, lengths = docs[by_doc], tfs[by_doc], lengths[by_doc]
        # Same expression, same order of operations as the exhaustive scorer, so the scores are identical.
        norm = k1 * (1.0 - b + b * lengths / avg_length)
        impacts = idf * tfs * (k1 + 1.0) / (tfs + norm)
        return cls(np.ascontiguousarray(docs, dtype=np.int64), impacts)

    def best(self, count: int) -> np.ndarray:
        """Positions of the ``count`` best contributions."""
        if count > self._best.size and self._best.size < self.impacts.size:
            self._best = self._order(min(self.impacts.size, max(count + 1, 2 * self._best.size)))
        return self._best[:count]

    def impact_at(self, rank: int) -> float:
        """The contribution at ``rank`` in impact order (0.0 past the end): the best any posting beyond the
        first ``rank`` can add."""
        if rank >= self.impacts.size:
            return 0.0
        return float(self.impacts[self.best(rank + 1)[rank]])

    def contributions(self, docs: np.ndarray) -> np.ndarray:
        """This term's contribution to each of ``docs`` (sorted or not); 0.0 where the term is absent."""
        if self.docs.size == 0:
            return np.zeros(docs.size)
        at = np.minimum(np.searchsorted(self.docs, docs), self.docs.size - 1)
        return np.where(self.docs[at] == docs, self.impacts[at], 0.0)


class PostingsCache:
    """Scored postings of recently queried terms for one generation of one store, bounded by bytes."""

    def __init__(self, max_bytes: int | None = None) -> None:
        self.max_bytes = _cache_bytes() if max_bytes is None else max_bytes
        self._lock = threading.Lock()
        self._key: Hashable = None
        self._terms: OrderedDict[int, ScoredPostings] = OrderedDict()
        self._bytes = 0

    def get(self, key: Hashable, term_id: int, load: Callable[[], ScoredPostings]) -> ScoredPostings:
        with self._lock:
            if self._key == key:
                hit = self._terms.get(term_id)
                if hit is not None:
                    self._terms.move_to_end(term_id)
                    return hit
        scored = load()  # outside the lock: other queries go on meanwhile
        with self._lock:
            if self._key != key:
                self._key, self._terms, self._bytes = key, OrderedDict(), 0
            if term_id not in self._terms and scored.nbytes <= self.max_bytes:
                self._terms[term_id] = scored
                self._bytes += scored.nbytes
                while self._bytes > self.max_bytes:
                    _, old = self._terms.popitem(last=False)
                    self._bytes -= old.nbytes
        return scored

    def clear(self) -> None:
        with self._lock:
            self._key, self._terms, self._bytes = None, OrderedDict(), 0


class TermIdCache:
    """Term ids of recently queried terms for one generation of one store (terms absent from it as None), so a
    query of cached postings reads nothing from SQLite for its terms: a term's id never changes within a
    generation (ids are never reused; only ``clear``, a commit of its own, drops them). Bounded by entries."""

    def __init__(self, max_terms: int = 100_000) -> None:
        self.max_terms = max_terms
        self._lock = threading.Lock()
        self._key: Hashable = None
        self._ids: dict[str, int | None] = {}

    def get(self, key: Hashable, terms: Sequence[str],
            lookup: Callable[[Sequence[str]], dict[str, int]]) -> dict[str, int]:
        with self._lock:
            ids = self._ids if self._key == key else {}
            missing = [term for term in terms if term not in ids]
            known = {term: ids[term] for term in terms if term in ids}
        if missing:
            found = lookup(missing)  # outside the lock: other queries go on meanwhile
            fresh = {term: found.get(term) for term in missing}
            known.update(fresh)
            with self._lock:
                if self._key != key:
                    self._key, self._ids = key, {}
                if len(self._ids) + len(fresh) > self.max_terms:
                    self._ids = {}
                self._ids.update(fresh)
        return {term: id_ for term, id_ in known.items() if id_ is not None}


def idf(n_docs: int, df: int) -> float:
    return math.log(1.0 + (n_docs - df + 0.5) / (df + 0.5))


def _top_k(docs: np.ndarray, scores: np.ndarray, k: int) -> list[tuple[int, float]]:
    """Best ``k`` by score descending, ties by rowid ascending."""
    if docs.size > k:
        # keep everything tied with the k-th best so the rowid tie-break below stays exact
        kth = np.partition(-scores, k - 1)[k - 1]
        chosen = np.flatnonzero(-scores <= kth)
        docs, scores = docs[chosen], scores[chosen]
    order = np.lexsort((docs, -scores))[:k]
    return [(int(doc), float(score)) for doc, score in zip(docs[order], scores[order], strict=True)]


def _member(values: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    if sorted_set.size == 0:
        return np.zeros(values.size, dtype=bool)
    positions = np.minimum(np.searchsorted(sorted_set, values), sorted_set.size - 1)
    return sorted_set[positions] == values


def exhaustive(terms: Sequence[ScoredPostings], k: int,
               allowed: np.ndarray | None = None) -> list[tuple[int, float]]:
    """Score every posting of every term: the reference the early-terminating search must equal."""
    docs = np.concatenate([t.docs for t in terms])
    contributions = np.concatenate([t.impacts for t in terms])
    if allowed is not None:
        keep = _member(docs, allowed)
        docs, contributions = docs[keep], contributions[keep]
    if docs.size == 0:
        return []
    span = int(docs.max()) + 1
    if span <= _DENSE_SPAN_PER_POSTING * docs.size:
        # An accumulator over the rowid range (bm25s' way): linear, no sort of the postings. Every
        # contribution is positive (idf > 0, tf > 0), so a zero means "no posting".
        dense = np.bincount(docs, weights=contributions, minlength=span)
        # not np.partition over the whole range: its many zeros (equal keys) made it ~100x slower
        present = np.flatnonzero(dense)
        return _top_k(present, dense[present], k)
    unique, inverse = np.unique(docs, return_inverse=True)
    scores = np.bincount(inverse, weights=contributions, minlength=unique.size)
    return _top_k(unique, scores, k)


def top_k(terms: Sequence[ScoredPostings], k: int, allowed: np.ndarray | None = None,
          trace: dict[str, int] | None = None) -> list[tuple[int, float]]:
    """Exact BM25 top ``k`` (rowid, score) over the given terms' postings, restricted to sorted ``allowed``.

    ``trace`` (optional) receives how the answer was found: ``settled`` in the threshold algorithm's
    round, by ``pruned`` MaxScore, or ``exhaustive``.
    """
    trace = trace if trace is not None else {}
    trace.update(settled=0, pruned=0, exhaustive=0)
    terms = [t for t in terms if t.docs.size]
    if not terms or k <= 0 or (allowed is not None and allowed.size == 0):
        return []
    postings = sum(t.docs.size for t in terms)
    if postings <= _EXHAUSTIVE_BELOW:
        trace["exhaustive"] = 1
        return exhaustive(terms, k, allowed)
    # Round one of the threshold algorithm: each term's best ``depth`` postings, scored exactly.
    depth = max(_FIRST_DEPTH, 2 * k)
    seen = np.unique(np.concatenate([t.docs[t.best(depth)] for t in terms]))
    if allowed is not None:
        seen = seen[_member(seen, allowed)]
    threshold = 0.0  # a lower bound of the final k-th score
    if seen.size >= k:
        scores = _scores(terms, seen)
        threshold = float(-np.partition(-scores, k - 1)[k - 1])
        if threshold > sum(t.impact_at(depth) for t in terms):
            trace["settled"] = 1
            return _top_k(seen, scores, k)
    # MaxScore: the terms whose best contributions together stay below the threshold cannot bring a
    # document into the top k on their own, so only documents of the other ("essential") terms are
    # candidates; they are scored on every term.
    by_best = sorted(terms, key=lambda t: t.impact_at(0))
    # a slack of a billionth keeps float rounding of the bounds from ever excluding a document that ties
    bar = threshold - 1e-9 * max(1.0, threshold)
    reach, skipped = 0.0, 0
    for term in by_best:
        if reach + term.impact_at(0) >= bar:
            break
        reach += term.impact_at(0)
        skipped += 1
    essential = by_best[skipped:]
    # Within an essential term, a posting can only lead to the top k if it plus every other term's best
    # contribution reaches the threshold: the others are not candidates on that term's account.
    best_total = sum(t.impact_at(0) for t in terms)
    lists = []
    for term in essential:
        floor = bar - (best_total - term.impact_at(0))
        lists.append(term.docs if floor <= 0.0 else term.docs[term.impacts >= floor])
    if sum(d.size for d in lists) * _PRUNED_WORTH_IT <= postings:
        candidates = _union(lists)
        if allowed is not None:
            candidates = candidates[_member(candidates, allowed)]
        trace["pruned"] = 1
        # binary searches of the candidates in every term, or a linear pass over every posting: whichever
        # touches less (at 1M chunks a query's rare terms give ~10k candidates, its common ones ~1.5M postings)
        span = max(int(t.docs[-1]) for t in terms) + 1
        if candidates.size * _SEARCH_STEPS * len(terms) <= span + postings:
            return _top_k(candidates, _scores(terms, candidates), k)
        return _top_k(candidates, _scores_accumulated(terms, essential, candidates), k)
    trace["exhaustive"] = 1
    return exhaustive(terms, k, allowed)


def _union(sorted_lists: Sequence[np.ndarray]) -> np.ndarray:
    """The sorted union of sorted rowid arrays: as is for one, a mark per rowid when they are dense."""
    sorted_lists = [docs for docs in sorted_lists if docs.size]
    if len(sorted_lists) <= 1:
        return sorted_lists[0] if sorted_lists else np.zeros(0, dtype=np.int64)
    span = max(int(docs[-1]) for docs in sorted_lists) + 1
    if span <= _DENSE_SPAN_PER_POSTING * sum(docs.size for docs in sorted_lists):
        marks = np.zeros(span, dtype=bool)
        for docs in sorted_lists:
            marks[docs] = True
        return np.flatnonzero(marks)
    return np.unique(np.concatenate(sorted_lists))


def _scores_accumulated(terms: Sequence[ScoredPostings], essential: Sequence[ScoredPostings],
                        candidates: np.ndarray) -> np.ndarray:
    """``_scores`` for many candidates: essential terms add all their postings into an accumulator over the
    rowid range, the others only their postings of candidates (one posting per document and term, so the
    fancy-indexed additions never collide). Same order of additions per document as ``exhaustive``."""
    span = max(int(t.docs[-1]) for t in terms) + 1
    dense = np.zeros(span)
    chosen = np.zeros(span, dtype=bool)
    chosen[candidates] = True
    essential_ids = {id(t) for t in essential}
    for term in terms:
        if id(term) in essential_ids:
            dense[term.docs] += term.impacts
        else:
            keep = chosen[term.docs]
            dense[term.docs[keep]] += term.impacts[keep]
    return dense[candidates]


def _scores(terms: Sequence[ScoredPostings], docs: np.ndarray) -> np.ndarray:
    """Exact scores of ``docs``, summed in the exhaustive scorer's order (so the floats are identical)."""
    scores = np.zeros(docs.size)
    for term in terms:
        scores = scores + term.contributions(docs)
    return scores

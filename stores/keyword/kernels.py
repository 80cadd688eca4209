"""The keyword index's batch work in compiled loops (numba): tokens, postings, and combining batches.

The numpy/Arrow pipeline this replaces made ~25 passes over a batch's ~2M token occurrences (split, hash,
gather, two radix sorts, compares, casts): 0.2 s per 20k chunks, half of what the keyword index added to a
bulk load. Here one loop lowercases, splits and numbers the tokens (a hash table over their bytes), and one
loop counts each document's terms and lays the postings out by term (a counting sort). Both release the GIL,
so a writer's helper thread analyses while the writer's own thread inserts records.

Compiled when this module is imported (``warm_up``, for the argument types the callers pass) and cached on
disk by numba (``cache=True``): a machine pays the compilation once (~7 s here), a process pays numba's
import and the cache load (~0.5 s) when it first needs a kernel (callers import this module lazily, on their
first keyword write). Combining batches (``copy_groups``) is here too.
"""

from __future__ import annotations

import numpy as np
from numba import njit

# Row 0, for ASCII texts (``Analyzer.tokens``'s fast path): uppercase to lowercase, word characters
# ([a-z0-9_]) kept, every other byte a space (the split point). Row 1, for texts the caller tokenised already
# (the others: their tokens joined by spaces, UTF-8): every byte as it is.
RAW, TOKENISED = 0, 1
TABLES = np.array([[c + 32 if 65 <= c <= 90 else c if c < 128 and (chr(c).isalnum() or chr(c) == "_") else 32
                    for c in range(256)], list(range(256))], dtype=np.uint8)
_SPACE = 32
_MIX = np.uint64(0x9E3779B97F4A7C15)  # odd: multiplying by it is a bijection on 64-bit words
_FNV_PRIME = np.uint64(1099511628211)


@njit(cache=True, nogil=True)
def _same(data, table, start, pool, at, length):  # pragma: no cover - compiled
    """Whether the token at ``data[start:]``, mapped by ``table``, is the pooled one at ``pool[at:]``."""
    for i in range(length):
        if table[data[start + i]] != pool[at + i]:
            return False
    return True


@njit(cache=True, nogil=True)
def tokenize(data, offsets, kinds, tables):  # pragma: no cover - compiled
    """Tokens of ``len(offsets) - 1`` texts laid end to end in ``data`` (bytes; text i is
    ``data[offsets[i]:offsets[i + 1]]``), after ``tables[kinds[i]]`` maps each byte (a space splits).

    Returns ``(token_ids, ends, pool)``: each occurrence's token id, in text order; where each text's
    occurrences end in ``token_ids``; the distinct tokens' bytes, each followed by a space, numbered by first
    occurrence. Their bytes are kept apart from the texts' so that the hash table's comparisons read a small
    pool that stays in cache (in the texts, a token's first occurrence is a cache miss away)."""
    n_texts = offsets.size - 1
    token_ids = np.empty(data.size // 2 + n_texts + 1, np.int32)
    ends = np.empty(n_texts, np.int64)
    slots = np.full(1 << 16, -1, np.int32)  # open addressing: slot -> token id
    starts = np.empty(1 << 14, np.int64)
    lengths = np.empty(1 << 14, np.int64)
    hashes = np.empty(1 << 14, np.uint64)
    pool = np.empty(1 << 18, np.uint8)
    state = np.zeros(5, np.int64)  # text, position, occurrences, distinct tokens, pool bytes used
    state[1] = offsets[0]
    # The scan stops whenever a table is full and goes on once it has grown: arrays are never rebound inside
    # the scan's loop, where numba would count references to them at every token (three times slower).
    while _scan(data, offsets, kinds, tables, token_ids, ends, slots, starts, lengths, hashes, pool, state):
        distinct, pooled = state[3], state[4]
        if distinct * 2 >= slots.size:  # keep the hash table at most half full: rehash into twice the slots
            slots = np.full(slots.size * 2, -1, np.int32)
            mask = slots.size - 1
            for token in range(distinct):
                at = np.int64(hashes[token] & np.uint64(mask))
                while slots[at] >= 0:
                    at = (at + 1) & mask
                slots[at] = token
        if distinct == starts.size:
            starts = np.concatenate((starts, np.empty(starts.size, np.int64)))
            lengths = np.concatenate((lengths, np.empty(lengths.size, np.int64)))
            hashes = np.concatenate((hashes, np.empty(hashes.size, np.uint64)))
        longest = np.int64(0)  # the pool must hold the token the scan stopped at, whatever its length
        text, position = state[0], state[1]
        while position < offsets[text + 1] and tables[kinds[text]][data[position]] != _SPACE:
            position += 1
            longest += 1
        while pooled + longest + 1 > pool.size:
            pool = np.concatenate((pool, np.empty(pool.size, np.uint8)))
    return token_ids[: state[2]], ends, pool[: state[4]]


@njit(cache=True, nogil=True)
def _scan(data, offsets, kinds, tables, token_ids, ends, slots, starts, lengths, hashes, pool,
          state):  # pragma: no cover - compiled
    """``tokenize``'s loop, from where ``state`` says; True when it stopped for a table to grow (at the start
    of a new token, which the next call reads again), False at the end of the texts."""
    text, position, count, distinct, pooled = state[0], state[1], state[2], state[3], state[4]
    mask = slots.size - 1
    n_texts = offsets.size - 1
    while text < n_texts:
        stop = offsets[text + 1]
        table = tables[kinds[text]]
        while position < stop:
            byte = table[data[position]]
            if byte == _SPACE:
                position += 1
                continue
            begin = position
            # A token's first 8 bytes go into a word as they are (no multiply chain per byte); longer tokens fold
            # the rest in FNV-style. The word is mixed once, bijectively: for tokens of up to 8 bytes, equal
            # hashes and lengths mean equal tokens, and only longer ones compare bytes.
            key = np.uint64(0)
            while position < stop:
                byte = table[data[position]]
                if byte == _SPACE:
                    break
                offset = position - begin
                if offset < 8:
                    key |= np.uint64(byte) << np.uint64(8 * offset)
                else:
                    key = (key ^ np.uint64(byte)) * _FNV_PRIME
                position += 1
            length = position - begin
            h = key * _MIX
            h ^= h >> np.uint64(32)
            slot = np.int64(h & np.uint64(mask))
            while True:
                found = slots[slot]
                if found < 0:
                    break
                if hashes[found] == h and lengths[found] == length and \
                        (length <= 8 or _same(data, table, begin, pool, starts[found], length)):
                    break
                slot = (slot + 1) & mask
            if found < 0:
                if (distinct + 1) * 2 > slots.size or distinct == starts.size or pooled + length + 1 > pool.size:
                    state[0], state[1], state[2], state[3], state[4] = text, begin, count, distinct, pooled
                    return True
                found = distinct
                for i in range(length):
                    pool[pooled + i] = table[data[begin + i]]
                pool[pooled + length] = _SPACE
                starts[found], lengths[found], hashes[found] = pooled, length, h
                pooled += length + 1
                distinct += 1
                slots[slot] = found
            token_ids[count] = found
            count += 1
        ends[text] = count
        text += 1
        if text < n_texts:
            position = offsets[text]
    state[0], state[1], state[2], state[3], state[4] = text, position, count, distinct, pooled
    return False


@njit(cache=True, nogil=True)
def postings(token_ids, ends, term_of_token, n_terms):  # pragma: no cover - compiled
    """A batch's postings from its tokens: ``term_of_token`` maps a token to its term (-1: a stop word).

    Returns ``(lengths, doc_counts, doc_terms, bounds, positions, tfs)``: per text, its terms and distinct
    terms; every text's distinct terms, text after text (first occurrence order); then the postings grouped by
    term (term t's are ``bounds[t]:bounds[t + 1]``), texts ascending within a term: each one's text position
    and frequency."""
    n_texts = ends.size
    lengths = np.zeros(n_texts, np.int64)
    doc_counts = np.zeros(n_texts, np.int64)
    last_text = np.full(n_terms, -1, np.int64)
    pair_at = np.empty(n_terms, np.int64)
    pair_terms = np.empty(token_ids.size, np.int32)
    pair_texts = np.empty(token_ids.size, np.int32)
    pair_tfs = np.empty(token_ids.size, np.int32)
    per_term = np.zeros(n_terms + 1, np.int64)
    pairs = 0
    begin = 0
    for text in range(n_texts):
        first_pair = pairs
        for occurrence in range(begin, ends[text]):
            term = term_of_token[token_ids[occurrence]]
            if term < 0:
                continue
            lengths[text] += 1
            if last_text[term] != text:
                last_text[term] = text
                pair_at[term] = pairs
                pair_terms[pairs], pair_texts[pairs], pair_tfs[pairs] = term, text, 1
                per_term[term + 1] += 1
                pairs += 1
            else:
                pair_tfs[pair_at[term]] += 1
        doc_counts[text] = pairs - first_pair
        begin = ends[text]
    bounds = np.cumsum(per_term)
    cursor = bounds[:-1].copy()
    positions = np.empty(pairs, np.int32)  # 32 bits: half the fresh memory (page faults) of int64
    tfs = np.empty(pairs, np.int32)
    for pair in range(pairs):  # pairs come text after text, so each term's texts come out ascending
        term = pair_terms[pair]
        at = cursor[term]
        positions[at], tfs[at] = pair_texts[pair], pair_tfs[pair]
        cursor[term] = at + 1
    return lengths, doc_counts, pair_terms[:pairs].copy(), bounds, positions, tfs


@njit(cache=True, nogil=True)
def copy_groups(source, starts, sizes, destinations, width, out):  # pragma: no cover - compiled
    """Copy groups of ``width``-byte items: group g's ``sizes[g]`` items from item ``starts[g]`` of ``source``
    to item ``destinations[g]`` of ``out`` (both raw bytes). Combining batches moves each term's postings as a
    block: one copy per group instead of a gather by index per posting."""
    for group in range(sizes.size):
        source_at, out_at, size = starts[group] * width, destinations[group] * width, sizes[group] * width
        out[out_at : out_at + size] = source[source_at : source_at + size]


def warm_up() -> None:
    """Compile (or load from numba's cache) every kernel for the argument types the analysis passes."""
    data = np.frombuffer(b"Warm up, warm UP", dtype=np.uint8)
    token_ids, ends, pool = tokenize(data, np.array([0, 8, 16], np.int64), np.array([RAW, TOKENISED], np.uint8),
                                     TABLES)
    distinct = pool.tobytes().count(b" ")
    postings(token_ids, ends, np.arange(distinct, dtype=np.int32), distinct)
    copy_groups(np.zeros(1, np.uint8), np.zeros(1, np.int64), np.ones(1, np.int64), np.zeros(1, np.int64), 1,
                np.empty(1, np.uint8))


warm_up()

"""A batch of texts tokenised by Arrow's C++ kernels: the keyword index's write path.

For ASCII text, ``Analyzer.tokens`` is: lowercase, every character but ``[a-z0-9_]`` becomes a space, split
on spaces. Here one ``bytes.translate`` does the first two for a whole batch (a 256-byte table, in C), and
Arrow splits the batch into tokens, tells each token's text and hashes tokens into distinct ones, so Python
only ever sees the distinct tokens (stems and stop words are looked up per distinct token). The per-token
Python work this replaces (a dict lookup per token over ~9M tokens at 100k chunks) was half of ingestion.
Texts with a non-ASCII character keep the exact per-text path (accent folding, Unicode ``\\w``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# Uppercase ASCII to lowercase, word characters kept, every other ASCII byte (NUL included) a space. Bytes from
# 128 up never occur: only ASCII texts come here.
_ASCII_TABLE = bytes(
    c + 32 if 65 <= c <= 90 else c if c < 128 and (chr(c).isalnum() or chr(c) == "_") else 32 for c in range(256)
)
_CHUNK_TEXTS = 50_000  # texts split at once: bounds Arrow's token arrays (about 16 bytes a token)


def batch_tokens(texts: Sequence[str], tokenize_one: Callable[[str], list[str]]
                 ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(docs, token_index, tokens)``: for every token occurrence, its text's position in ``texts`` and its
    index in ``tokens`` (the distinct tokens; may include "", which is not a token and is for the caller to
    drop). Each text's occurrences come in text order. ``tokenize_one`` tokenises a non-ASCII text."""
    joined = "".join(texts)
    if joined.isascii():
        if len(texts) <= _CHUNK_TEXTS:  # the common case: Arrow's dictionary is the answer as it is
            return _ascii_tokens(texts, joined)
        fast: Sequence[int] = range(len(texts))
        slow: list[int] = []
    else:
        fast = [i for i, text in enumerate(texts) if text.isascii()]
        slow = [i for i, text in enumerate(texts) if not text.isascii()]
    ids: dict[str, int] = {}
    counter = itertools.count()
    doc_parts: list[np.ndarray] = []
    token_parts: list[np.ndarray] = []
    for start in range(0, len(fast), _CHUNK_TEXTS):
        chunk = fast[start : start + _CHUNK_TEXTS]
        parents, indices, distinct = _ascii_tokens([texts[i] for i in chunk])
        # the chunk's own dictionary, renumbered into the batch's (a Python step per distinct token only)
        remap = np.fromiter(map(ids.setdefault, distinct, counter), dtype=np.int64, count=len(distinct))
        positions = np.asarray(chunk, dtype=np.int64) if isinstance(chunk, list) else \
            np.arange(chunk.start, chunk.stop, dtype=np.int64)
        doc_parts.append(positions[parents])
        token_parts.append(remap[indices])
    for i in slow:
        tokens = tokenize_one(texts[i])
        doc_parts.append(np.full(len(tokens), i, dtype=np.int64))
        token_parts.append(np.fromiter(map(ids.setdefault, tokens, counter), dtype=np.int64, count=len(tokens)))
    if not doc_parts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), []
    # setdefault's ids are sparse (the counter moves on for known tokens too): renumbered densely, in order
    dense = np.zeros(next(counter), dtype=np.int64)
    dense[np.fromiter(ids.values(), dtype=np.int64, count=len(ids))] = np.arange(len(ids), dtype=np.int64)
    return np.concatenate(doc_parts), dense[np.concatenate(token_parts)], list(ids)


def _ascii_tokens(texts: Sequence[str], joined: str | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """For each token of the ASCII ``texts`` (``joined``: them joined, if at hand): its text's index and its
    index among the distinct tokens."""
    data = (joined if joined is not None else "".join(texts)).encode("ascii").translate(_ASCII_TABLE)
    offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, texts), dtype=np.int64, count=len(texts)), out=offsets[1:])
    array = pa.LargeStringArray.from_buffers(len(texts), pa.py_buffer(offsets), pa.py_buffer(data))
    split = pc.ascii_split_whitespace(array)
    encoded = pc.dictionary_encode(pc.list_flatten(split))
    parents = pc.list_parent_indices(split).to_numpy()
    return parents, encoded.indices.to_numpy(), encoded.dictionary.to_pylist()

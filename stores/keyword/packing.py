"""How a keyword segment's three arrays are stored: the narrowest integer widths their values fit.

Since index format 4 no segment row is written (postings go in bucket rows, ``stores.keyword.postings``): rows
that indexes of formats 2-3 hold are read with ``unpack`` until their buckets merge, and a batch's columns are
still laid out with ``choose``/``pack`` before they are combined. What follows describes those rows.

A segment row holds a term's postings as packed arrays (document rowids, term frequencies, document
lengths). They were always int64 / uint32 / uint32, 16 bytes a posting: at 100k chunks, 112 MB written to
the WAL and fsynced at commit for ~7M postings. Rowids below 2**32, frequencies below 256 and lengths
below 65536 (the common case) take 4 + 1 + 2 = 7 bytes. ``kw_segments.packing`` records each row's
widths as three digits (docs, frequencies, lengths: 412 for the case above); rows written before the
column existed read its default, 844, the old layout. Decoded arrays are the same whatever the packing.

Document rowids ascend within a row, mostly by small steps: a row whose steps all fit 16 bits stores them as
uint16 gaps (docs digit ``GAPS16``, 2 bytes a posting instead of 4) after its first rowid, kept in the row's
``doc_base`` column (default 0, unused by the other packings); the blob holds the ``n - 1`` gaps after it. At
100k chunks that halves the rowids' 28 MB. Decoding is one ``np.cumsum``. Rows that do not fit (rowids out of
order, or a step past 65535: a rare term's) keep the widths above. A row's docs digit is chosen per row
(format 3's writer), frequencies and lengths per write. Format 3 of the index: earlier code cannot read a ``GAPS16``
row (a one-way change); rows of format 2 read as they did.
"""

from __future__ import annotations

import numpy as np

LEGACY = 844
GAPS16 = 2  # the docs digit of rows stored as uint16 gaps after ``doc_base``
_GAP = np.dtype("<u2")
_MAX_GAP = int(np.iinfo(_GAP).max)
_DOC_TYPES = {4: np.dtype("<u4"), 8: np.dtype("<i8")}
_COUNT_TYPES = {1: np.dtype("<u1"), 2: np.dtype("<u2"), 4: np.dtype("<u4")}


def _count_width(values: np.ndarray) -> int:
    top = int(values.max()) if values.size else 0
    return 1 if top < 2**8 else 2 if top < 2**16 else 4


def choose(docs: np.ndarray, tfs: np.ndarray, lengths: np.ndarray) -> int:
    """The column packing for these postings (or for any subset of them): plain widths, no gaps; ``rows`` picks
    gaps per row of a column packed so."""
    doc_width = 4 if docs.size == 0 or (int(docs.min()) >= 0 and int(docs.max()) < 2**32) else 8
    return doc_width * 100 + _count_width(tfs) * 10 + _count_width(lengths)


def widest(packings: list[int]) -> int:
    """A packing that holds what each of ``packings`` (column packings, never ``GAPS16``) holds."""
    return max(p // 100 for p in packings) * 100 + max(p // 10 % 10 for p in packings) * 10 + \
        max(p % 10 for p in packings)


def dtypes(packing: int) -> tuple[np.dtype, np.dtype, np.dtype]:
    """The dtypes of a row's docs, tfs and lengths blobs."""
    return _DOC_TYPES[packing // 100], _COUNT_TYPES[packing // 10 % 10], _COUNT_TYPES[packing % 10]


def pack(packing: int, docs: np.ndarray, tfs: np.ndarray,
         lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    doc_type, tf_type, length_type = dtypes(packing)
    return docs.astype(doc_type), tfs.astype(tf_type), lengths.astype(length_type)


def unpack(packing: int, docs: bytes, tfs: bytes, lengths: bytes,
           doc_base: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A row's arrays; docs int64 for ``GAPS16`` rows, the stored width otherwise (the readers widen them)."""
    tf_type, length_type = _COUNT_TYPES[packing // 10 % 10], _COUNT_TYPES[packing % 10]
    if packing // 100 == GAPS16:
        gaps = np.frombuffer(docs, dtype=_GAP)
        decoded = np.empty(gaps.size + 1, dtype=np.int64)
        decoded[0] = doc_base
        decoded[1:] = gaps
        np.cumsum(decoded, out=decoded)  # in place, int64 to int64: twice as fast as a casting cumsum
    else:
        decoded = np.frombuffer(docs, dtype=_DOC_TYPES[packing // 100])
    return decoded, np.frombuffer(tfs, dtype=tf_type), np.frombuffer(lengths, dtype=length_type)

"""How a keyword segment's three arrays are stored: the narrowest integer widths their values fit.

A segment row holds a term's postings as packed arrays (document rowids, term frequencies, document
lengths). They were always int64 / uint32 / uint32, 16 bytes a posting: at 100k chunks, 112 MB written to
the WAL and fsynced at commit for ~7M postings. Rowids below 2**32, frequencies below 256 and lengths
below 65536 (the common case) take 4 + 1 + 2 = 7 bytes. ``kw_segments.packing`` records each row's
widths as three digits (docs, frequencies, lengths: 412 for the case above); rows written before the
column existed read its default, 844, the old layout. Decoded arrays are the same whatever the packing.
"""

from __future__ import annotations

import numpy as np

LEGACY = 844
_DOC_TYPES = {4: np.dtype("<u4"), 8: np.dtype("<i8")}
_COUNT_TYPES = {1: np.dtype("<u1"), 2: np.dtype("<u2"), 4: np.dtype("<u4")}


def _count_width(values: np.ndarray) -> int:
    top = int(values.max()) if values.size else 0
    return 1 if top < 2**8 else 2 if top < 2**16 else 4


def choose(docs: np.ndarray, tfs: np.ndarray, lengths: np.ndarray) -> int:
    """The packing for these postings (or for any subset of them)."""
    doc_width = 4 if docs.size == 0 or (int(docs.min()) >= 0 and int(docs.max()) < 2**32) else 8
    return doc_width * 100 + _count_width(tfs) * 10 + _count_width(lengths)


def widest(packings: list[int]) -> int:
    """A packing that holds what each of ``packings`` holds."""
    return max(p // 100 for p in packings) * 100 + max(p // 10 % 10 for p in packings) * 10 + \
        max(p % 10 for p in packings)


def dtypes(packing: int) -> tuple[np.dtype, np.dtype, np.dtype]:
    """The dtypes of a row's docs, tfs and lengths blobs."""
    return _DOC_TYPES[packing // 100], _COUNT_TYPES[packing // 10 % 10], _COUNT_TYPES[packing % 10]


def pack(packing: int, docs: np.ndarray, tfs: np.ndarray,
         lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    doc_type, tf_type, length_type = dtypes(packing)
    return docs.astype(doc_type), tfs.astype(tf_type), lengths.astype(length_type)


def blobs(packing: int, docs: np.ndarray, tfs: np.ndarray, lengths: np.ndarray) -> tuple[bytes, bytes, bytes]:
    packed = pack(packing, docs, tfs, lengths)
    return packed[0].tobytes(), packed[1].tobytes(), packed[2].tobytes()


def unpack(packing: int, docs: bytes, tfs: bytes, lengths: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    doc_type, tf_type, length_type = dtypes(packing)
    return np.frombuffer(docs, dtype=doc_type), np.frombuffer(tfs, dtype=tf_type), \
        np.frombuffer(lengths, dtype=length_type)

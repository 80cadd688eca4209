"""Postings in blocks of terms (index format 4): a row per write and bucket of term ids (table ``kw_buckets``).

A bucket is ``2**BUCKET_BITS`` consecutive term ids. A write adds, for each bucket its terms fall in, one row
holding all their postings: the bucket's terms present (int32, ascending), where each one's postings start and
end (``bounds``, uint32, one more than the terms), and three columns of postings grouped by term, documents
ascending within a term. It replaces a ``kw_segments`` row per term and write: at 100k chunks of real text
(164k terms) those rows were 3 s of inserts in a bulk load, where its 2,560 bucket rows are encoded by numpy
over the whole write at once.

- documents: the step from the posting before (the rowid itself for a term's first posting) as uint16
  ``gaps``; a step that does not fit (a term's first rowid past 65535, a rare term's long step, rowids out of
  order) is written 0 there and listed in ``escapes`` (positions, uint32) and ``escaped`` (the steps, int64).
  Decoding is a cumsum from the term's first posting;
- frequencies and lengths at the narrowest width of the write's values, ``packing`` = 10 * frequency width +
  length width (bytes: 1, 2 or 4).

A query reads its term's bucket rows (``seg`` order: one statement, small rows' columns with it) and decodes only
its term's slice of each. Rows are merged by a tiered policy (``merge_plans``, ``tiered_suffix``): the newest
rows of one tier or below, once ``MERGE_AT`` of them, become one row taking the oldest one's ``seg``, tombstoned
postings dropped. A bucket with rows an index of format 3 left in ``kw_segments`` for its terms is merged whole
with them (``seg`` 0), as before (those are read as they are until then: no conversion pass over an old index's
postings).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence

import numpy as np

from kb_base.errors import StoreError
from stores.keyword import packing as segment_packing

TIER_BASE = 512  # postings: rows below this are one tier, merged together cheaply (a few KB)
BUCKET_BITS = 6  # 64 term ids: a cold query reads ~4x less of a row than with 256, a bulk write makes 4x more rows
_TERM, _BOUND, _GAP = np.dtype("<i4"), np.dtype("<u4"), np.dtype("<u2")
_ESCAPE, _ESCAPED = np.dtype("<u4"), np.dtype("<i8")
_MAX_GAP = int(np.iinfo(_GAP).max)
_COUNT_TYPES = {1: np.dtype("<u1"), 2: np.dtype("<u2"), 4: np.dtype("<u4")}
_COLUMNS = "terms, bounds, gaps, escapes, escaped, tfs, lengths, packing"
_WHOLE_ROW = 4096  # postings: a row up to this many is read whole (~20 KB), a larger one by the term's slice
Row = tuple[int, int, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]
Postings = tuple[np.ndarray, np.ndarray, np.ndarray]  # docs (int64), frequencies, lengths


def create(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE IF NOT EXISTS kw_buckets (bucket INTEGER NOT NULL, seg INTEGER NOT NULL, "
                 "terms BLOB NOT NULL, bounds BLOB NOT NULL, gaps BLOB NOT NULL, escapes BLOB NOT NULL, "
                 "escaped BLOB NOT NULL, tfs BLOB NOT NULL, lengths BLOB NOT NULL, packing INTEGER NOT NULL)")
    conn.execute("CREATE UNIQUE INDEX IF NOT EXISTS kw_buckets_bucket ON kw_buckets (bucket, seg)")


def bucket_of(term_ids: np.ndarray) -> np.ndarray:
    return np.asarray(term_ids, dtype=np.int64) >> BUCKET_BITS


def _width(values: np.ndarray) -> int:
    top = int(values.max()) if values.size else 0
    return 1 if top < 2**8 else 2 if top < 2**16 else 4


def encode(seg: int, term_ids: np.ndarray, bounds: np.ndarray, docs: np.ndarray, tfs: np.ndarray,
           lengths: np.ndarray) -> list[Row]:
    """The rows of one write: ``term_ids`` ascending, term i's postings ``[bounds[i], bounds[i + 1])`` of the
    columns (documents ascending within a term). The steps, escapes and widths are computed over the whole
    columns at once; what is left per row (bucket) is slicing (views: sqlite3 binds a buffer as a blob)."""
    if term_ids.size == 0:
        return []
    term_ids = np.asarray(term_ids, dtype=np.int64)
    bounds = np.asarray(bounds, dtype=np.int64)
    steps = np.asarray(docs, dtype=np.int64).copy()
    steps[1:] -= steps[:-1].copy()
    starts = bounds[:-1]
    steps[starts] = np.asarray(docs[starts], dtype=np.int64)  # a term's first posting: its rowid
    escape = (steps < 0) | (steps > _MAX_GAP)
    gaps = np.where(escape, 0, steps).astype(_GAP)
    escape_at = np.flatnonzero(escape)
    packing = _width(tfs) * 10 + _width(lengths)
    tfs = np.asarray(tfs).astype(_COUNT_TYPES[packing // 10])
    lengths = np.asarray(lengths).astype(_COUNT_TYPES[packing % 10])
    buckets = bucket_of(term_ids)
    edges = np.concatenate(([0], np.flatnonzero(buckets[1:] != buckets[:-1]) + 1, [term_ids.size])).tolist()
    post_edges = bounds[edges].tolist()
    escape_edges = np.searchsorted(escape_at, post_edges).tolist()
    rows: list[Row] = []
    for r in range(len(edges) - 1):
        a, b, ps, pe, lo, hi = edges[r], edges[r + 1], post_edges[r], post_edges[r + 1], escape_edges[r], \
            escape_edges[r + 1]
        rows.append((int(buckets[a]), seg, term_ids[a:b].astype(_TERM), (bounds[a : b + 1] - ps).astype(_BOUND),
                     gaps[ps:pe], (escape_at[lo:hi] - ps).astype(_ESCAPE), steps[escape_at[lo:hi]].astype(_ESCAPED),
                     tfs[ps:pe], lengths[ps:pe], packing))
    return rows


def insert(conn: sqlite3.Connection, rows: Iterable[Row]) -> None:
    conn.executemany(f"INSERT INTO kw_buckets (bucket, seg, {_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                     rows)


class _Decoded:
    """One stored row's arrays (no copies: views of its blobs)."""

    def __init__(self, terms: bytes, bounds: bytes, gaps: bytes, escapes: bytes, escaped: bytes, tfs: bytes,
                 lengths: bytes, packing: int) -> None:
        self.terms = np.frombuffer(terms, dtype=_TERM)
        self.bounds = np.frombuffer(bounds, dtype=_BOUND).astype(np.int64)
        self.gaps = np.frombuffer(gaps, dtype=_GAP)
        self.escapes = np.frombuffer(escapes, dtype=_ESCAPE).astype(np.int64)
        self.escaped = np.frombuffer(escaped, dtype=_ESCAPED)
        self.tfs = np.frombuffer(tfs, dtype=_COUNT_TYPES[packing // 10])
        self.lengths = np.frombuffer(lengths, dtype=_COUNT_TYPES[packing % 10])
        if self.bounds.size != self.terms.size + 1 or self.bounds[-1] != self.gaps.size or \
                self.tfs.size != self.gaps.size or self.lengths.size != self.gaps.size:
            raise StoreError("keyword index: a postings row's arrays disagree in size")

    def term(self, term_id: int) -> Postings | None:
        at = int(np.searchsorted(self.terms, term_id))
        if at == self.terms.size or int(self.terms[at]) != term_id:
            return None
        s, e = int(self.bounds[at]), int(self.bounds[at + 1])
        docs = self.gaps[s:e].astype(np.int64)
        lo, hi = np.searchsorted(self.escapes, (s, e)).tolist()
        if hi > lo:
            docs[self.escapes[lo:hi] - s] = self.escaped[lo:hi]
        np.cumsum(docs, out=docs)
        return docs, self.tfs[s:e], self.lengths[s:e]

    def everything(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(term of each posting, docs, tfs, lengths)``: one cumsum for the row, each term's base taken off."""
        steps = self.gaps.astype(np.int64)
        steps[self.escapes] = self.escaped
        total = np.cumsum(steps)
        starts, counts = self.bounds[:-1], np.diff(self.bounds)
        before = total[starts] - steps[starts]  # what the cumsum carried into each term from the ones before
        return np.repeat(self.terms.astype(np.int64), counts), total - np.repeat(before, counts), self.tfs, \
            self.lengths


def term_postings(conn: sqlite3.Connection, term_id: int) -> list[tuple[int, Postings]]:
    """``(seg, postings)`` of each row holding the term. A row's small columns come first (its terms, bounds,
    escapes); of its three big ones only the term's slice is read (SQLite's incremental blob reads) when the row
    is large: a rare term sharing a bucket with a common one reads its own postings, not the common term's."""
    out = []
    bucket = term_id >> BUCKET_BITS
    small = _WHOLE_ROW * _GAP.itemsize
    # a small row's big columns come with its small ones (one statement for the bucket, however many rows the
    # tiered merges leave it); a large row's stay unread here (CASE: SQLite does not load a column it skips)
    for rowid, seg, terms, bounds, escapes, escaped, packing, *columns in conn.execute(
            "SELECT rowid, seg, terms, bounds, escapes, escaped, packing, "
            f"CASE WHEN length(gaps) <= {small} THEN gaps END, CASE WHEN length(gaps) <= {small} THEN tfs END, "
            f"CASE WHEN length(gaps) <= {small} THEN lengths END FROM kw_buckets WHERE bucket = ? ORDER BY seg",
            (bucket,)):
        ids = np.frombuffer(terms, dtype=_TERM)
        at = int(np.searchsorted(ids, term_id))
        if at == ids.size or int(ids[at]) != term_id:
            continue
        ends = np.frombuffer(bounds, dtype=_BOUND)
        s, e = int(ends[at]), int(ends[at + 1])
        types = (_GAP, _COUNT_TYPES[packing // 10], _COUNT_TYPES[packing % 10])
        if columns[0] is not None:
            gaps, tfs, lengths = (np.frombuffer(blob, dtype=t)[s:e] for blob, t in zip(columns, types, strict=True))
        else:  # a large row: only the term's slice of each column (a rare term beside a common one reads little)
            gaps, tfs, lengths = (_slice(conn, column, rowid, s, e, t)
                                  for column, t in zip(("gaps", "tfs", "lengths"), types, strict=True))
        docs = gaps.astype(np.int64)
        positions = np.frombuffer(escapes, dtype=_ESCAPE).astype(np.int64)
        lo, hi = np.searchsorted(positions, (s, e)).tolist()
        if hi > lo:
            docs[positions[lo:hi] - s] = np.frombuffer(escaped, dtype=_ESCAPED)[lo:hi]
        np.cumsum(docs, out=docs)
        out.append((seg, (docs, tfs, lengths)))
    return out


def _slice(conn: sqlite3.Connection, column: str, rowid: int, start: int, end: int, dtype: np.dtype) -> np.ndarray:
    with conn.blobopen("kw_buckets", column, rowid, readonly=True) as blob:
        blob.seek(start * dtype.itemsize)
        data = blob.read((end - start) * dtype.itemsize)
    if len(data) != (end - start) * dtype.itemsize:
        raise StoreError(f"keyword index: a postings row's {column} is shorter than its bounds say")
    return np.frombuffer(data, dtype=dtype)


def crowded(conn: sqlite3.Connection, buckets: Sequence[int], limit: int) -> list[int]:
    """Those of ``buckets`` with at least ``limit`` rows."""
    out: list[int] = []
    for start in range(0, len(buckets), 500):
        part = list(buckets[start : start + 500])
        marks = ",".join("?" * len(part))
        out += [r[0] for r in conn.execute(f"SELECT bucket FROM kw_buckets WHERE bucket IN ({marks}) "
                                           "GROUP BY bucket HAVING COUNT(*) >= ?", [*part, limit])]
    return out


def row_count(conn: sqlite3.Connection, term_id: int) -> int:
    """The rows a query of the term reads: its bucket's."""
    return conn.execute("SELECT COUNT(*) FROM kw_buckets WHERE bucket = ?", (term_id >> BUCKET_BITS,)).fetchone()[0]


def tier(size: int, fan_out: int) -> int:
    """A row's size class: 0 below ``TIER_BASE`` postings, then one more per ``fan_out`` times as many."""
    tier = 0
    while size >= TIER_BASE * fan_out**tier:
        tier += 1
    return tier


def tiered_suffix(sizes: Sequence[int], fan_out: int) -> int | None:
    """Where the merge of a bucket's rows (``sizes`` in postings, oldest first) starts, or None: a tiered policy.

    The newest row's tier ``t``; the run of newest rows whose tiers are all at most ``t``; once that run holds
    ``fan_out`` rows it is merged into one, which may complete a run of the tier above (merged in the same pass:
    the merge starts where the last run of the cascade does). A posting is rewritten about once per tier (log of
    the bucket's size, base ``fan_out``), never with the bucket's big old rows at every few commits; a bucket
    keeps fewer than ``fan_out`` rows per tier."""
    sizes = list(sizes)
    start = None
    while len(sizes) >= fan_out:
        top = tier(sizes[-1], fan_out)
        run = 0
        while run < len(sizes) and tier(sizes[-1 - run], fan_out) <= top:
            run += 1
        if run < fan_out:
            break
        sizes[-run:] = [sum(sizes[-run:])]
        start = len(sizes) - 1
    return start


def merge_plans(conn: sqlite3.Connection, buckets: Sequence[int], fan_out: int, legacy: bool) -> list[tuple[int, int]]:
    """``(bucket, first seg)`` of each merge the tiered policy asks of ``buckets``: rows from that seg on become
    one. With rows of format 3 left (``legacy``) a bucket is merged whole, as before, once it has ``fan_out``."""
    plans: list[tuple[int, int]] = []
    full = crowded(conn, buckets, fan_out)  # fewer rows than the fan-out: nothing to merge, sizes not read
    if legacy:
        return [(bucket, 0) for bucket in full]
    for bucket in full:
        # length() of a blob is read from the row's header: the postings themselves are not read
        rows = conn.execute("SELECT seg, length(gaps) FROM kw_buckets WHERE bucket = ? ORDER BY seg",
                            (bucket,)).fetchall()
        at = tiered_suffix([size // _GAP.itemsize for _, size in rows], fan_out)
        if at is not None:
            plans.append((bucket, int(rows[at][0])))
    return plans


def merge(conn: sqlite3.Connection, bucket: int, deleted: np.ndarray, legacy: bool, first_seg: int = 0) -> int:
    """Rewrite a bucket's rows from ``first_seg`` on (and ``kw_segments`` rows of its terms, ``legacy``, when the
    merge is whole) as one row, tombstoned postings (``deleted``, sorted) dropped: how many were. The new row
    takes ``first_seg``: rows keep their order, so a term's documents stay ascending across rows."""
    parts: list[tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    for seg, *row in conn.execute(f"SELECT seg, {_COLUMNS} FROM kw_buckets WHERE bucket = ? AND seg >= ?",
                                  (bucket, first_seg)):
        parts.append((seg, *_Decoded(*row).everything()))
    low, high = bucket << BUCKET_BITS, ((bucket + 1) << BUCKET_BITS) - 1
    if legacy and first_seg == 0:
        for seg, term, *row in conn.execute("SELECT seg, term_id, packing, docs, tfs, lengths, doc_base "
                                            "FROM kw_segments WHERE term_id BETWEEN ? AND ?", (low, high)):
            docs, tfs, lengths = segment_packing.unpack(*row)
            parts.append((seg, np.full(docs.size, term, np.int64), docs.astype(np.int64), tfs, lengths))
        conn.execute("DELETE FROM kw_segments WHERE term_id BETWEEN ? AND ?", (low, high))
    conn.execute("DELETE FROM kw_buckets WHERE bucket = ? AND seg >= ?", (bucket, first_seg))
    if not parts:
        return 0
    parts.sort(key=lambda part: part[0])  # older rows first: a term's documents keep their order
    terms, docs, tfs, lengths = (np.concatenate([p[i] for p in parts]) for i in range(1, 5))
    dropped = 0
    if deleted.size:
        at = np.minimum(np.searchsorted(deleted, docs), deleted.size - 1)
        keep = deleted[at] != docs
        dropped = int(keep.size - np.count_nonzero(keep))
        terms, docs, tfs, lengths = terms[keep], docs[keep], tfs[keep], lengths[keep]
    if terms.size:
        order = np.argsort(terms, kind="stable")
        terms, docs, tfs, lengths = terms[order], docs[order], tfs[order], lengths[order]
        present, starts = np.unique(terms, return_index=True)
        insert(conn, encode(first_seg, present, np.append(starts, terms.size), docs, tfs, lengths))
    return dropped


def buckets(conn: sqlite3.Connection, legacy: bool) -> list[int]:
    """Every bucket with postings (with ``legacy``, those of ``kw_segments`` rows too)."""
    found = {r[0] for r in conn.execute("SELECT DISTINCT bucket FROM kw_buckets")}
    if legacy:
        found |= {r[0] >> BUCKET_BITS for r in conn.execute("SELECT DISTINCT term_id FROM kw_segments")}
    return sorted(found)

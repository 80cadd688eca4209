"""Which rowids each live segment may hold, in SQLite, so the merge policy can choose without loading segments.

The policy needs each segment's size and live count. Sizes are in the ``segments`` table; live counts need the
tombstones that fall in each segment, and a segment's ``rowid_lo..rowid_hi`` range does not say that: a merge of
non-adjacent segments (the tiered policy picks a tier's smallest, and deletions move a segment down a tier) has
a range that covers segments it did not take. Loading every segment to count its deletions cost a write-only
process (an ingestion, a folder sync) all the knowledge bank's vectors: about 1.5 GB at 1M chunks.

So each live segment has spans, rows ``(lo, hi, segment)``: every rowid the segment holds is in one of its spans,
and no two spans overlap (a commit's span is the rowids its transaction allocated, never reused; a merge output
takes over its inputs' spans, joined where no other segment's span lies between). A segment's deleted count is
then the tombstones inside its spans: a range lookup on the tombstones' primary key per span. Spans describe
the latest committed generation only; the commit that retires a segment reassigns or removes its spans.

A knowledge bank written before spans existed (or by a process of that version meanwhile) has live segments
without spans, or spans of retired ones: ``segment_stats`` says so (None), and the merger rebuilds every span
once from the loaded segments' rowids (``spans_of``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

SCHEMA = """
CREATE TABLE IF NOT EXISTS segment_spans (lo INTEGER PRIMARY KEY, hi INTEGER NOT NULL, segment INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS segment_spans_by_segment ON segment_spans(segment);
"""


@dataclass(frozen=True)
class SegmentStats:
    """What the merge policy needs of a segment, read from SQLite: rows in its file, and how many are live."""

    number: int
    size: int
    live: int
    lo: int
    hi: int
    kind: str


def add_span(conn: sqlite3.Connection, segment: int, lo: int, hi: int) -> None:
    """A commit's new segment: the rowids its transaction allocated (``lo..hi``) are its own."""
    conn.execute("INSERT INTO segment_spans(lo, hi, segment) VALUES (?, ?, ?)", (lo, hi, segment))


def clear_spans(conn: sqlite3.Connection) -> None:
    """Every segment retires (a ``clear``)."""
    conn.execute("DELETE FROM segment_spans")


def retire_into(conn: sqlite3.Connection, inputs: Sequence[int], output: int | None) -> None:
    """A merge's commit: the inputs' spans become the output's (removed when nothing was live), then the output's
    neighbouring spans are joined where no other segment's span lies between them (rowids there are held by no
    live segment, and never will be: new rowids are above every allocated one), keeping the table small."""
    marks = ",".join("?" * len(inputs))
    if output is None:
        conn.execute(f"DELETE FROM segment_spans WHERE segment IN ({marks})", list(inputs))
        return
    conn.execute(f"UPDATE segment_spans SET segment = ? WHERE segment IN ({marks})", [output, *inputs])
    spans = conn.execute("SELECT lo, hi FROM segment_spans WHERE segment = ? ORDER BY lo", (output,)).fetchall()
    joined: list[list[int]] = []
    for lo, hi in spans:
        if joined and conn.execute("SELECT 1 FROM segment_spans WHERE lo > ? AND lo < ? LIMIT 1",
                                   (joined[-1][1], lo)).fetchone() is None:
            joined[-1][1] = hi
        else:
            joined.append([lo, hi])
    if len(joined) < len(spans):
        conn.execute("DELETE FROM segment_spans WHERE segment = ?", (output,))
        conn.executemany("INSERT INTO segment_spans(lo, hi, segment) VALUES (?, ?, ?)",
                         [(lo, hi, output) for lo, hi in joined])


def segment_stats(conn: sqlite3.Connection, generation: int) -> list[SegmentStats] | None:
    """Every segment live at ``generation`` (the latest committed; ``conn`` in a read snapshot of it) with its
    live count, oldest first; None when the spans do not describe exactly those segments (see the module)."""
    rows = conn.execute("SELECT segment, count, rowid_lo, rowid_hi, kind FROM segments WHERE added <= ? AND "
                        "(retired IS NULL OR retired > ?) ORDER BY segment", (generation, generation)).fetchall()
    spanned = {r[0] for r in conn.execute("SELECT DISTINCT segment FROM segment_spans")}
    if spanned != {r[0] for r in rows}:
        return None
    # the join's inner loop is a range scan of the tombstones' INTEGER PRIMARY KEY per span
    dead = dict(conn.execute("SELECT p.segment, COUNT(*) FROM segment_spans AS p JOIN tombstones AS t "
                             "ON t.rowid BETWEEN p.lo AND p.hi WHERE t.gen <= ? GROUP BY p.segment", (generation,)))
    return [SegmentStats(number, count, count - dead.get(number, 0), lo, hi, kind)
            for number, count, lo, hi, kind in rows]


def spans_of(owned: Sequence[tuple[int, np.ndarray]]) -> list[tuple[int, int, int]]:
    """(lo, hi, segment) spans of segments given with every rowid they hold (deleted ones too): the runs of one
    segment's rowids in the rowid order of all of them."""
    if not owned:
        return []
    rowids = np.concatenate([ids for _, ids in owned])
    owners = np.concatenate([np.full(ids.size, number, dtype=np.int64) for number, ids in owned])
    order = np.argsort(rowids, kind="stable")
    rowids, owners = rowids[order], owners[order]
    if rowids.size == 0:
        return []
    starts = np.concatenate([[0], np.flatnonzero(owners[1:] != owners[:-1]) + 1])
    ends = np.concatenate([starts[1:], [rowids.size]]) - 1
    return list(zip(rowids[starts].tolist(), rowids[ends].tolist(), owners[starts].tolist(), strict=True))


def rewrite_spans(conn: sqlite3.Connection, spans: Sequence[tuple[int, int, int]]) -> None:
    conn.execute("DELETE FROM segment_spans")
    conn.executemany("INSERT INTO segment_spans(lo, hi, segment) VALUES (?, ?, ?)", spans)

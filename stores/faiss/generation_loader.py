"""A FAISS store's generations in memory: each one built from the last by loading only its new segments.

A reader keeps the ``SegmentSet`` of the generation it last answered from. When the committed generation moves
from L to C, the next search reads which segments C holds and the tombstones of (L, C] (two indexed queries in
its SQLite snapshot), loads the segment files it lacks (a commit's own segment: small by construction) and
swaps one reference. Everything loaded before is reused as it is, so a commit costs a reader what it changed,
not the knowledge bank's size.

A merge output is the one big new file a generation can bring, and it changes no content: its inputs hold the
same live rows. So a reader that still has the inputs answers with them (deletions of the new generation
applied) while the output loads on a helper thread, and takes the output at the first search after that.

A big commit (a bulk write of thousands of documents) brings a big file too. The similarity hot path
(``get(..., background=True)``) then keeps answering from the whole generation it has while the files it lacks
load on helper threads, and switches at the first search after they are in: no search waits for them. Small
ones load inline (about a search's time), so a small write stays visible at the next search in every process.
A commit in this process hands its segment over in memory (``offer``): its own searches read no file for it.

A reader that filters (its generation's segments have metadata columns, ``stores.faiss.segment_columns``) has the
helper thread read the new segments' columns too, in its own read transaction, before the switch: the first
filtered search on the new generation then reads no record either. A reader that never filtered reads none.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np

from stores.faiss.compressed import needs_vectors, tune, vectors_path
from stores.faiss.filtered import FilteredSearch
from stores.faiss.segment_columns import read_segment_columns
from stores.faiss.segments import Segment, SegmentSet
from stores.faiss.vector_file import VectorFile
from stores.sqlite.meta import connect_durable, read_meta

log = logging.getLogger(__name__)

# Segments below this many floats (4 MB: two huge pages) are not worth a huge-pages thread (stores.faiss.huge_pages).
_HUGE_PAGES_FLOATS = 1_000_000
# New segment files adding up to more than this are loaded on helper threads by the hot path instead of inline.
# A commit's file is written with O_DIRECT, so a reader reads it from disk: reading and preparing one took
# ~0.4 ms + ~0.8 ms per MiB here (HNSW, 384 dimensions, ~1.7 KB a vector: 100 documents 0.17 MiB 0.4 ms, 600
# 1.04 MiB 0.8 ms, 1,000 1.7 MiB 1.3 ms, 10,000 17 MiB 16 ms; flat alike), beside a warm HNSW search of 200k
# chunks at 2.3 ms, the fastest search kb has. Up to 1 MiB an inline load costs under a millisecond, and small
# writes stay visible at once across processes; above it (1,000 documents and more) the first search after a
# commit measured 2.3x-19x a warm one before these loads moved to the background.
# See docs/internals/commit-point.md ("Readers never stall").
BACKGROUND_LOAD_BYTES = 1 << 20


def live_segments(conn: sqlite3.Connection, generation: int) -> list[tuple[int, str, int]]:
    """(segment, kind, count) of every segment live at ``generation``, oldest first."""
    return conn.execute("SELECT segment, kind, count FROM segments WHERE added <= ? AND (retired IS NULL OR "
                        "retired > ?) ORDER BY segment", (generation, generation)).fetchall()


def tombstones_between(conn: sqlite3.Connection, after: int, upto: int, lo: int | None = None,
                       hi: int | None = None) -> np.ndarray:
    """Rowids deleted in generations (after, upto], sorted; only those in [lo, hi] when given."""
    if lo is None:
        rows = conn.execute("SELECT rowid FROM tombstones WHERE gen > ? AND gen <= ? ORDER BY rowid", (after, upto))
    else:
        rows = conn.execute("SELECT rowid FROM tombstones WHERE rowid BETWEEN ? AND ? AND gen > ? AND gen <= ? "
                            "ORDER BY rowid", (lo, hi, after, upto))
    return np.fromiter((r[0] for r in rows), dtype=np.int64)


class GenerationLoader:
    """The committed generations a store's readers search, built incrementally (thread-safe)."""

    def __init__(self, folder: Path, ef_search: int | None, on_load: Callable[[faiss.Index], None],
                 search_settings: dict | None = None, database: Path | None = None) -> None:
        self.folder = folder
        self.database = database  # the store's SQLite file: helper threads read metadata columns from it
        self.ef_search = ef_search
        # a compressed type's settings (stores.faiss.compressed): its search parameters and re-ranking depth
        self.search_settings = search_settings
        self._on_load = on_load
        self._lock = threading.Lock()  # one builder at a time; searches of a loaded generation never take it
        self.current: SegmentSet | None = None
        self._previous: SegmentSet | None = None
        # merge outputs in memory before any generation uses them: built by this process's merger, or read by
        # a helper thread while the inputs answered
        # (and commits' segments: offered by this process's writer, or read by a helper thread for the hot path)
        self._ready: dict[int, faiss.Index] = {}
        # the layouts helper threads built for indexes in ``_ready`` (with their metadata columns when read)
        self._layouts: dict[int, FilteredSearch] = {}
        self._loading: dict[int, threading.Thread] = {}
        # the generation whose new segments are loading for the hot path, and those segments
        self._deferred: tuple[int, frozenset[int]] | None = None
        self._failed: set[int] = set()  # segments whose helper-thread load failed: loaded inline next time
        self.files_read = 0  # segment files read by this process (tests and benchmarks read it)
        self.metadata_rows_preread = 0  # records parsed into metadata columns by helper threads (tests read it)

    def path(self, segment: int) -> Path:
        return self.folder / f"{segment}.faiss"

    def offer(self, segment: int, index: faiss.Index) -> None:
        """A merge output or a commit's segment this process built, offered before its commit: readers take it from
        memory instead of reading its file (the index must not change from here on; ``withdraw`` if the commit
        fails, before the writer lock is released, as the next commit reuses the number). Not kept by a process
        that has not searched (an ingestion, a folder sync): nothing would ever take it."""
        if self.current is None:
            return
        self._prepare(index)
        with self._lock:
            self._ready[segment] = index
            self._layouts.pop(segment, None)

    def load_segments(self, conn: sqlite3.Connection, generation: int, numbers: list[int]) -> list[Segment]:
        """Segments ``numbers`` of ``generation`` with their deletions at it (``conn`` in a read transaction that
        sees it), for a merge: those this process's readers hold are reused, the others read from their files and
        kept by no one else, so a process that only writes holds just the segments it merges."""
        if not numbers:
            return []
        marks = ",".join("?" * len(numbers))
        rows = conn.execute(f"SELECT segment, kind FROM segments WHERE segment IN ({marks}) AND added <= ? AND "
                            "(retired IS NULL OR retired > ?) ORDER BY segment", [*numbers, generation, generation])
        with self._lock:
            pool = self._pool()
            ready = dict(self._ready)
        segments: list[Segment] = []
        for number, kind in rows.fetchall():
            known = pool.get(number)
            if known is not None:
                segment = Segment(number, known.index, kind, None, known.layout)
            else:
                index = ready.get(number)
                if index is None:
                    index = self._read(number)  # RuntimeError when gone: retired by another process meanwhile
                segment = Segment(number, index, kind, layout=self._ready_layout(number, index))
            deleted = tombstones_between(conn, 0, generation, segment.lo, segment.hi)
            segments.append(segment.with_tombstones(deleted) if deleted.size else segment)
        if len(segments) != len(numbers):
            raise RuntimeError(f"segments {numbers} are no longer all live at generation {generation}")
        return segments

    def _read(self, number: int) -> faiss.Index:
        index = faiss.read_index(str(self.path(number)))
        self.files_read += 1
        return index

    def is_current(self, generation: int) -> bool:
        current = self.current
        return (current is not None and current.generation == generation
                and not (current.waiting and any(s in self._ready for s in current.waiting)))

    def deferred(self, generation: int) -> SegmentSet | None:
        """The generation the hot path answers from while ``generation``'s new segments still load (no SQL), else
        None."""
        deferred, current = self._deferred, self.current
        if deferred is None or current is None or deferred[0] != generation:
            return None
        return current if any(n in self._loading for n in deferred[1]) else None

    def get(self, conn: sqlite3.Connection, generation: int, dim: int | None, background: bool = False) -> SegmentSet:
        """The segments of ``generation``; ``conn`` must be in a read transaction that sees it. ``background`` (the
        similarity hot path): when the files this reader lacks for it are big, the generation it has, while they
        load on helper threads."""
        if self.is_current(generation):
            return self.current  # type: ignore[return-value]
        with self._lock:
            current = self.current
            if self.is_current(generation):
                return current  # type: ignore[return-value]
            if (background and current is not None and dim is not None and current.dim == dim
                    and generation > current.generation and self._defer(conn, generation, current)):
                return current
            built = self._build(conn, generation, dim, current)
            if current is None or generation >= current.generation:
                if current is not None and current.generation != generation:
                    self._previous = current
                self.current = built
                self._forget_ready(built)
                if self._deferred is not None and self._deferred[0] <= generation:
                    self._deferred = None
                self._failed.clear()
            return built

    def _defer(self, conn: sqlite3.Connection, generation: int, current: SegmentSet) -> bool:
        """Start loading ``generation``'s segments this reader lacks on helper threads when their files add up to
        more than ``BACKGROUND_LOAD_BYTES``; whether it did (else the caller loads them inline)."""
        rows = live_segments(conn, generation)
        pool = self._pool()
        kept = {s.number: s for s in current.segments}
        live = {number for number, _, _ in rows}
        lacking = [number for number, kind, _ in rows if number not in pool and number not in self._ready
                   and (kind != "merge" or self._stand_ins(conn, number, kept, live, current) is None)]
        if not lacking or self._failed.intersection(lacking):
            return False
        size = 0
        for number in lacking:
            try:
                size += self.path(number).stat().st_size
            except OSError:  # retired and removed meanwhile: the inline build fails and its caller retries
                return False
        if size <= BACKGROUND_LOAD_BYTES:
            return False
        columns = self._filters(current)
        for number in lacking:
            self._load_later(number, columns)
        self._deferred = (generation, frozenset(lacking))
        log.debug("segments %s of %s (%s bytes) loading in the background for generation %s", lacking, self.folder,
                  size, generation)
        return True

    def clear(self) -> None:
        with self._lock:
            self.current = self._previous = None
            self._ready.clear()
            self._layouts.clear()
            self._deferred = None
            self._failed.clear()

    def _pool(self) -> dict[int, Segment]:
        pool: dict[int, Segment] = {}
        for known in (self._previous, self.current):
            if known is not None:
                pool.update((s.number, s) for s in known.segments)
        return pool

    def _build(self, conn: sqlite3.Connection, generation: int, dim: int | None,
               current: SegmentSet | None) -> SegmentSet:
        if dim is None:
            return SegmentSet(generation, None, [])
        rows = live_segments(conn, generation)
        base = current if current is not None and current.generation <= generation else None
        kept = {s.number: s for s in base.segments} if base is not None else {}
        fresh = tombstones_between(conn, base.generation, generation) if base is not None else None
        pool = self._pool()
        segments: list[Segment] = []
        waiting: set[int] = set()
        live = {number for number, _, _ in rows}
        for number, kind, count in rows:
            segment = kept.get(number)
            if segment is not None:
                segments.append(segment.with_tombstones(fresh) if fresh is not None and fresh.size else segment)
                continue
            stand_ins = self._stand_ins(conn, number, kept, live, base) if kind == "merge" else None
            if stand_ins is not None and number not in self._ready:
                # its columns are gathered from its inputs' at the swap when they all have theirs
                self._load_later(number, base is not None and self._filters(base)
                                 and not all(_has_columns(s) for s in stand_ins))
                waiting.add(number)
                segments.extend(s.with_tombstones(fresh) if fresh is not None and fresh.size else s
                                for s in stand_ins)
                continue
            known = pool.get(number)
            if known is not None:
                segment = Segment(number, known.index, kind, None, known.layout)
            else:
                index = self._ready.get(number)
                if index is None:
                    index = self._read(number)  # RuntimeError when gone: the caller retries
                    self._prepare(index)
                segment = Segment(number, index, kind, layout=self._ready_layout(number, index))
                if kind == "merge" and segment.layout.metadata is None:
                    self._inherit_columns(conn, segment, pool)
            deleted = tombstones_between(conn, 0, generation, segment.lo, segment.hi) if count else None
            segments.append(segment.with_tombstones(deleted) if deleted is not None and deleted.size else segment)
        return SegmentSet(generation, dim, segments, frozenset(waiting))

    def _stand_ins(self, conn: sqlite3.Connection, number: int, kept: dict[int, Segment], live: set[int],
                   base: SegmentSet | None) -> list[Segment] | None:
        """The loaded inputs of merge output ``number`` when this reader has all of them, else None. Only from a
        generation at or after the one the merge read: the merge commit drops the tombstones it applied, so a
        reader older than that could not learn of them."""
        source = conn.execute("SELECT source_gen FROM segments WHERE segment = ?", (number,)).fetchone()
        if base is None or source is None or source[0] is None or base.generation < source[0]:
            return None
        inputs = [r[0] for r in conn.execute("SELECT segment FROM segments WHERE merged_into = ?", (number,))]
        if not inputs or any(i not in kept or i in live for i in inputs):
            return None
        return [kept[i] for i in inputs]

    def _ready_layout(self, number: int, index: faiss.Index) -> FilteredSearch:
        """The layout a helper thread built for ``index`` (with its metadata columns, if it read them), else a new
        one."""
        layout = self._layouts.get(number)
        return layout if layout is not None and layout.index is index else self._layout(number, index)

    def _filters(self, segments: SegmentSet) -> bool:
        """Whether this reader filters: some segment of its generation has metadata columns (read by a filtered
        search, or gathered for a merge output from its inputs'). A reader that never filtered reads none."""
        return self.database is not None and any(_has_columns(s) for s in segments.segments)

    def _layout(self, number: int, index: faiss.Index) -> FilteredSearch:
        """A segment's layout; a compressed one's with its vector file open (named by the segment number, it
        belongs to the same commit as the index file)."""
        if not needs_vectors(index):
            return FilteredSearch(index)
        try:
            vectors = VectorFile(vectors_path(self.folder, number))
        except OSError as exc:  # retired and removed meanwhile: the caller retries, like a missing index file
            raise RuntimeError(f"segment {number}'s vector file is gone: {exc}") from exc
        rerank = int((self.search_settings or {}).get("rerank", 1))
        return FilteredSearch(index, vectors, rerank)

    @staticmethod
    def _inherit_columns(conn: sqlite3.Connection, output: Segment, pool: dict[int, Segment]) -> None:
        """A new merge output's metadata columns will be gathered from its inputs' when this reader read them all
        (``stores.faiss.segment_columns``): only their columns are kept, not their indexes."""
        inputs = [pool.get(r[0]) for r in conn.execute("SELECT segment FROM segments WHERE merged_into = ?",
                                                       (output.number,))]
        kept = [s.layout.metadata for s in inputs if s is not None]
        if inputs and len(kept) == len(inputs) and all(m is not None for m in kept):
            output.layout.merged_from = kept  # type: ignore[assignment]

    def _prepare(self, index: faiss.Index) -> None:
        if self.search_settings is not None:
            tune(index, self.search_settings)
        elif self.ef_search is not None:
            faiss.downcast_index(index.index).hnsw.efSearch = self.ef_search
        if index.ntotal * index.d >= _HUGE_PAGES_FLOATS:
            self._on_load(index)

    def _load_later(self, number: int, columns: bool = False) -> None:
        """Load segment ``number`` into the ready pool on a helper thread (the caller holds ``_lock``); with its
        metadata columns when ``columns``, so the hot path switches with them (it waits for the whole load)."""
        if number in self._loading:
            return

        def load() -> None:
            try:
                index = self._read(number)
                self._prepare(index)
                layout = self._layout(number, index)
                if columns:
                    self._read_columns(number, layout)
                with self._lock:
                    current = self.current
                    # not when an inline load (a snapshot read) got there first, nor after clear(): it would never
                    # be taken
                    if current is not None and all(s.number != number for s in current.segments):
                        self._ready[number] = index
                        self._layouts[number] = layout
            except Exception as exc:  # noqa: BLE001 - retired meanwhile, or unreadable: loaded inline if needed
                log.info("segment %s of %s not preloaded: %s", number, self.folder, exc)
                self._failed.add(number)
            finally:
                self._loading.pop(number, None)

        thread = threading.Thread(target=load, name="kb-segment-load", daemon=True)
        self._loading[number] = thread
        thread.start()

    def _read_columns(self, number: int, layout: FilteredSearch) -> None:
        """Read segment ``number``'s metadata columns into ``layout`` in a read transaction of this thread's own.
        They hold for every generation from the one read on (``stores.faiss.segment_columns``), which is at or
        before any the reader switches to with them: it switches at a search after this. A failure leaves them
        to the first filtered search, inline."""
        assert self.database is not None
        try:
            conn = connect_durable(self.database)
            try:
                conn.execute("BEGIN")
                generation, _ = read_meta(conn)
                columns = read_segment_columns(conn, Segment(number, layout.index, layout=layout))
            finally:
                conn.close()  # ends the read transaction
        except Exception as exc:  # noqa: BLE001 - any failure: the next filtered search reads them as before
            log.warning("metadata columns of segment %s of %s not preloaded (the next filtered search reads them): "
                        "%s", number, self.folder, exc)
            return
        layout.metadata = (generation, columns)
        with self._lock:
            self.metadata_rows_preread += layout.ntotal

    def _forget_ready(self, built: SegmentSet) -> None:
        """Preloaded segments now held by the current generation leave the waiting room, and so do those it no
        longer holds: numbers only grow, so one below a live segment's that is not live was retired (a commit's
        segment offered, then merged away before any search took it)."""
        held = {s.number for s in built.segments} | built.waiting
        newest = max(held, default=0)
        for number in list(self._ready):
            if (number in held and number not in built.waiting) or (number < newest and number not in held):
                del self._ready[number]
                self._layouts.pop(number, None)

    def forget(self, numbers: list[int]) -> None:
        """Segments retired by this process's merge: offered or preloaded ones not kept for a search to come."""
        with self._lock:
            for number in numbers:
                self._ready.pop(number, None)
                self._layouts.pop(number, None)

    def withdraw(self, segment: int) -> None:
        """A merge output offered but not committed (the merge failed): not kept in memory."""
        with self._lock:
            self._ready.pop(segment, None)
            self._layouts.pop(segment, None)


def _has_columns(segment: Segment) -> bool:
    return segment.layout.metadata is not None or segment.layout.merged_from is not None

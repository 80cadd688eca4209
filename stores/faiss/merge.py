"""Merging a FAISS store's segments: a tiered policy (in the manner of Lucene's) and the merger that applies it.

Each commit adds a segment, so without merging a knowledge bank written a document at a time would be
thousands of tiny indexes. The policy groups live segments into tiers by size (tier 0 below ``FLOOR`` live
vectors, tier t from ``FLOOR * FACTOR**(t-1)`` to ``FLOOR * FACTOR**t``) and, once a tier holds ``PER_TIER``
segments, merges its ``FACTOR`` smallest into one. So a generation has at most about ``PER_TIER`` segments per
tier (a few dozen at a million vectors), and each vector is rewritten about once per tier it climbs (write
amplification ~log10 of the knowledge bank's size over ``FLOOR``). Tiers are narrow on purpose: a first version
with one tier for everything below 10,000 vectors rewrote a growing segment of up to 10,000 vectors every few
one-document commits (7 MB written per commit over 1,000 commits at 200k chunks). A segment with more
than ``DELETED_SHARE`` of its rows deleted is rewritten alone, and one with none left is retired without a file.

A merge is a commit like any other. It reads its inputs from the generation G0 it starts at (no lock: committed
segments are immutable), writes their live vectors as one segment in a staging folder (fault point
``merge_segment_written``), and only then takes the writer lock for its commit (fault points
``merge_before_commit``, ``merge_after_commit`` around it): the inputs retire, the output is
added (``source_gen = G0``), the tombstones it applied (rows deleted up to G0) are dropped. Rows deleted by
commits after G0 keep their tombstones, which apply to the output as they did to the inputs (tombstones are by
rowid). If a commit in between retired an input (``clear``), the merge is abandoned.

The policy chooses from SQLite alone (``stores.faiss.segment_spans``: each segment's size from the ``segments``
table, its deletions counted by an indexed lookup of the tombstones), and a merge loads only the segments it
merges: a process that only writes (an ingestion, a folder sync) never holds the knowledge bank's other vectors.
Inputs a reader of this process already holds are reused.

The merger is one long-lived thread per store in the writing process, started at the first commit that changed
something and woken after each one: the commit only signals, it neither chooses nor loads. ``close()`` stops a
merge under way (at its next slice; it leaves nothing behind) and ends the thread, waiting ``CLOSE_WAIT`` at
most; the thread is a daemon, so a writer that dies never hangs at exit, and it holds its store only weakly while
it waits, so a store dropped without ``close()`` is collected and its thread ends. It is kept light so searches
keep their latency while it runs: one OpenMP thread, vectors added in slices, and after each slice a pause as
long as the slice took (at most half a core), and between two merges a pause as long as the last one took. Not a
lower OS priority: at nice 10 on a machine busy with other work the merger starved (the same 10 x 1,000 flat
merge took 280 s at nice 10 and 4.5 s at nice 0, at 1M chunks under a load average of 20; an HNSW one had used
10 s of CPU in 16 minutes), small segments piled up, and no search gain was measurable.
``KB_FAISS_MERGE=0`` turns background merging off (``merge_now`` still merges).
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

import faiss
import numpy as np

from kb_base.errors import WriterBusyError
from stores.base import acquire_writer_lock, fault_point
from stores.faiss.compressed import is_compressed, vectors_path
from stores.faiss.compressed_segments import build_merged
from stores.faiss.generation_loader import live_segments
from stores.faiss.index import configure_search_threads
from stores.faiss.index_file import write_durably
from stores.faiss.merge_thread import Signals, merger_thread
from stores.faiss.segment_files import claim_merge_folder, next_segment, release_merge_folder, remove_stale
from stores.faiss.segment_spans import clear_spans, retire_into, rewrite_spans, segment_stats, spans_of
from stores.faiss.segments import Segment
from stores.sqlite.background_io import fsync_path
from stores.sqlite.meta import connect_durable, read_meta

if TYPE_CHECKING:
    from stores.faiss.store import FaissStore

log = logging.getLogger(__name__)

FLOOR = 100
FACTOR = 10
PER_TIER = 10
MAX_MERGED = 2_000_000  # live vectors: bigger segments are only rewritten to drop deletions
DELETED_SHARE = 0.3
SLICE = 5_000  # vectors added between pauses
DUTY = 0.5  # of one core, at most, while adding
ENABLED = os.environ.get("KB_FAISS_MERGE", "1") not in ("0", "off", "false")
CLOSE_WAIT = 10.0  # seconds close() waits for the thread (a merge stops at its next slice of SLICE vectors)


class Sized(Protocol):
    """What the policy reads of a segment: a loaded ``Segment`` or a ``SegmentStats`` row."""

    @property
    def number(self) -> int: ...
    @property
    def size(self) -> int: ...
    @property
    def live(self) -> int: ...


def choose_merge(segments: Sequence[Sized]) -> list[Sized] | None:
    """The segments to merge next, or None."""
    empty = [s for s in segments if s.live == 0]
    if empty:
        return empty
    for segment in segments:
        if segment.size >= FLOOR and segment.size - segment.live > DELETED_SHARE * segment.size:
            return [segment]
    tiers: dict[int, list[Sized]] = {}
    for segment in segments:
        if segment.live < MAX_MERGED:
            tier = 0 if segment.live < FLOOR else 1 + int(math.log(segment.live / FLOOR, FACTOR) + 1e-9)
            tiers.setdefault(tier, []).append(segment)
    for tier in sorted(tiers):
        if len(tiers[tier]) >= PER_TIER:
            return sorted(tiers[tier], key=lambda s: (s.live, s.number))[:FACTOR]
    return None


def force_merge_choice(segments: Sequence[Sized]) -> list[Sized] | None:
    """Every segment into one (a tool's request: one index for the whole generation)."""
    if len(segments) > 1 or (segments and segments[0].live < segments[0].size):
        return list(segments)
    return None


class Merger:
    """Merges of one store's segments: on its background thread after commits, or on request."""

    def __init__(self, store: FaissStore) -> None:
        self.store = store
        self._lock = threading.Lock()  # the thread's start and close()
        self._signals = Signals()
        self._thread: threading.Thread | None = None
        self._run_lock = threading.Lock()  # one merge at a time in this process
        self.merges = 0  # committed by this process (tests and benchmarks read it)
        self.threads_started = 0

    @property
    def running(self) -> bool:
        """Whether the merger's thread has work: choosing, merging, or a commit to look at."""
        signals, thread = self._signals, self._thread
        return thread is not None and thread.is_alive() and (signals.busy or signals.pending)

    def after_commit(self) -> None:
        """A commit changed the store: wake the merger's thread (started at the first such commit). Nothing else
        happens on the committing thread."""
        if not ENABLED:
            return
        with self._lock:
            signals = self._signals
            thread = self._thread
            if thread is None or not thread.is_alive():
                thread = self._thread = threading.Thread(target=merger_thread, args=(weakref.ref(self), signals),
                                                         name="kb-segment-merge", daemon=True)
                self.threads_started += 1
                thread.start()
            with signals.cond:
                signals.pending = True
                signals.cond.notify()

    def merge_until_done(self, stop: threading.Event) -> None:
        configure_search_threads()  # one OpenMP thread for the adds too
        try:
            while not stop.is_set():
                began = time.perf_counter()
                if not self.merge_once(choose_merge, throttle=True, stop=stop):
                    break
                # a pause as long as the merge (its file write and commit included) before the next one
                stop.wait(time.perf_counter() - began)
        except Exception:  # noqa: BLE001 - a failed merge loses nothing: logged, the next commit tries again
            log.exception("knowledge bank %s: background segment merge failed", self.store.context.kb_id)

    def merge_now(self, force: bool = False) -> int:
        """Merge on this thread until the policy is satisfied (``force``: into one segment); how many merges."""
        stop = self._signals.stop
        done = 0
        while self.merge_once(force_merge_choice if force else choose_merge, throttle=False, stop=stop):
            done += 1
        return done

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the merger's thread has nothing to do (every commit so far looked at, its merges done);
        False when ``timeout`` passed first."""
        signals, thread = self._signals, self._thread
        if thread is None:
            return True
        with signals.cond:
            return signals.cond.wait_for(lambda: not thread.is_alive() or not (signals.busy or signals.pending),
                                         timeout)

    def close(self) -> None:
        """Stop a running merge (it leaves nothing behind) and end the thread, waiting ``CLOSE_WAIT`` at most;
        later commits start a new one."""
        with self._lock:
            signals, thread = self._signals, self._thread
            self._signals, self._thread = Signals(), None
        with signals.cond:
            signals.stop.set()
            signals.cond.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join(CLOSE_WAIT)
            if thread.is_alive():  # inside one slice's add or a file write: it ends after it, committing nothing
                log.warning("knowledge bank %s: the segment merger did not stop within %s s", self.store.context.kb_id,
                            CLOSE_WAIT)

    def merge_once(self, choose: Callable[[Sequence[Sized]], Sequence[Sized] | None], throttle: bool,
                   stop: threading.Event | None = None) -> bool:
        with self._run_lock:
            return self._merge_once(choose, throttle, stop if stop is not None else self._signals.stop)

    def _merge_once(self, choose: Callable[[Sequence[Sized]], Sequence[Sized] | None], throttle: bool,
                    stop: threading.Event) -> bool:
        store = self.store
        conn = connect_durable(store.db_path)
        spans = None
        try:
            conn.execute("BEGIN")
            source_gen, dim = read_meta(conn)
            if dim is None:
                return False
            stats = segment_stats(conn, source_gen)
            try:
                if stats is not None:
                    chosen = choose(stats)
                    if not chosen:
                        return False
                    inputs = store.loader.load_segments(conn, source_gen, [s.number for s in chosen])
                else:  # spans missing (a knowledge bank written before them): every segment loaded, this once
                    every = store.loader.load_segments(conn, source_gen, [r[0] for r in live_segments(conn,
                                                                                                       source_gen)])
                    spans = spans_of([(s.number, s.layout.rowids) for s in every])
                    inputs = list(choose(every) or ())  # type: ignore[arg-type]
                    del every
            except RuntimeError as exc:  # a segment file retired and removed by another process meanwhile
                log.info("knowledge bank %s: no merge this time: %s", store.context.kb_id, exc)
                return False
        finally:
            # a read-only snapshot: ROLLBACK ends it even with a statement still open (COMMIT was refused one after
            # a failed load in CI: "cannot commit transaction - SQL statements in progress")
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            conn.close()
        if spans is not None:
            self._write_spans(spans, source_gen, stop)
        if not inputs:
            return False
        staging, claim = claim_merge_folder(store.dir / "staging")
        try:
            staged_vectors = None
            if is_compressed(store.settings):  # retrained per output (stores.faiss.compressed_segments)
                output, staged_vectors = build_merged(store.settings, inputs, dim, staging,
                                                      self._pacer(throttle, stop))
            else:
                output = self._build(inputs, dim, throttle, stop)
            staged = None
            if output is not None:
                staging.mkdir(parents=True, exist_ok=True)
                staged = staging / "merged.faiss"
                write_durably(output, staged)
                fault_point("merge_segment_written")
            if stop.is_set():
                return False
            return self._commit(inputs, output, staged, source_gen, staged_vectors, stop)
        finally:
            release_merge_folder(staging, claim)

    def _writer_lock(self, stop: threading.Event) -> object | None:
        """The writer lock, taken between the writers' commits; None when stopped or after ten minutes."""
        store = self.store
        deadline = time.monotonic() + 600
        while True:
            try:
                return acquire_writer_lock(store.dir / "writer.lock", 1.0, store.context.kb_id)
            except WriterBusyError:
                if stop.is_set() or time.monotonic() > deadline:
                    return None

    def _write_spans(self, spans: list[tuple[int, int, int]], source_gen: int, stop: threading.Event) -> None:
        """Every span rebuilt from the segments of ``source_gen`` (no new generation: the contents are the same),
        unless a commit came first (the next choice rebuilds them then)."""
        lock = self._writer_lock(stop)
        if lock is None:
            return
        conn = None
        try:
            conn = connect_durable(self.store.db_path)
            conn.execute("BEGIN IMMEDIATE")
            if read_meta(conn)[0] == source_gen:
                rewrite_spans(conn, spans)
                conn.execute("COMMIT")
                log.info("knowledge bank %s: segment spans written (%s spans)", self.store.context.kb_id, len(spans))
        finally:
            if conn is not None:
                conn.close()  # rolls back what did not commit
            lock.close()  # type: ignore[attr-defined]

    def _pacer(self, throttle: bool, stop: threading.Event) -> Callable[[float], bool]:
        """Between two slices of a compressed merge: the throttle's pause; False once the merger is stopped."""
        def between(seconds: float) -> bool:
            if throttle:
                time.sleep(seconds * (1 - DUTY) / DUTY)
            return not stop.is_set()

        return between

    def _build(self, inputs: Sequence[Segment], dim: int, throttle: bool, stop: threading.Event) -> faiss.Index | None:
        """One index of the inputs' live vectors. The largest input is the base when it has no deletions (a copy,
        then the others' vectors added), so a merge costs what it adds, not what it carries."""
        if not any(s.live for s in inputs):
            return None
        ordered = sorted(inputs, key=lambda s: -s.live)
        base = ordered[0]
        if base.dead is None:
            merged = faiss.clone_index(base.index)
            rest = ordered[1:]
        else:
            merged = self.store.new_index(dim)
            rest = ordered
        for segment in rest:
            positions = np.flatnonzero(~segment.dead) if segment.dead is not None else np.arange(segment.size)
            flat = segment.layout.flat  # an HNSW graph's vectors are in its flat storage too
            stored = faiss.rev_swig_ptr(flat.get_xb(), segment.size * dim).reshape(segment.size, dim)  # no copy
            for start in range(0, positions.size, SLICE):
                if stop.is_set():
                    return None
                part = positions[start : start + SLICE]
                began = time.perf_counter()
                merged.add_with_ids(np.ascontiguousarray(stored[part]), segment.layout.rowids[part])
                if throttle:
                    time.sleep((time.perf_counter() - began) * (1 - DUTY) / DUTY)
        return merged

    def _commit(self, inputs: Sequence[Segment], output: faiss.Index | None, staged: os.PathLike | None,
                source_gen: int, staged_vectors: os.PathLike | None, stop: threading.Event) -> bool:
        store = self.store
        numbers = [s.number for s in inputs]
        lock = self._writer_lock(stop)
        if lock is None:
            return False
        conn = None
        number = None
        try:
            conn = connect_durable(store.db_path)
            conn.execute("PRAGMA wal_autocheckpoint=0")
            conn.execute("BEGIN IMMEDIATE")
            generation, dim = read_meta(conn)
            marks = ",".join("?" * len(numbers))
            still = conn.execute(f"SELECT COUNT(*) FROM segments WHERE segment IN ({marks}) AND retired IS NULL",
                                 numbers).fetchone()[0]
            if still != len(numbers) or dim is None:
                return False  # a clear() retired them meanwhile
            remove_stale(conn, store.dir, generation)
            new_generation = generation + 1
            if output is not None and staged is not None:
                number = next_segment(conn)
                store.loader.offer(number, output)
                final = store.loader.path(number)
                if staged_vectors is not None:  # a compressed output's vectors, in place before its index
                    os.replace(staged_vectors, vectors_path(final.parent, number))
                os.replace(staged, final)
                fsync_path(final.parent)
                rowids = faiss.vector_to_array(output.id_map)
                conn.execute("INSERT INTO segments(segment, added, retired, rowid_lo, rowid_hi, count, kind, "
                             "merged_into, source_gen) VALUES (?, ?, NULL, ?, ?, ?, 'merge', NULL, ?)",
                             (number, new_generation, int(rowids.min()), int(rowids.max()), int(output.ntotal),
                              source_gen))
                conn.execute("INSERT OR REPLACE INTO meta VALUES ('next_segment', ?)", (str(number + 1),))
            conn.execute(f"UPDATE segments SET retired = ?, merged_into = ? WHERE segment IN ({marks})",
                         [new_generation, number, *numbers])
            spanned = conn.execute(f"SELECT COUNT(DISTINCT segment) FROM segment_spans WHERE segment IN ({marks})",
                                   numbers).fetchone()[0]
            if spanned == len(numbers):
                retire_into(conn, numbers, number)
            else:  # an input without spans: none are trusted until the next choice rebuilds them all
                clear_spans(conn)
            applied = [int(r) for s in inputs if s.dead is not None for r in s.layout.rowids[s.dead]]
            conn.executemany("DELETE FROM tombstones WHERE rowid = ? AND gen <= ?",
                             [(r, source_gen) for r in applied])
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('generation', ?)", (str(new_generation),))
            fault_point("merge_before_commit")
            conn.execute("COMMIT")
            fault_point("merge_after_commit")
            self.merges += 1
            store.loader.forget(numbers)  # retired: an input offered by a commit here is not kept for a search
            log.info("knowledge bank %s: merged segments %s into %s (%s vectors) at generation %s",
                     store.context.kb_id, numbers, number, 0 if output is None else output.ntotal, new_generation)
            store.checkpoints.after_commit()
            return True
        finally:
            if conn is not None:
                if conn.in_transaction and number is not None:
                    store.loader.withdraw(number)
                conn.close()  # rolls back what did not commit
            lock.close()  # type: ignore[attr-defined]



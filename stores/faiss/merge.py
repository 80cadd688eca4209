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

The merger is one thread of the writing process, started after a commit when the policy finds work. It is
kept light so searches keep their latency while it runs: one OpenMP thread, vectors added in slices, and after
each slice a pause as long as the slice took (at most half a core), and between two merges a pause as long as
the last one took. Not a lower OS priority: at nice 10 on a machine busy with other work the merger starved (the
same 10 x 1,000 flat merge took 280 s at nice 10 and 4.5 s at nice 0, at 1M chunks under a load average of 20;
an HNSW one had used 10 s of CPU in 16 minutes), small segments piled up, and no search gain was measurable.
``KB_FAISS_MERGE=0`` turns background merging off (``merge_now`` still merges).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import faiss
import numpy as np

from kb_base.errors import WriterBusyError
from stores.base import acquire_writer_lock, fault_point
from stores.faiss.compressed import is_compressed, vectors_path
from stores.faiss.compressed_segments import build_merged
from stores.faiss.index import configure_search_threads
from stores.faiss.index_file import write_durably
from stores.faiss.segment_files import next_segment, remove_stale
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


def choose_merge(segments: Sequence[Segment]) -> list[Segment] | None:
    """The segments to merge next, or None."""
    empty = [s for s in segments if s.live == 0]
    if empty:
        return empty
    for segment in segments:
        if segment.size >= FLOOR and segment.size - segment.live > DELETED_SHARE * segment.size:
            return [segment]
    tiers: dict[int, list[Segment]] = {}
    for segment in segments:
        if segment.live < MAX_MERGED:
            tier = 0 if segment.live < FLOOR else 1 + int(math.log(segment.live / FLOOR, FACTOR) + 1e-9)
            tiers.setdefault(tier, []).append(segment)
    for tier in sorted(tiers):
        if len(tiers[tier]) >= PER_TIER:
            return sorted(tiers[tier], key=lambda s: (s.live, s.number))[:FACTOR]
    return None


def force_merge_choice(segments: Sequence[Segment]) -> list[Segment] | None:
    """Every segment into one (a tool's request: one index for the whole generation)."""
    if len(segments) > 1 or (segments and segments[0].dead is not None):
        return list(segments)
    return None


class Merger:
    """Merges of one store's segments, in the background after commits or on request."""

    def __init__(self, store: FaissStore) -> None:
        self.store = store
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._run_lock = threading.Lock()  # one merge at a time in this process
        self.merges = 0  # committed by this process (tests and benchmarks read it)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def after_commit(self, generation: int) -> None:
        """Start the background merger if the committed ``generation`` may have work for it (a reader that has it
        loaded already knows; otherwise the merger's thread finds out)."""
        if not ENABLED or self._stop.is_set() or self.running:
            return
        loaded = self.store.loader.current
        if loaded is not None and loaded.generation == generation and choose_merge(loaded.segments) is None:
            return
        self._thread = threading.Thread(target=self._background, name="kb-segment-merge", daemon=True)
        self._thread.start()

    def _background(self) -> None:
        configure_search_threads()  # one OpenMP thread for the adds too
        try:
            while not self._stop.is_set():
                began = time.perf_counter()
                if not self.merge_once(choose_merge, throttle=True):
                    break
                # a pause as long as the merge (its file write and commit included) before the next one
                self._stop.wait(time.perf_counter() - began)
        except Exception:  # noqa: BLE001 - a failed merge loses nothing: logged, the next commit tries again
            log.exception("knowledge bank %s: background segment merge failed", self.store.context.kb_id)

    def merge_now(self, force: bool = False) -> int:
        """Merge on this thread until the policy is satisfied (``force``: into one segment); how many merges."""
        done = 0
        while self.merge_once(force_merge_choice if force else choose_merge, throttle=False):
            done += 1
        return done

    def wait(self) -> None:
        thread = self._thread
        if thread is not None:
            thread.join()

    def close(self) -> None:
        """Stop a running merge (it leaves nothing behind) and wait for it; later commits may start merges again."""
        self._stop.set()
        self.wait()
        self._stop.clear()

    def merge_once(self, choose: object, throttle: bool) -> bool:
        with self._run_lock:
            return self._merge_once(choose, throttle)

    def _merge_once(self, choose: object, throttle: bool) -> bool:
        store = self.store
        conn = connect_durable(store.db_path)
        try:
            conn.execute("BEGIN")
            source_gen, dim = read_meta(conn)
            current = store.segments_at(conn, source_gen, dim)
            # a read-only snapshot: ROLLBACK ends it even with a statement still open (COMMIT refused one after a
            # failed load in CI: "cannot commit transaction - SQL statements in progress")
            conn.execute("ROLLBACK")
        finally:
            conn.close()
        if current.waiting or dim is None:
            return False
        inputs = choose(current.segments)  # type: ignore[operator]
        if not inputs:
            return False
        staging = store.dir / "staging" / f"merge-{uuid.uuid4().hex}"
        try:
            staged_vectors = None
            if is_compressed(store.settings):  # retrained per output (stores.faiss.compressed_segments)
                output, staged_vectors = build_merged(store.settings, inputs, dim, staging, self._pacer(throttle))
            else:
                output = self._build(inputs, dim, throttle)
            staged = None
            if output is not None:
                staging.mkdir(parents=True, exist_ok=True)
                staged = staging / "merged.faiss"
                write_durably(output, staged)
                fault_point("merge_segment_written")
            if self._stop.is_set():
                return False
            return self._commit(inputs, output, staged, source_gen, staged_vectors)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _pacer(self, throttle: bool) -> Callable[[float], bool]:
        """Between two slices of a compressed merge: the throttle's pause; False once the merger is stopped."""
        def between(seconds: float) -> bool:
            if throttle:
                time.sleep(seconds * (1 - DUTY) / DUTY)
            return not self._stop.is_set()

        return between

    def _build(self, inputs: Sequence[Segment], dim: int, throttle: bool) -> faiss.Index | None:
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
                if self._stop.is_set():
                    return None
                part = positions[start : start + SLICE]
                began = time.perf_counter()
                merged.add_with_ids(np.ascontiguousarray(stored[part]), segment.layout.rowids[part])
                if throttle:
                    time.sleep((time.perf_counter() - began) * (1 - DUTY) / DUTY)
        return merged

    def _commit(self, inputs: Sequence[Segment], output: faiss.Index | None, staged: os.PathLike | None,
                source_gen: int, staged_vectors: os.PathLike | None = None) -> bool:
        store = self.store
        numbers = [s.number for s in inputs]
        deadline = time.monotonic() + 600
        while True:
            try:
                lock = acquire_writer_lock(store.dir / "writer.lock", 1.0, store.context.kb_id)
                break
            except WriterBusyError:
                if self._stop.is_set() or time.monotonic() > deadline:
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
            applied = [int(r) for s in inputs if s.dead is not None for r in s.layout.rowids[s.dead]]
            conn.executemany("DELETE FROM tombstones WHERE rowid = ? AND gen <= ?",
                             [(r, source_gen) for r in applied])
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('generation', ?)", (str(new_generation),))
            fault_point("merge_before_commit")
            conn.execute("COMMIT")
            fault_point("merge_after_commit")
            self.merges += 1
            log.info("knowledge bank %s: merged segments %s into %s (%s vectors) at generation %s",
                     store.context.kb_id, numbers, number, 0 if output is None else output.ntotal, new_generation)
            store.checkpoints.after_commit()
            return True
        finally:
            if conn is not None:
                if conn.in_transaction and number is not None:
                    store.loader.withdraw(number)
                conn.close()  # rolls back what did not commit
            lock.close()


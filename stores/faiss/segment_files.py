"""A FAISS store's segment files: written durably, the old single-index layout adopted, stale files removed.

``segments/<n>.faiss`` is segment n, in FAISS's own format (``faiss.write_index``; never pickle). Numbers come
from ``meta.next_segment`` and are never reused, so a number names one file's contents forever and a reader
can keep a loaded segment across generations by its number.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import sqlite3
import uuid
from pathlib import Path
from typing import IO

import faiss

from stores.base import fault_point
from stores.faiss.index_file import write_durably
from stores.faiss.segment_spans import add_span, clear_spans
from stores.sqlite.background_io import fsync_path

log = logging.getLogger(__name__)

SEGMENTS = "segments"


def next_segment(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT value FROM meta WHERE key = 'next_segment'").fetchone()
    return int(row[0]) if row else 1


def write_segment(index: faiss.Index, staging: Path, folder: Path, number: int, written_point: str) -> Path:
    """Stage ``index``, fsync it, rename it to ``folder/<number>.faiss``, fsync the folder. A crash before the
    commit that names it leaves an orphan file, which the next writer removes."""
    staging.mkdir(parents=True, exist_ok=True)
    staged = staging / f"{number}.faiss"
    write_durably(index, staged)
    fault_point(written_point)
    final = folder / f"{number}.faiss"
    os.replace(staged, final)
    fault_point("index_renamed")
    fsync_path(folder)
    return final


def adopt_single_index(conn: sqlite3.Connection, store_dir: Path, generation: int, kind: str) -> None:
    """A knowledge bank written before segments (one ``index-<C>.faiss``) gets that file as segment 1, without
    rewriting it: a hard link under its new name, then the segment row in the caller's transaction (a crash in
    between leaves the link, which the next open replaces). The old name is removed by the next writer."""
    old = store_dir / f"index-{generation}.faiss"
    if not old.exists():
        log.error("FAISS store %s: generation %s has no index file %s; searches will find nothing until the next "
                  "commit (run kb doctor)", store_dir, generation, old.name)
        return
    folder = store_dir / SEGMENTS
    folder.mkdir(exist_ok=True)
    linked = folder / "1.faiss.adopting"
    linked.unlink(missing_ok=True)
    os.link(old, linked)
    os.replace(linked, folder / "1.faiss")
    fsync_path(folder)
    lo, hi, count = conn.execute("SELECT MIN(rowid), MAX(rowid), COUNT(*) FROM records").fetchone()
    conn.execute("INSERT INTO segments(segment, added, retired, rowid_lo, rowid_hi, count, kind) "
                 "VALUES (1, ?, NULL, ?, ?, ?, ?)", (generation, lo or 0, hi or 0, count, kind))
    clear_spans(conn)  # the only segment: nothing else can have spans
    add_span(conn, 1, lo or 0, hi or 0)
    conn.execute("INSERT OR REPLACE INTO meta VALUES ('next_segment', '2')")
    log.info("FAISS store %s: index-%s.faiss adopted as segment 1 (no rewrite)", store_dir, generation)


MERGE_PREFIX = "merge-"


def claim_merge_folder(staging: Path) -> tuple[Path, IO[bytes]]:
    """A new folder for one merge's staged files, and the claim on it: ``<folder>.lock``, flock'ed before the
    folder exists, so a writer's ``remove_stale`` leaves the folder of a live merger (in this process or
    another) and removes a killed one's (the kernel drops its flock). Release with ``release_merge_folder``."""
    staging.mkdir(parents=True, exist_ok=True)
    while True:
        folder = staging / f"{MERGE_PREFIX}{uuid.uuid4().hex}"
        claim = open(folder.with_name(folder.name + ".lock"), "wb")  # noqa: SIM115 - held until the merge ends
        fcntl.flock(claim, fcntl.LOCK_EX)
        if os.fstat(claim.fileno()).st_nlink:
            return folder, claim
        claim.close()  # a writer took it for a dead merger's between our open and flock, and unlinked it


def release_merge_folder(folder: Path, claim: IO[bytes]) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    Path(claim.name).unlink(missing_ok=True)
    claim.close()


def _remove_unclaimed_merge_folder(folder: Path) -> None:
    """A merge folder whose claim no live process holds (its merger was killed), or that has no claim (left by a
    version that kept none): removed with its claim file."""
    lock = folder.with_name(folder.name + ".lock")
    try:
        claim = open(lock, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        shutil.rmtree(folder, ignore_errors=True)
        return
    with claim:
        try:
            fcntl.flock(claim, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return  # a live merger's
        log.info("removing %s: its merger is gone", folder)
        shutil.rmtree(folder, ignore_errors=True)
        lock.unlink(missing_ok=True)


def remove_stale(conn: sqlite3.Connection, store_dir: Path, generation: int) -> None:
    """Under the writer lock: remove files no reader can need. Segments retired before the committed generation
    (kept one generation, for a reader that raced the commit), orphans of crashed commits (numbers not yet
    committed), dead writers' staging folders, and the single-index files of the layout before segments. Their
    rows go with the next commit."""
    folder = store_dir / SEGMENTS
    for path in store_dir.glob("index-*.faiss"):
        path.unlink(missing_ok=True)
    staging = store_dir / "staging"
    if staging.is_dir():
        # a writer's staging folder (a compressed type's spilled vectors: up to 1.5 GB a million) whose writer
        # died; the caller holds the writer lock, so no live writer owns one. A merger's is removed only when no
        # live merger holds its claim (``claim_merge_folder``).
        for path in list(staging.iterdir()):
            if not path.name.startswith(MERGE_PREFIX):
                shutil.rmtree(path, ignore_errors=True)
            elif not path.name.endswith(".lock"):
                _remove_unclaimed_merge_folder(path)
            elif not path.with_name(path.name[: -len(".lock")]).exists():  # killed before its folder was made
                _remove_unclaimed_merge_folder(path.with_name(path.name[: -len(".lock")]))
    if not folder.is_dir():
        return
    committed = next_segment(conn)
    stale = {r[0] for r in conn.execute("SELECT segment FROM segments WHERE retired IS NOT NULL AND retired < ?",
                                        (generation,))}
    for path in folder.iterdir():
        number = path.name.split(".", 1)[0]
        if not number.isdigit():
            path.unlink(missing_ok=True)
            continue
        if int(number) >= committed or int(number) in stale:
            path.unlink(missing_ok=True)
    if stale:
        conn.executemany("DELETE FROM segments WHERE segment = ?", [(s,) for s in stale])

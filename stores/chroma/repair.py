"""Damaged Chroma indexes: found on open, rebuilt from kb's own copy of the records.

Chroma (1.5) writes a collection's HNSW files (``index_metadata.pickle``, ``data_level0.bin``, ...) in place,
every ``hnsw:sync_threshold`` records, without a rename or an fsync; a process killed while it writes them
leaves a torn file. Measured with chromadb 1.5.9: a torn ``index_metadata.pickle`` or an empty ``header.bin``
makes every read fail ("Error constructing hnsw segment reader"); an empty ``data_level0.bin`` loads and
answers searches with wrong neighbours. Chroma's own SQLite does not hold the vectors any more (it purges its
log once the HNSW files hold them), so it cannot rebuild the segment.

kb keeps a copy of every record (text and normalised vector, next to its metadata copy) in its commit point,
committed with the record. So:

- On open (embedded), when the HNSW files changed since kb last found them sound (size and mtime of every
  file: ``hnsw_files`` in the meta table), kb reopens its Chroma client from disk and ``probe``s the live
  collection: Chroma must return kb's copy of a sample of the committed records (the latest written, whose
  vectors sit at the end of the files, and random ones) and find them by their own vector.
- A damaged collection is rebuilt (``rebuild_locked``) under the writer lock: a fresh collection filled
  from the copy, switched to by a commit of its own (the generation moves on, so every process reloads);
  the damaged one is dropped by a later commit. Readers meanwhile wait for the lock, or get a retryable
  ``StoreRecoveringError``; a crash mid-rebuild leaves the next writer a pending collection to delete.
- ``kb doctor`` / ``kb repair`` do the same on demand, also against a Chroma server.
"""

from __future__ import annotations

import json
import logging
import random
import sqlite3
import struct
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from kb_base.errors import StoreError
from stores.chroma.client import DamagedIndexError
from stores.chroma.codec import DEL, GEN, ID, NEVER, encode
from stores.chroma.reader import BATCH, Snap, meta_value, read_snap, set_meta
from stores.generations import flip_generation, open_writer

if TYPE_CHECKING:
    from stores.chroma.store import ChromaStore

log = logging.getLogger(__name__)
FINGERPRINT = "hnsw_files"


def fingerprint(chroma_dir: Path) -> str:
    """Size and mtime of every file of every Chroma segment directory: changes whenever Chroma writes one."""
    files = []
    for path in sorted(chroma_dir.glob("*/*")):
        try:
            stat = path.stat()
        except FileNotFoundError:  # a collection deleted meanwhile
            continue
        files.append([f"{path.parent.name}/{path.name}", stat.st_size, stat.st_mtime_ns])
    return json.dumps(files)


def remember_fingerprint(conn: sqlite3.Connection, value: str) -> None:
    conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (FINGERPRINT, value))


def remembered_fingerprint(conn: sqlite3.Connection) -> str:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (FINGERPRINT,)).fetchone()
    return str(row[0]) if row else "[]"


_HEADER = struct.Struct("<iQQQQQQiIQQQdQ")  # hnswlib's header.bin as Chroma 1.5 writes it (version 1)


def segment_damage(folder: Path) -> str | None:
    """What is torn in one HNSW segment directory, from its files' sizes and the header's counts (no pickle is
    read); None when they agree or the format is not one this check knows. A torn ``link_lists.bin`` loads
    without an error, and Chroma's next write grew one to 73 GB: it must never be loaded."""
    names = ("header.bin", "data_level0.bin", "length.bin", "link_lists.bin", "index_metadata.pickle")
    sizes = {name: (folder / name).stat().st_size if (folder / name).exists() else -1 for name in names}
    if sizes["index_metadata.pickle"] == -1 and sizes["header.bin"] == -1:
        return None  # never persisted: Chroma builds the segment from its log
    if sizes["header.bin"] != _HEADER.size or sizes["index_metadata.pickle"] == 0 or min(sizes.values()) < 0 and \
            sizes["index_metadata.pickle"] != -1:
        return (f"HNSW files of segment {folder.name} are missing or torn: "
                + ", ".join(f"{name} {size if size >= 0 else 'missing'}" for name, size in sizes.items()))
    fields = _HEADER.unpack((folder / "header.bin").read_bytes())
    if fields[0] != 1:
        return None
    allocated, count, per_element = fields[2], fields[3], fields[4]
    # Chroma writes the whole allocated buffer when it creates a segment, the elements in use when it persists
    if sizes["data_level0.bin"] not in (count * per_element, allocated * per_element) or \
            sizes["length.bin"] not in (4 * count, 4 * allocated):
        return (f"HNSW files of segment {folder.name} disagree with its header ({count} elements): data_level0.bin "
                f"{sizes['data_level0.bin']} bytes, length.bin {sizes['length.bin']} bytes")
    links = (folder / "link_lists.bin").read_bytes()
    position = read = 0
    while read < count and position + 4 <= len(links):  # one (uint32 size, size bytes) per element, to the end
        position += 4 + int.from_bytes(links[position : position + 4], "little")
        read += 1
    if read != count or position != len(links):
        return f"link_lists.bin of HNSW segment {folder.name} is torn ({len(links)} bytes, {count} elements)"
    return None


def live_segments(chroma_dir: Path, collection: str) -> list[Path]:
    """The HNSW segment directory of ``collection`` (read from Chroma's SQLite, read-only); every segment
    directory if that fails (another Chroma schema)."""
    try:
        conn = sqlite3.connect(f"file:{chroma_dir / 'chroma.sqlite3'}?mode=ro", uri=True, timeout=10)
        try:
            ids = [r[0] for r in conn.execute("SELECT s.id FROM segments s JOIN collections c ON s.collection = c.id "
                                              "WHERE c.name = ? AND s.scope = 'VECTOR'", (collection,))]
        finally:
            conn.close()
        return [chroma_dir / i for i in ids if (chroma_dir / i).is_dir()]
    except sqlite3.Error:
        return [path for path in chroma_dir.iterdir() if path.is_dir()]


def _sample(conn: sqlite3.Connection, size: int) -> list[tuple[str, bytes]]:
    """(physical id, vector copy) of the ``size`` latest records and ``size`` random ones."""
    rows = conn.execute("SELECT physical, vector FROM records WHERE vector IS NOT NULL ORDER BY rowid DESC LIMIT ?",
                        (size,)).fetchall()
    top = int(conn.execute("SELECT COALESCE(MAX(rowid), 0) FROM records").fetchone()[0])
    rng = random.Random()
    for _ in range(size if top else 0):
        row = conn.execute("SELECT physical, vector FROM records WHERE rowid >= ? AND vector IS NOT NULL "
                           "ORDER BY rowid LIMIT 1", (rng.randint(1, top),)).fetchone()
        if row is not None:
            rows.append(row)
    return list(dict(rows).items())


def probe(store: ChromaStore, conn: sqlite3.Connection, snap: Snap, size: int = 16) -> str | None:
    """None when Chroma serves the committed records soundly (a sample); otherwise what is wrong."""
    if not snap.collection or snap.dim is None:
        return None
    if store.chroma.embedded is not None:  # before Chroma loads anything torn
        for folder in live_segments(store.chroma_dir, snap.collection):
            torn = segment_damage(folder)
            if torn is not None:
                return torn
    sample = _sample(conn, size)
    try:
        if not sample:  # records written before kb kept a copy: only whether Chroma loads the index at all
            physical = [r[0] for r in conn.execute("SELECT physical FROM records LIMIT ?", (size,))]
            store.chroma.call(snap.collection, "get", ids=physical, include=["embeddings"])
            return None
        expected = {p: np.frombuffer(v, dtype=np.float32) for p, v in sample}
        page = store.chroma.call(snap.collection, "get", ids=list(expected), include=["embeddings"])
        got = dict(zip(page["ids"], page["embeddings"], strict=True))
        missing = [p for p in expected if p not in got]
        if missing:
            return f"Chroma lacks {len(missing)} of {len(expected)} sampled committed records"
        wrong = [p for p, v in expected.items() if not np.allclose(np.asarray(got[p], dtype=np.float32), v, atol=1e-4)]
        if wrong:
            return (f"Chroma returns other vectors than kb's copy for {len(wrong)} of {len(expected)} sampled records "
                    "(its HNSW files are damaged)")
        queries = list(expected)[:4]
        found = store.chroma.call(snap.collection, "query", query_embeddings=[expected[p].tolist() for p in queries],
                                  n_results=10, include=["distances"])["ids"]
        lost = [p for p, ids in zip(queries, found, strict=True) if p not in ids]
        if lost:
            return f"Chroma's vector search does not find {len(lost)} of {len(queries)} records by their own vector"
    except DamagedIndexError as exc:
        return str(exc)
    return None


def fill_copy(store: ChromaStore, conn: sqlite3.Connection, snap: Snap) -> int:
    """Copy text and vector from Chroma into kb's copy for records written before kb kept one; returns how many.
    Raises a StoreError when Chroma can no longer read them back (they cannot be rebuilt)."""
    physical = [r[0] for r in conn.execute("SELECT physical FROM records WHERE vector IS NULL")]
    try:
        for start in range(0, len(physical), BATCH):
            page = store.chroma.call(snap.collection, "get", ids=physical[start : start + BATCH],
                                     include=["documents", "embeddings"])
            conn.executemany("UPDATE records SET text = ?, vector = ? WHERE physical = ?", [
                (d or "", np.asarray(e, dtype=np.float32).tobytes(), p)
                for p, d, e in zip(page["ids"], page["documents"], page["embeddings"], strict=True)])
    except DamagedIndexError as exc:
        raise StoreError(f"knowledge bank {store.context.kb_id}: {len(physical)} records were written before kb "
                         "kept its own copy of each record, and Chroma can no longer read them back, so its index "
                         f"cannot be rebuilt; restore a snapshot or write the records again ({exc})") from exc
    return len(physical)


def rebuild_locked(store: ChromaStore, conn: sqlite3.Connection, snap: Snap) -> int:
    """Replace the live collection by a fresh one filled from kb's copy; the caller holds the writer lock and
    ``conn`` is outside a transaction. Returns how many records were written."""
    started = time.monotonic()
    if conn.execute("SELECT 1 FROM records WHERE vector IS NULL LIMIT 1").fetchone():
        fill_copy(store, conn, snap)
    generation = snap.generation + 1
    name = f"{store.collection_base}-g{generation}"
    set_meta(conn, "dirty", "1")  # killed from here on: the next writer deletes the pending collection
    store.chroma.delete_collection(name)  # a dead writer's, or an earlier rebuild's
    store.chroma.collection(name, create=True, configuration=store.configuration)
    total = last = 0
    while True:
        rows = conn.execute("SELECT rowid, id, physical, gen, metadata, text, vector FROM records WHERE rowid > ? "
                            "ORDER BY rowid LIMIT ?", (last, BATCH)).fetchall()
        if not rows:
            break
        last = rows[-1][0]
        metadatas = []
        for _, record_id, _, gen, metadata, _, _ in rows:
            encoded = encode(record_id, json.loads(metadata or "{}"))
            encoded.update({ID: record_id, GEN: gen, DEL: NEVER})
            metadatas.append(encoded)
        store.chroma.call(name, "add", ids=[r[2] for r in rows], metadatas=metadatas,
                          embeddings=np.stack([np.frombuffer(r[6], dtype=np.float32) for r in rows]),
                          documents=[r[5] or "" for r in rows])
        total += len(rows)
        if total % 20_000 < BATCH:
            log.info("knowledge bank %s: rebuilding its Chroma collection, %d records so far", store.context.kb_id,
                     total)
    conn.execute("BEGIN IMMEDIATE")
    try:
        drops = json.loads(meta_value(conn, "drops"))
        if snap.collection:
            drops.append([snap.collection, generation])  # deleted by a later commit, as after a clear
        set_meta(conn, "drops", json.dumps(drops))
        set_meta(conn, "collection", name)
        conn.execute("DELETE FROM retired")  # they are in the damaged collection, which goes as a whole
        flip_generation(conn, generation)
        set_meta(conn, "dirty", "0")
        if store.chroma.embedded is not None:
            remember_fingerprint(conn, fingerprint(store.chroma_dir))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    store.chroma.committed(snap.generation, generation)
    log.warning("knowledge bank %s: rebuilt its Chroma collection from kb's copy (%d records, generation %d, "
                "%.1f s); the damaged collection %s goes with the next commit", store.context.kb_id, total,
                generation, time.monotonic() - started, snap.collection)
    return total


def repair(store: ChromaStore, rebuild: bool, copy: bool, why: str) -> list[str]:
    """``kb repair`` under the writer lock: fill kb's copy for records written before it existed (``copy``), then
    rebuild the live collection from it (``rebuild``); returns what it did."""
    lock, conn = open_writer(store.dir, store._connections.path, 60.0, store.context.kb_id)
    done = []
    try:
        snap = read_snap(conn)
        store.chroma.reopen(snap.generation)
        if copy:
            conn.execute("BEGIN IMMEDIATE")
            done.append(f"copied {fill_copy(store, conn, snap)} records written before kb kept its own copy")
            conn.execute("COMMIT")
        if rebuild:
            written = rebuild_locked(store, conn, read_snap(conn))
            done.append(f"rebuilt the Chroma collection from kb's copy: {written} records ({why})")
    finally:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        conn.close()
        lock.close()
    return done

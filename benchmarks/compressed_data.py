"""The compressed-index benchmark's data and ingestion, in bounded memory at any count (issue 31; used by
``benchmarks.compressed_index``).

Vectors have the structure of real embeddings: each is one of SciFact's 5,183 MiniLM document vectors (read in
place from ../shared/datasets/scifact) plus Gaussian noise of norm ~0.6, normalised (cosine ~0.85 to its
centre; never uniform random). Batch ``i`` of seed ``s`` is generated from its own random stream (``(s, i)``), so
any batch can be made again without the ones before it: the ingestion and the ground truth each stream the
vectors a batch at a time and nothing holds all of them (10M x 384 float32 would be 15 GB).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from stores.base import Record, StoreContext
from stores.faiss.store import FaissStore

SCIFACT = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "scifact" / "corpus-all-MiniLM-L6-v2.npy"
BATCH = 20_000
NOISE = 0.6


def centres() -> np.ndarray:
    path = SCIFACT if SCIFACT.exists() else Path("/work/shared/datasets/scifact/corpus-all-MiniLM-L6-v2.npy")
    return np.asarray(np.load(path, mmap_mode="r"))


def batches(count: int, seed: int, real: np.ndarray | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, vectors) of ``count`` structured unit vectors, ``BATCH`` at a time."""
    real = centres() if real is None else real
    for number, start in enumerate(range(0, count, BATCH)):
        n = min(BATCH, count - start)
        rng = np.random.default_rng((seed, number))
        noisy = real[rng.integers(0, real.shape[0], size=n)] + rng.normal(
            scale=NOISE / np.sqrt(real.shape[1]), size=(n, real.shape[1])).astype(np.float32)
        yield start, (noisy / np.linalg.norm(noisy, axis=1, keepdims=True)).astype(np.float32)


def generate(count: int, seed: int) -> np.ndarray:
    """All of ``count`` vectors in one array (for the queries: a few hundred)."""
    return np.concatenate([v for _, v in batches(count, seed)]) if count else np.zeros((0, 384), np.float32)


class Progress:
    """A line every ``every`` seconds: how far, how fast, how long still to go (a 10M run takes an hour)."""

    def __init__(self, label: str, total: int, every: float = 30.0) -> None:
        self.label, self.total, self.every = label, total, every
        self.began = self.last = time.perf_counter()

    def __call__(self, done: int, extra: str = "") -> None:
        now = time.perf_counter()
        if now - self.last < self.every and done < self.total:
            return
        self.last = now
        rate = done / max(now - self.began, 1e-9)
        eta = (self.total - done) / rate if rate else float("inf")
        print(f"  {self.label}: {done:,}/{self.total:,} ({100 * done / self.total:.0f}%), {rate:,.0f}/s, "
              f"{now - self.began:.0f} s so far, ~{eta:.0f} s to go {extra}", flush=True)


def ground_truth(count: int, seed: int, queries: np.ndarray, k: int = 10) -> np.ndarray:
    """The exact top ``k`` rows of every query over the streamed vectors (a flat scan a batch at a time, best
    ``k`` kept), ties by row."""
    best_scores = np.full((queries.shape[0], k), -np.inf, dtype=np.float32)
    best_rows = np.full((queries.shape[0], k), -1, dtype=np.int64)
    progress = Progress("ground truth", count)
    for start, vectors in batches(count, seed):
        scores = queries @ vectors.T
        top = min(k, vectors.shape[0])
        part = np.argpartition(-scores, top - 1, axis=1)[:, :top]
        all_scores = np.concatenate([best_scores, np.take_along_axis(scores, part, axis=1)], axis=1)
        all_rows = np.concatenate([best_rows, part + start], axis=1)
        order = np.lexsort((all_rows, -all_scores), axis=1)[:, :k]
        best_scores = np.take_along_axis(all_scores, order, axis=1)
        best_rows = np.take_along_axis(all_rows, order, axis=1)
        progress(start + vectors.shape[0])
    return best_rows


def status_kb() -> dict[str, int]:
    """This process's VmRSS, VmHWM (peak), RssAnon and RssFile, in KiB."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            fields[key] = int(value.split()[0])
    return fields


class AnonPeak:
    """The highest anonymous resident memory seen, sampled every 0.2 s on a thread (VmHWM counts the
    memory-mapped vector file's cached pages too, which are the kernel's to drop)."""

    def __init__(self) -> None:
        self.peak = status_kb()["RssAnon"]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="anon-peak", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.peak = max(self.peak, status_kb()["RssAnon"])

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return max(self.peak, status_kb()["RssAnon"])


def store_for(folder: Path, settings: dict[str, Any], keyword: bool = False) -> FaissStore:
    return FaissStore(StoreContext("bench", folder, settings={"index": settings}, keyword_index=keyword))


def ingest(folder: Path, settings: dict[str, Any], count: int, seed: int, keyword: bool) -> dict[str, Any]:
    """Write ``count`` streamed vectors into a new knowledge bank in one commit (in this process: run it in a
    child of its own for a clean memory figure). Seconds taken, the commit's share, and the peak memory."""
    baseline = status_kb()
    peak = AnonPeak()
    store = store_for(folder, settings, keyword)
    progress = Progress(f"ingest {settings.get('type', 'FLAT')}", count)
    began = time.perf_counter()
    with store.begin(timeout=60) as tx:
        for start, part in batches(count, seed):
            tx.upsert([Record(f"c{start + i}", f"chunk {start + i}", {"part": (start + i) % 10}, v)
                       for i, v in enumerate(part)])
            progress(start + part.shape[0], f"anon {status_kb()['RssAnon'] / 2**20:.2f} GB")
        committing = time.perf_counter()
        print(f"  all {count:,} upserted in {committing - began:.0f} s; committing (training, encoding, fsync)",
              flush=True)
    seconds = time.perf_counter() - began
    store.merger.close()
    store.close()
    return {"ingest_s": round(seconds, 1), "commit_s": round(time.perf_counter() - committing, 1),
            "ingest_peak_anon_mb": round((peak.stop() - baseline["RssAnon"]) / 1024, 1),
            "ingest_peak_rss_mb": round((status_kb()["VmHWM"] - baseline["VmRSS"]) / 1024, 1)}


def done_marker(folder: Path) -> Path:
    return folder.with_name(folder.name + ".ingested.json")


def read_marker(folder: Path) -> dict[str, Any] | None:
    marker = done_marker(folder)
    return json.loads(marker.read_text()) if marker.exists() else None

